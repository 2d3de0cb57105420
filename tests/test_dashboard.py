"""The dashboard as a person uses it: the real ``backfill dashboard`` server, started with the
database URL alone, driven by headless Chromium (Debian's ``chromium`` and ``chromium-driver``)
over PostgreSQL with a live run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from sqlalchemy import text

from backfill import RunStatus
from backfill.store import Run
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import IN_CI, ROOT, Database
from tests.helpers import free_port, poison, wait_for

pytestmark = pytest.mark.parametrize("db", ["postgresql"], indirect=True)

CHROMIUM = os.environ.get("BACKFILL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BACKFILL_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver"
TOKEN = "correct horse battery staple"
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        message = f"headless Chromium is not installed ({', '.join(missing)} missing): {INSTALL}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Dashboard:
    url: str
    process: subprocess.Popen[bytes]

    def page(self, browser: WebDriver, path: str = "/") -> None:
        browser.get(self.url + path)

    def log_in(self, browser: WebDriver) -> None:
        self.page(browser, "/login")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "login-submit").click()
        wait_for(lambda: browser.find_elements(By.ID, "logout"))


def start_dashboard(db: Database, tmp_path: Path, *, token: str | None) -> Dashboard:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("BACKFILL_APP", "BACKFILL_DASHBOARD_TOKEN")}
    env["BACKFILL_DATABASE_URL"] = db.url  # the database URL alone: no definitions module
    if token is not None:
        env["BACKFILL_DASHBOARD_TOKEN"] = token
    log = (tmp_path / "dashboard.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "backfill", "dashboard", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=2).read()
            return Dashboard(url, process)
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "dashboard.log").read_text()) from None
            time.sleep(0.2)


@pytest.fixture
def dashboard(db: Database, tmp_path: Path) -> Iterator[Dashboard]:
    server = start_dashboard(db, tmp_path, token=TOKEN)
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=20)


@pytest.fixture
def live_run(db: Database) -> Iterator[Run]:
    """counter_slow over 3,000 rows: ten-row batches of 30 ms each, so it runs for a while."""
    counters.fill(db.engine, items, list(range(1, 3001)))
    app = db.app()
    runner = threading.Thread(target=lambda: app.run("counter_slow"), daemon=True)
    runner.start()
    run = wait_for(lambda: (r := app.store.latest_run("counter_slow")) and r.batches_done >= 2 and r)
    try:
        yield run  # type: ignore[misc]
    finally:
        latest = app.store.latest_run("counter_slow")
        if latest is not None and latest.status.is_active:
            db.app().cancel("counter_slow")
        runner.join(60)


def bar_value(browser: WebDriver) -> float:
    """Read in one script: the refresh may replace the bar between a find and a read."""
    value = browser.execute_script(
        "const bar = document.querySelector('tr.run [role=progressbar]');"
        "return bar ? bar.getAttribute('aria-valuenow') : null;"
    )
    return float(value or 0)


def test_the_progress_bar_moves_without_a_reload(browser: WebDriver, dashboard: Dashboard, live_run: Run) -> None:
    dashboard.page(browser)
    assert "counter_slow" in browser.find_element(By.ID, "runs").text
    before = bar_value(browser)
    browser.execute_script("window.__same_page = true")
    wait_for(lambda: bar_value(browser) > before + 1, timeout=30)
    assert browser.execute_script("return window.__same_page") is True  # refreshed in place
    if os.environ.get("BACKFILL_UPDATE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "runs.png"))
        dashboard.page(browser, "/runs/counter_slow")
        time.sleep(1)
        browser.save_screenshot(str(SCREENSHOTS / "run.png"))


def test_a_failed_batch_shows_its_bounds_and_error(browser: WebDriver, dashboard: Dashboard, db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 501)))
    poison(db, 260)
    assert db.app().run("poisoned").status is RunStatus.FAILED
    dashboard.page(browser, "/runs/poisoned")
    failed = browser.find_element(By.CSS_SELECTOR, "tr.failed-batch").text
    assert "row 260 is poisoned" in failed and "[251]" in failed and "[300]" in failed
    assert "backfill retry poisoned --split" in browser.find_element(By.CSS_SELECTOR, "pre.commands").text


def test_without_the_token_nothing_can_be_paused(
    browser: WebDriver, db: Database, tmp_path: Path, live_run: Run
) -> None:
    server = start_dashboard(db, tmp_path, token=None)
    try:
        server.page(browser, "/runs/counter_slow")
        assert browser.find_element(By.ID, "read-only").text == "read-only"
        assert not browser.find_elements(By.ID, "action-pause")
        status = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/runs/counter_slow/pause', {method: 'POST', body: new URLSearchParams({csrf: 'x'})})"
            ".then(r => done(r.status));"
        )
        assert status == 403
        request = urllib.request.Request(server.url + "/api/runs/counter_slow/pause", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    finally:
        server.process.terminate()
        server.process.wait(timeout=20)
    assert db.app().store.get_run(live_run.id).status is RunStatus.RUNNING


def test_with_the_token_pause_pauses_the_run(
    browser: WebDriver, dashboard: Dashboard, db: Database, live_run: Run
) -> None:
    dashboard.page(browser, "/runs/counter_slow")
    assert not browser.find_elements(By.ID, "action-pause")  # not logged in yet
    dashboard.log_in(browser)
    dashboard.page(browser, "/runs/counter_slow")
    browser.find_element(By.ID, "action-pause").click()
    wait_for(lambda: (notice := browser.find_elements(By.ID, "notice")) and "paused" in notice[0].text)
    assert db.app().store.get_run(live_run.id).status is RunStatus.PAUSED
    by = db.scalar(
        "SELECT worker FROM backfill_events WHERE run_id = :r AND after = 'paused' ORDER BY id DESC LIMIT 1",
        r=live_run.id,
    )
    assert by == "dashboard"
    cookie = browser.get_cookie("backfill_session")
    assert cookie is not None and cookie["httpOnly"] and cookie.get("sameSite") == "Strict"
    dashboard.page(browser, "/runs/counter_slow")  # who did it, beside who started the run
    actions = browser.find_element(By.CSS_SELECTOR, "table.actions").text
    assert "running -> paused dashboard" in actions


def test_a_runs_parameters_are_shown(browser: WebDriver, dashboard: Dashboard, db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 21)))
    db.app().start("counter_from", params={"low": "5"}, started_by="cli:alice@ci")
    dashboard.page(browser, "/runs/counter_from")
    assert browser.find_element(By.CSS_SELECTOR, "td.params").text == "low=5, step=1"
    assert browser.find_element(By.CSS_SELECTOR, "td.started-by").text == "cli:alice@ci"


def test_a_forged_post_without_the_csrf_token_is_rejected(
    browser: WebDriver, dashboard: Dashboard, db: Database, live_run: Run
) -> None:
    dashboard.log_in(browser)  # the browser holds a valid session cookie
    dashboard.page(browser, "/")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/runs/counter_slow/cancel', {method: 'POST', credentials: 'include'}).then(r => done(r.status));"
    )
    assert status == 403
    assert db.app().store.get_run(live_run.id).status is RunStatus.RUNNING


def test_the_api_with_a_bearer_token(dashboard: Dashboard, db: Database, live_run: Run) -> None:
    runs = json.loads(urllib.request.urlopen(dashboard.url + "/api/runs", timeout=10).read())
    assert [r["name"] for r in runs] == ["counter_slow"] and runs[0]["status"] == "running"
    one = json.loads(urllib.request.urlopen(dashboard.url + "/api/runs/counter_slow", timeout=10).read())
    assert one["id"] == live_run.id and "failed_batches" in one
    request = urllib.request.Request(
        dashboard.url + "/api/runs/counter_slow/tune",
        data=json.dumps({"parallelism": 3}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    assert "parallelism 3" in json.loads(urllib.request.urlopen(request, timeout=10).read())["done"]
    assert db.app().store.get_run(live_run.id).tuning.parallelism == 3


def test_a_hostile_run_name_is_rendered_inert(browser: WebDriver, dashboard: Dashboard, db: Database) -> None:
    hostile = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO backfill_runs (name, status, phase, table_name, key_columns, planned_all, next_seq, "
                "batch_size, parallelism, max_attempts, statement_timeout, lock_timeout, max_failed_ratio, "
                "min_batches_for_ratio, target_batch_seconds, min_batch_size, max_batch_size, max_rows_per_second, "
                "pause_seconds, nice_ratio, max_replica_lag, max_transaction_age, max_connections_used, final_pass, "
                "rows_total_estimated, rows_done, rows_affected, batches_done, batches_failed, created_at, updated_at, "
                "last_error) VALUES (:n, 'failed', 'main', 'items', '[\"id\"]', false, 0, 10, 1, 1, 1, 1, 0.2, 10, 0, "
                "1, 10, 0, 0, 0, 0, 0, 0, 'past_end', false, 0, 0, 0, 0, now(), now(), :e)"
            ),
            {"n": hostile, "e": hostile},
        )
    dashboard.page(browser)
    assert hostile in browser.find_element(By.ID, "runs").text  # shown as text
    time.sleep(2.5)  # a refresh of the rows in place, too
    assert browser.execute_script("return window.__pwned") is None
    assert hostile in browser.find_element(By.ID, "runs").text


def test_the_dashboard_says_what_is_wrong_and_stays_up(browser: WebDriver, dashboard: Dashboard, db: Database) -> None:
    """With the checkpoint tables dropped under it (a downgrade), a page says so and names the
    fix; once they are back, the same server shows the runs again."""
    db.app().store.drop_tables()
    dashboard.page(browser)
    assert browser.find_element(By.TAG_NAME, "h1").text == "The database cannot answer"
    assert "backfill init-db" in browser.find_element(By.CSS_SELECTOR, "p.notice").text
    with pytest.raises(urllib.error.HTTPError) as api:
        urllib.request.urlopen(dashboard.url + "/api/runs", timeout=10)
    assert api.value.code == 503 and "backfill init-db" in json.loads(api.value.read())["error"]
    assert db.cli("init-db").returncode == 0
    browser.refresh()
    assert browser.find_element(By.TAG_NAME, "h1").text != "The database cannot answer"
    assert dashboard.process.poll() is None


def test_a_throttle_and_the_impact_budgets_decisions_are_shown(
    browser: WebDriver, dashboard: Dashboard, db: Database
) -> None:
    counters.fill(db.engine, items, list(range(1, 21)))
    app = db.app()
    run = app.start("counter_int", impact_budget=0.1)
    app.throttle("counter_int", seconds=600, reason="month-end close", actor="cli:bob@ops")
    decision = "backing off: 3 session(s) waited on the run's locks: pace 60% -> 40%"
    assert app.store.steer(app.store.get_run(run.id), pace=0.4, note=decision, state={}) is not None
    dashboard.page(browser, "/runs/counter_int")
    assert browser.find_element(By.CSS_SELECTOR, "td.impact").text == f"10%: pace 40%; {decision}"
    assert "(month-end close)" in browser.find_element(By.CSS_SELECTOR, "td.throttle").text
    actions = browser.find_element(By.CSS_SELECTOR, "table.actions").text
    assert "throttled for 600s (month-end close) cli:bob@ops" in actions
