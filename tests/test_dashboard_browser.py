"""The dashboard in a real browser: headless Chromium (Debian's `chromium`
and `chromium-driver`, installed by scripts/bootstrap.sh) driven with
selenium clicks list -> filter -> workflow -> cancel -> resume, and checks
what each page shows, including a live update with no reload. One browser
session. Without Chromium the test fails: it never skips.

`DURABLE_DASHBOARD_SCREENSHOT=docs/dashboard-workflow.png` also saves the
workflow page there (how the committed screenshot is made).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import update

from durable import DurableClient, Settings, Status
from durable.dashboard import NO_AUTH, create_app
from durable.dashboard.auth import LOOPBACK_HOSTS
from durable.schema import steps, workflows
from durable.serialization import dumps_error
from tests.dashboard_harness import serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_SECONDS = 15


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} missing: scripts/test installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1500,1100", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except WebDriverException as exc:
        pytest.fail(f"cannot start headless Chromium: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


def _rows(client: DurableClient, now_ms: int) -> str:
    """An order workflow mid-run: a step done, a step that crashed once and
    was retried, a dispatched step running on another pool."""
    parent = client.enqueue("process_order", args=["order-1842", 129.5], kwargs={"express": True},
                            workflow_id="order-1842").workflow_id
    child = client.enqueue("durable.step:charge_card", args=[129.5], workflow_id=f"{parent}-2").workflow_id
    client.enqueue("send_receipt", workflow_id="receipt-77")
    failed = client.enqueue("process_order", args=["order-1841"], workflow_id="order-1841").workflow_id
    crash = json.dumps({"step": "reserve_stock", "attempt": 1, "cause": "Worker exited prematurely: signal 9 (SIGKILL)"})
    attempt_error = [{"type": "TimeoutError", "message": "inventory service timed out", "attempt": 1, "at_ms": now_ms}]
    with client.store.db.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.workflow_id == parent).values(
            status="PENDING", started_at_ms=now_ms - 4200, recovery_attempts=1, executor="worker-a@host1",
            last_death="Worker exited prematurely: signal 9 (SIGKILL)"))
        conn.execute(update(workflows).where(workflows.c.workflow_id == child).values(
            parent_workflow_id=parent, status="PENDING", started_at_ms=now_ms - 900))
        conn.execute(update(workflows).where(workflows.c.workflow_id == failed).values(
            status="ERROR", completed_at_ms=now_ms, error=dumps_error(ValueError("card declined"))))
        for row in (
            dict(step_id=0, name="validate_order", started_at_ms=now_ms - 4100, completed_at_ms=now_ms - 3900,
                 output='{"ok": true}', attempts=1, crashes=0),
            dict(step_id=1, name="reserve_stock", started_at_ms=now_ms - 3800, completed_at_ms=now_ms - 1000,
                 output='{"reserved": 3}', attempts=2, crashes=1, last_crash=crash,
                 attempt_errors=json.dumps(attempt_error)),
            dict(step_id=2, name="charge_card", started_at_ms=now_ms - 950, completed_at_ms=None,
                 status="RETRYING", output=None, attempts=0, crashes=0, child_workflow_id=child),
        ):
            conn.execute(steps.insert().values(workflow_id=parent, **{"status": "SUCCESS", **row}))
    return parent


def test_list_workflow_cancel_in_a_browser(browser: WebDriver, tmp_path: Path) -> None:
    client = DurableClient(settings=Settings(home=str(tmp_path / "home"), database_url=f"sqlite:///{tmp_path / 'x.sqlite3'}"))
    now_ms = int(time.time() * 1000)
    parent = _rows(client, now_ms)
    # An action's POST loads a new page (and a live update swaps a part of
    # one): an element found just before that is stale when read. Look again.
    wait = WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=[StaleElementReferenceException])
    app = create_app(client, prefix="/ops", auth=NO_AUTH, allowed_hosts=LOOPBACK_HOSTS, poll_seconds=0.3)
    with serving(app) as url:
        # the list: counts per status, every workflow; then filter by text in the ID
        browser.get(url + "/ops/")
        counts = {e.get_attribute("data-status"): e.text for e in browser.find_elements(By.CSS_SELECTOR, "b.count")}
        assert counts["PENDING"] == "2" and counts["ENQUEUED"] == "1" and counts["ERROR"] == "1"
        listed = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.wf")]
        assert set(listed) == {parent, f"{parent}-2", "receipt-77", "order-1841"}
        assert "ValueError: card declined" in browser.find_element(By.CSS_SELECTOR, "table.workflows").text
        box = browser.find_element(By.NAME, "q")
        box.send_keys("order-18")
        box.submit()
        wait.until(lambda d: "q=order-18" in d.current_url)
        listed = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.wf")]
        assert set(listed) == {parent, f"{parent}-2", "order-1841"}

        # the workflow: inputs, recoveries, the timeline with its crash, retry and dispatched step
        browser.find_element(By.LINK_TEXT, parent).click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "h1.wid").text == parent)
        assert browser.find_element(By.ID, "status").text == "PENDING"
        assert '"order-1842"' in browser.find_element(By.CSS_SELECTOR, "pre.inputs").text
        assert browser.find_element(By.ID, "recoveries").text.startswith("1 (quarantined past")
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.step")
        assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["validate_order", "reserve_stock", "charge_card"]
        reserve = rows[1].text
        assert "(1 retry)" in reserve and "2.800s" in reserve and "signal 9 (SIGKILL)" in reserve
        assert "dispatched step" in rows[2].text and "PENDING" in rows[2].text
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.bar rect.SUCCESS")) == 2
        if os.environ.get("DURABLE_DASHBOARD_SCREENSHOT"):
            browser.save_screenshot(os.environ["DURABLE_DASHBOARD_SCREENSHOT"])
        assert browser.get_screenshot_as_png().startswith(b"\x89PNG")

        # live: a checkpoint written elsewhere shows up without a reload
        browser.execute_script("window.durableMarker = 'same page';")
        with client.store.db.begin() as conn:
            conn.execute(steps.insert().values(
                workflow_id=parent, step_id=3, name="ship_parcel", status="SUCCESS", output='"DHL-1"',
                attempts=1, crashes=0, started_at_ms=now_ms, completed_at_ms=now_ms + 300))
        wait.until(lambda d: "ship_parcel" in d.find_element(By.CSS_SELECTOR, "table.timeline").text)
        assert browser.execute_script("return window.durableMarker") == "same page"

        # cancel: confirmed, posted with its CSRF token; the page shows the outcome
        browser.find_element(By.ID, "cancel").click()
        wait.until(lambda d: _alert_text(d) is not None)
        assert parent in browser.switch_to.alert.text
        browser.switch_to.alert.accept()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "CANCELLED")
        assert browser.find_element(By.ID, "notice").text == f"cancelled {parent}, {parent}-2"
        assert client.get(parent).status is Status.CANCELLED and client.get(f"{parent}-2").status is Status.CANCELLED
        assert not browser.find_elements(By.ID, "cancel")

        # and back: resume (no confirmation asked)
        browser.find_element(By.ID, "resume").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "ENQUEUED")
        assert browser.find_element(By.ID, "notice").text == f"resumed {parent}"
    client.store.db.dispose()


def _alert_text(driver: WebDriver) -> str | None:
    try:
        return driver.switch_to.alert.text
    except WebDriverException:
        return None
