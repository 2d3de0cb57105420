"""`backfill run` through a database outage: a private server stopped in the middle of a run.

Up to ``BACKFILL_OUTAGE_SECONDS`` the run waits for the database, says so, and then finishes with
every row done once; past it, it ends with one line (what failed, that nothing was lost, the
command that continues) and exit 1, and that command finishes the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import text

from backfill import App, Registry
from backfill.database import make_engine
from tests.apps import counters
from tests.conftest import ROOT
from tests.helpers import one_error_line, wait_for
from tests.servers import Outage, mariadb_to_take_down, postgres_to_take_down

SERVERS: dict[str, Callable[[], AbstractContextManager[Outage]]] = {
    "postgresql": postgres_to_take_down,
    "mariadb": mariadb_to_take_down,
}
ROWS = 1500


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[Outage]:
    with SERVERS[request.param]() as outage:
        engine = make_engine(outage.server.url)
        counters.create_tables(engine)
        counters.fill(engine, counters.items, list(range(1, ROWS + 1)))
        App(engine, Registry.from_module(counters)).init_db()
        engine.dispose()
        yield outage


def run_in_background(url: str, outage_seconds: int, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "BACKFILL_DATABASE_URL": url, "BACKFILL_APP": "tests.apps.counters"}
    env["BACKFILL_OUTAGE_SECONDS"] = str(outage_seconds)
    return subprocess.Popen(
        [sys.executable, "-m", "backfill", *(args or ("run", "counter_slow", "--no-progress"))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def batches_done(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT coalesce(max(batches_done), 0) FROM backfill_runs")).scalar())
    finally:
        engine.dispose()


def counters_of(url: str) -> dict[int, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return {
                int(c): int(n)
                for c, n in connection.execute(text("SELECT counter, count(*) FROM items GROUP BY counter"))
            }
    finally:
        engine.dispose()


def test_run_waits_out_an_outage_and_gives_up_past_the_limit(server: Outage) -> None:
    url = server.server.url

    # Longer than the limit: one line, exit 1, nothing lost.
    runner = run_in_background(url, outage_seconds=3)
    wait_for(lambda: batches_done(url) >= 10, what="ten batches")
    server.down()
    try:
        out, err = runner.communicate(timeout=120)
    finally:
        server.up()
    assert runner.returncode == 1, err
    line = one_error_line(subprocess.CompletedProcess(runner.args, 1, out, err.split("\n", 1)[1]))
    assert "the database did not answer" in line and "nothing was lost" in line, line
    assert "`backfill run counter_slow` continues" in line, line
    assert "waiting for the database" in err.splitlines()[0], err
    assert set(counters_of(url)) <= {0, 1}

    # Ten seconds, within the limit: the same command waits it out and finishes the run, and a
    # deploy script's `backfill wait` waits it out too, then reports the run finished.
    runner = run_in_background(url, outage_seconds=60)
    before = batches_done(url)
    wait_for(lambda: batches_done(url) >= before + 10, what="ten more batches")
    waiter = run_in_background(url, 60, "wait", "counter_slow", "--timeout", "240")
    time.sleep(1)
    server.down()
    time.sleep(10)
    server.up()
    out, err = runner.communicate(timeout=240)
    assert runner.returncode == 0, err
    assert "counter_slow: waiting for the database" in err and "finished" in out, (out, err)
    assert counters_of(url) == {1: ROWS}
    said, complaint = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, complaint
    assert "waiting for the database" in complaint and "finished" in said, (said, complaint)
