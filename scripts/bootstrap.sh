# Sourced by scripts/demo and scripts/test: a virtualenv with durable
# installed, and (for tests) Postgres, Redis, RabbitMQ, libfaketime and Chromium from Debian packages.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_venv() {
    local stamp="$VENV/.installed"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
        echo "Installing durable and its dependencies into .venv ..." >&2
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$REPO[test]" >&2
        touch "$stamp"
    fi
}

ensure_servers() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
    # the RabbitMQ tests (tests/test_rabbitmq.py, tests/test_chaos_rabbitmq.py)
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
    # a worker whose clock runs ahead (tests/test_leases.py)
    compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(libfaketime)
    # the dashboard's browser test (tests/test_dashboard_browser.py): headless Chromium and its driver
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "Installing ${missing[*]} from Debian packages ..." >&2
        as_root apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
        # the packages start system-wide servers on the default ports; the
        # tests start their own on free loopback ports, so stop those
        as_root service redis-server stop >/dev/null 2>&1 || true
        as_root service postgresql stop >/dev/null 2>&1 || true
        as_root service rabbitmq-server stop >/dev/null 2>&1 || true
    fi
}

# Both of the above, at once: on a fresh machine the Debian packages and the
# Python packages download and install side by side. Each runs in its own
# subshell under `set -e`; both are waited for, and a failure of either fails.
ensure_venv_and_servers() {
    local servers venv status=0
    ensure_servers &
    servers=$!
    ensure_venv &
    venv=$!
    wait "$venv" || status=$?
    wait "$servers" || status=$?
    return "$status"
}
