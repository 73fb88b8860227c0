// Live updates: poll the page's JSON (data-poll) every data-every seconds;
// when its version differs from the one the page was rendered with, fetch
// the page again and swap its live part in place (no reload, forms kept).
// Actions ask for confirmation where a form has data-confirm.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });
  var live = document.getElementById("live");
  if (!live || !live.dataset.poll) return;
  var every = Math.max(0.2, Number(live.dataset.every || 3)) * 1000;

  function refresh() {
    return fetch(window.location.href, {credentials: "same-origin", cache: "no-store"})
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!fresh) return;
        live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes));
        live.dataset.version = fresh.dataset.version;
        document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
      });
  }

  function tick() {
    fetch(live.dataset.poll, {credentials: "same-origin", cache: "no-store", headers: {Accept: "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) {
        if (body && body.version && body.version !== live.dataset.version) return refresh();
      })
      .catch(function () { /* the server is away: try again at the next tick */ })
      .then(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
})();
