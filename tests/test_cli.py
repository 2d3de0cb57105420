"""The ``backfill`` command driven in a subprocess, as a user drives it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from backfill import BatchStatus, RunStatus
from backfill.tables import runs
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import ROOT, Database
from tests.helpers import metrics_page, one_error_line, poison, wait_for
from tests.test_engine import counter_histogram


def no_runs(db: Database) -> bool:
    with db.engine.connect() as connection:
        return connection.execute(select(runs.c.id)).first() is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["start", "no_such_backfill"], "unknown backfill 'no_such_backfill'"),
        (["start", "missing_table"], "table 'no_such_table' does not exist"),
        (["start", "missing_column"], "column 'no_such_column' does not exist in table 'items'"),
        (["start", "non_unique_key"], "key (counter) of table 'items' is not unique"),
        (["start", "bad_pending"], "the pending predicate fails on table 'items'"),
        (["run", "missing_table"], "table 'no_such_table' does not exist"),
        (["pause", "counter_int"], "has no active run"),
        (["retry", "counter_int"], "has never run"),
        (["start", "counter_int", "--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range"),
        (["start", "counter_int", "--pause-seconds", "nan"], "pause_seconds must be a number from 0 to 86,400"),
        (["start", "counter_int", "--batch-size", "3000000000"], "batch_size must be a whole number from 1 to"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_user_mistakes_are_one_line_and_change_nothing(db: Database, args: list[str], expected: str) -> None:
    result = db.cli(*args)
    assert result.returncode == 2
    assert expected in one_error_line(result)
    assert no_runs(db)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # settings are read before the database is written
@pytest.mark.parametrize(
    ("variable", "value", "expected", "commands"),
    [
        (
            "BACKFILL_REPLICA_URLS",
            "not a url",
            "BACKFILL_REPLICA_URLS: the database URL cannot be parsed",
            ("run", "start"),
        ),
        ("BACKFILL_OUTAGE_SECONDS", "soon", "BACKFILL_OUTAGE_SECONDS must be a whole number of seconds", ("run",)),
    ],
)
def test_a_bad_setting_is_said_before_a_run_is_recorded(
    db: Database, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str, commands: tuple[str, ...]
) -> None:
    """A setting the run only needs later (a replica to ask, how long to wait out an outage) is
    checked before the run is recorded: one line, exit 2, and no run left behind."""
    monkeypatch.setenv(variable, value)
    for command in commands:
        result = db.cli(command, "counter_int")
        assert result.returncode == 2, result.stderr
        assert expected in one_error_line(result)
        assert no_runs(db)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # bound the same way everywhere (test_run_features)
def test_run_parameters_on_the_command_line(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 101)))
    for args, expected in [
        ([], "backfill 'counter_from' needs parameter low: int: give it with --param low=VALUE"),
        (["--param", "low"], "--param 'low' is not NAME=VALUE: write it as --param tenant_id=42"),
        (["--param", "low=1", "--param", "low=2"], "--param low is given twice"),
        (["--param", "low=1e400"], "parameter 'low' must be integer (for example low=42), got '1e400'"),
        (["--param", "low=1", "--param", "tenant=7"], "backfill 'counter_from' has no parameter tenant"),
    ]:
        result = db.cli("start", "counter_from", *args)
        assert result.returncode == 2 and expected in one_error_line(result)
    assert no_runs(db)
    listed = [line for line in db.cli("list").stdout.splitlines() if line.split()[:1] == ["counter_from"]]
    assert len(listed) == 1 and "low: int, step: int = 1" in listed[0]

    started = db.cli("start", "counter_from", "--param", "low=41", "--param", "step=2")
    assert started.returncode == 0 and "with low=41, step=2" in started.stdout
    status = db.cli("status")
    assert "counter_from (low=41, step=2)" in status.stdout
    assert json.loads(db.cli("status", "counter_from", "--json").stdout)["params"] == {"low": 41, "step": 2}
    assert "parameters: low=41, step=2" in db.cli("status", "counter_from").stdout
    assert db.cli("run", "counter_from", "--no-progress").returncode == 0
    assert counter_histogram(db, items) == {0: 40, 2: 60}


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # settings are read before any database
def test_bad_settings_are_one_line(db: Database) -> None:
    unknown_app = db.cli("list", app="no_such_module")
    assert unknown_app.returncode == 2
    assert "cannot import definitions module 'no_such_module'" in one_error_line(unknown_app)

    env = {**os.environ, "BACKFILL_APP": "tests.apps.counters"}
    env.pop("BACKFILL_DATABASE_URL", None)
    for url, expected, code in [
        ("not a url", "the database URL cannot be parsed", 2),
        ("nosuchdb://host/x", "no SQLAlchemy dialect or driver for 'nosuchdb'", 2),
        (
            "postgresql://someone:s3cret-pw@127.0.0.1:1/app",
            "cannot connect to postgresql+psycopg://someone:***@127.0.0.1:1/app",
            1,
        ),
        # Options of the URL's query the driver cannot use: named, before any server is reached.
        ("mysql://someone:s3cret-pw@127.0.0.1:1/app?charset=bogus", "cannot use the URL's options (charset)", 2),
        ("mysql://someone:s3cret-pw@127.0.0.1:1/app?connect_timeout=abc", "options (connect_timeout)", 2),
        ("mysql://someone:s3cret-pw@127.0.0.1:1/app?no_such_option=1", "options (no_such_option)", 2),
        ("mysql://someone:s3cret-pw@127.0.0.1:1/app?ssl_ca=/no/such/ca.pem", "options (ssl_ca)", 2),
        ("postgresql://someone:s3cret-pw@127.0.0.1:1/app?sslmode=bogus", "options (sslmode)", 2),
        ("postgresql://someone:s3cret-pw@127.0.0.1:1/app?connect_timeout=abc", "options (connect_timeout)", 2),
        ("sqlite:///app.db?mode=ro", "'mode' are not accepted by the pysqlite driver", 2),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "backfill", "--database-url", url, "status"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == code, result.stderr
        assert expected in one_error_line(result)
        assert "s3cret-pw" not in result.stderr + result.stdout


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_server_that_never_answers_is_given_up_on(scheme: str) -> None:
    """A server (or a proxy in front of it) that takes the connection and says nothing must not
    hold a deploy script's ``status`` for ever: the command gives up after the connect timeout."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def take_and_say_nothing() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                accepted.append(silent.accept()[0])

    threading.Thread(target=take_and_say_nothing, daemon=True).start()
    url = f"{scheme}://someone:s3cret-pw@127.0.0.1:{silent.getsockname()[1]}/app"
    env = {**os.environ, "BACKFILL_APP": "tests.apps.counters", "BACKFILL_CONNECT_TIMEOUT": "2"}
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "backfill", "--database-url", url, "status"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        waited = time.monotonic() - started
    finally:
        silent.close()
    assert accepted, "the command never reached the server"
    assert result.returncode == 1
    assert "cannot connect to" in one_error_line(result)
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert waited < 30  # well short of for ever; the exact figure is the machine's


def test_an_operator_command_behind_a_lock_gives_up(db: Database) -> None:
    """Behind a transaction holding the run (a migration that queued it, a stuck session),
    ``pause`` says the database timed out after BACKFILL_COMMAND_TIMEOUT instead of hanging,
    and changes nothing."""
    assert db.cli("start", "counter_int").returncode == 0
    with db.engine.connect() as holder:
        holder.begin()
        holder.execute(runs.update().values(batch_size=runs.c.batch_size))  # the run rows' locks
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "backfill", "pause", "counter_int"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "BACKFILL_DATABASE_URL": db.url, "BACKFILL_COMMAND_TIMEOUT": "2"},
        )  # fmt: skip
        waited = time.monotonic() - started
        holder.rollback()
    assert result.returncode == 1, result.stderr
    assert "the database timed out" in one_error_line(result)
    assert waited < 30
    with db.engine.connect() as connection:
        assert connection.execute(select(runs.c.status)).scalar_one() == RunStatus.RUNNING.value


def test_missing_checkpoint_tables_name_the_fix(db: Database) -> None:
    db.app().store.drop_tables()
    result = db.cli("start", "counter_int")
    assert result.returncode == 2
    assert "backfill init-db" in one_error_line(result)
    assert db.cli("init-db").returncode == 0
    assert db.cli("start", "counter_int").returncode == 0


def test_start_status_json_and_a_second_start(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 251)))
    started = db.cli("start", "counter_int", "--batch-size", "100")
    assert started.returncode == 0, started.stderr
    assert "250 rows" in started.stdout

    second = db.cli("start", "counter_int")
    assert second.returncode == 2
    assert "already has an active run" in one_error_line(second)

    status = json.loads(db.cli("status", "--json").stdout)
    assert len(status) == 1
    entry = status[0]
    for field in ("name", "status", "rows_done", "rows_total", "rows_total_is_estimate", "batches_done",
                  "batches_failed", "batches_pending", "rate", "eta_seconds", "last_error"):  # fmt: skip
        assert field in entry
    assert (entry["name"], entry["status"], entry["rows_done"], entry["rows_total"]) == (
        "counter_int",
        "running",
        0,
        250,
    )
    assert entry["batch_size"] == 100
    assert entry["started_by"].startswith("cli:") and "@" in entry["started_by"]  # who, from where

    ran = db.cli("run", "counter_int", "--no-progress")
    assert ran.returncode == 0, ran.stderr
    assert "finished: 250 rows in 3 batches" in ran.stdout
    entry = json.loads(db.cli("status", "counter_int", "--json").stdout)
    assert (entry["status"], entry["rows_done"], entry["batches_done"], entry["batches_pending"]) == (
        "finished",
        250,
        3,
        0,
    )
    assert entry["percent"] == 100.0 and entry["rate"] > 0
    assert counter_histogram(db, items) == {1: 250}

    human = db.cli("status")
    assert human.returncode == 0 and "counter_int" in human.stdout and "finished" in human.stdout
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run(
        [sys.executable, "-m", "backfill", "--database-url", db.url, "status"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    (row,) = [line for line in piped.stdout.splitlines() if "counter_int" in line]  # a deploy log's whole row
    assert "finished" in row and "250" in row and "…" not in piped.stdout, piped.stdout


def test_a_total_raised_past_its_estimate_says_so(db: Database) -> None:
    """An estimate that undershoots (a planner's guess) is shown as the rows done, and flagged."""
    counters.fill(db.engine, items, list(range(1, 301)))
    assert db.cli("start", "counter_int", "--batch-size", "100").returncode == 0
    entry = json.loads(db.cli("status", "counter_int", "--json").stdout)
    assert (entry["rows_total"], entry["rows_total_raised"]) == (300, False)
    with db.engine.begin() as conn:
        conn.execute(runs.update().values(rows_total=120, rows_total_estimated=True, rows_done=200))
    entry = json.loads(db.cli("status", "counter_int", "--json").stdout)
    assert (entry["rows_total"], entry["rows_total_is_estimate"], entry["rows_total_raised"]) == (200, True, True)


def test_pause_resume_cancel(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 101)))
    assert db.cli("start", "counter_int").returncode == 0
    paused = db.cli("pause", "counter_int")
    assert paused.returncode == 0 and "is paused" in paused.stdout
    refused = db.cli("run", "counter_int", "--no-progress")
    assert refused.returncode == 2 and "backfill resume counter_int" in one_error_line(refused)
    assert counter_histogram(db, items) == {0: 100}

    assert "is running" in db.cli("resume", "counter_int").stdout
    assert db.cli("run", "counter_int", "--no-progress", "--batch-size", "40", "--by", "deploy 7").returncode == 0
    assert counter_histogram(db, items) == {1: 100}
    actions = json.loads(db.cli("status", "counter_int", "--json").stdout)["actions"]
    assert [a["action"] for a in reversed(actions)] == [
        "new -> pending",
        "running -> paused",
        "paused -> running",
        "tuned: batch_size=40",
    ]
    who = [a["by"] for a in reversed(actions)]
    assert who[:3] == [who[0]] * 3 and who[0].startswith("cli:") and who[3] == "deploy 7"

    assert db.cli("start", "counter_int").returncode == 0  # a finished run frees the name
    cancelled = db.cli("cancel", "counter_int")
    assert cancelled.returncode == 0 and "is cancelled" in cancelled.stdout
    assert db.cli("resume", "counter_int").returncode == 2
    assert counter_histogram(db, items) == {1: 100}


def test_failure_exit_code_and_retry_through_the_cli(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 201)))
    with db.engine.begin() as connection:
        connection.execute(counters.poison.insert(), [{"id": 77}])
    failed = db.cli("run", "poisoned", "--no-progress")
    assert failed.returncode == 1
    line = one_error_line(failed)
    assert "row 77 is poisoned" in line and "backfill retry poisoned" in line
    entry = json.loads(db.cli("status", "poisoned", "--json").stdout)
    assert entry["status"] == "failed" and entry["batches_failed"] == 1
    assert "row 77 is poisoned" in entry["last_error"]

    with db.engine.begin() as connection:
        connection.execute(counters.poison.delete())
    retried = db.cli("retry", "poisoned")
    assert retried.returncode == 0 and "1 failed batch(es) re-queued" in retried.stdout
    assert db.cli("run", "poisoned", "--no-progress").returncode == 0
    assert counter_histogram(db, items) == {1: 200}


def test_resume_after_the_runner_is_killed(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 1001)))
    env = {**os.environ, "BACKFILL_DATABASE_URL": db.url, "BACKFILL_APP": "tests.apps.counters"}
    env["BACKFILL_HEARTBEAT_SECONDS"] = "0.5"
    runner = subprocess.Popen(
        [sys.executable, "-m", "backfill", "run", "counter_slow", "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    fifteen = "SELECT coalesce(max(batches_done), 0) >= 15 FROM backfill_runs"
    wait_for(lambda: db.scalar(fifteen), timeout=60, what="fifteen batches")
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    assert runner.returncode == -signal.SIGKILL
    histogram = counter_histogram(db, items)
    assert 0 < histogram.get(1, 0) < 1000 and set(histogram) <= {0, 1}, histogram
    # Nobody runs it now, and status says so, with the command that continues it (the killed
    # runner's lease ends after three missed heartbeats of half a second).
    entry = wait_for(
        lambda: (e := json.loads(db.cli("status", "counter_slow", "--json").stdout))["stalled"] and e,
        what="status to call the run stalled",
        every=0.5,
    )
    assert "stopped answering" in entry["stalled"] and "backfill run counter_slow" in entry["stalled"]
    assert entry["status"] == "running" and entry["eta_seconds"] is None
    assert "stalled: a runner stopped answering" in db.cli("status", "counter_slow").stdout

    resumed = db.cli("run", "counter_slow", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert counter_histogram(db, items) == {1: 1000}
    run = db.app().store.latest_run("counter_slow")
    assert run is not None and run.status is RunStatus.FINISHED
    assert (run.rows_done, run.batches_done, run.batches_failed) == (1000, 100, 0)
    assert all(b.status is BatchStatus.SUCCEEDED for b in db.app().store.batches_of(run.id))


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_a_batch_waits_no_longer_than_its_lock_timeout_and_retries(db: Database) -> None:
    """An application transaction holds a row lock mid-run (row locks: PostgreSQL, InnoDB)."""
    counters.fill(db.engine, items, list(range(1, 301)))
    held = threading.Event()

    def application_transaction() -> None:
        with db.engine.connect() as connection, connection.begin():
            connection.execute(text("SELECT id FROM items WHERE id = 120 FOR UPDATE"))
            held.set()
            time.sleep(1.5)

    holder = threading.Thread(target=application_transaction)
    holder.start()
    held.wait(10)
    run = db.app().run("counter_int", lock_timeout=0.2, max_attempts=30)
    holder.join()
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 300}
    blocked = next(b for b in db.app().store.batches_of(run.id) if b.first_key == [101])
    assert blocked.attempts > 1


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the same code on every database: one is enough
def test_an_operator_with_the_database_url_alone(db: Database) -> None:
    """Everything that reads or changes only the checkpoint tables works without the definitions."""
    counters.fill(db.engine, items, list(range(1, 501)))
    poison(db, 260)
    db.app().start("poisoned")
    alone = functools.partial(db.cli, app=None)
    listed = json.loads(alone("status", "--json").stdout)
    assert [r["name"] for r in listed] == ["poisoned"]
    assert alone("status", "poisoned").returncode == 0
    assert alone("tune", "poisoned", "--batch-size", "25").returncode == 0
    assert alone("pause", "poisoned").returncode == 0
    assert alone("resume", "poisoned").returncode == 0
    assert db.app().run("poisoned").status is RunStatus.FAILED
    poison(db)
    split = alone("retry", "poisoned", "--split")
    assert split.returncode == 0 and "in halves" in split.stdout, split.stderr
    assert db.app().run("poisoned").status is RunStatus.FINISHED
    assert alone("wait", "poisoned", "--timeout", "5").returncode == 0
    assert counter_histogram(db, items) == {1: 500}
    by = db.scalar("SELECT worker FROM backfill_events WHERE after = 'paused' ORDER BY id DESC LIMIT 1")
    assert str(by).startswith("cli:")
    for command in (["start", "poisoned"], ["run", "poisoned"], ["estimate", "poisoned"], ["list"]):
        refused = alone(*command)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "needs the backfills' definitions" in refused.stderr and "BACKFILL_APP" in refused.stderr
    assert alone("cancel", "no_such_backfill").returncode == 2


def test_a_definitions_module_that_fails_to_import_is_one_line(db: Database, tmp_path: Path) -> None:
    (tmp_path / "broken_defs.py").write_text("import os\n\nVALUE = undefined_name + 1\n")
    env = {**os.environ, "BACKFILL_DATABASE_URL": db.url, "BACKFILL_APP": "broken_defs", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "backfill", "status"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "broken_defs" in result.stderr and "NameError" in result.stderr and "broken_defs.py:3" in result.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "backfill", "status"],
        cwd=tmp_path, env={**env, "BACKFILL_LOG_LEVEL": "DEBUG"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Traceback" in debug.stderr


def test_every_command_on_every_database(db: Database) -> None:
    """The whole command set, as an operator strings it together, on SQLite, PostgreSQL and
    MariaDB: estimate, start, pause, resume, tune, run (a batch fails), retry, run, wait,
    metrics, then a new run cancelled. Every row is processed exactly once."""

    counters.fill(db.engine, items, list(range(1, 301)))
    poison(db, 120)

    def status() -> dict[str, Any]:
        return dict(json.loads(db.cli("status", "poisoned", "--json").stdout))

    estimate = db.cli("estimate", "poisoned", "--samples", "2", "--json")
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["rows"] == 300
    assert counter_histogram(db, items) == {0: 300}  # an estimate changes nothing

    assert db.cli("start", "poisoned").returncode == 0
    assert db.cli("pause", "poisoned").returncode == 0 and status()["status"] == "paused"
    assert db.cli("resume", "poisoned").returncode == 0
    tuned = db.cli("tune", "poisoned", "--batch-size", "25")
    assert tuned.returncode == 0, tuned.stderr
    assert status()["batch_size"] == 25

    assert db.cli("run", "poisoned", "--no-progress").returncode == 1
    failed = status()
    assert failed["status"] == "failed" and failed["batches_failed"] == 1
    poison(db)
    assert db.cli("retry", "poisoned").returncode == 0
    finished = db.cli("run", "poisoned", "--no-progress")
    assert finished.returncode == 0, finished.stderr
    assert db.cli("wait", "poisoned", "--timeout", "10").returncode == 0
    assert counter_histogram(db, items) == {1: 300}

    body = metrics_page(db)
    assert 'backfill_run_status{backfill="poisoned",run="1",status="finished"} 1.0' in body

    assert db.cli("start", "poisoned").returncode == 0
    assert db.cli("cancel", "poisoned").returncode == 0 and status()["status"] == "cancelled"
    assert db.cli("wait", "poisoned", "--timeout", "10").returncode == 1
    assert counter_histogram(db, items) == {1: 300}
