"""Operating a backfill from a terminal and from a deploy script: the real CLI in a subprocess,
against PostgreSQL, as an operator would drive it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from backfill import BatchStatus, RunStatus
from backfill.tables import events
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import ROOT, Database
from tests.helpers import background, metrics_page, one_error_line, poison, wait_for
from tests.test_engine import counter_histogram

pytestmark = pytest.mark.parametrize("db", ["postgresql"], indirect=True)


def batches_done(db: Database) -> int:
    return int(db.scalar("SELECT coalesce(max(batches_done), 0) FROM backfill_runs") or 0)  # type: ignore[call-overload]


def test_status_shows_progress_failures_and_recent_batches(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 501)))
    poison(db, 260)
    assert db.cli("run", "poisoned", "--no-progress").returncode == 1

    table = db.cli("status")
    assert table.returncode == 0
    for text in ("poisoned", "failed", "█", "450 / 500", "9 / 1 / 0", "row 260 is poisoned"):
        assert text in table.stdout, (text, table.stdout)

    detail = db.cli("status", "poisoned")
    assert detail.returncode == 0
    for text in ("failed batches", "[251]", "[300]", "recent batches", " ms", "recent errors"):
        assert text in detail.stdout, (text, detail.stdout)

    data = json.loads(db.cli("status", "poisoned", "--json").stdout)
    assert data["status"] == "failed" and data["rows_done"] == 450 and data["rows_total"] == 500
    (failed,) = data["failed_batches"]
    assert (failed["first"], failed["last"], failed["attempts"]) == ([251], [300], 1)
    assert "row 260 is poisoned" in failed["error"]
    assert len(data["recent_batches"]) == 9 and all(b["duration_ms"] > 0 for b in data["recent_batches"])
    assert any("row 260 is poisoned" in (e["error"] or "") for e in data["recent_errors"])


def test_every_transition_is_kept_and_logged_as_json(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 101)))
    poison(db, 60)
    result = db.cli("run", "poisoned", "--no-progress") if False else subprocess.run(
        [sys.executable, "-m", "backfill", "run", "poisoned", "--no-progress"],
        cwd=ROOT,
        env={**os.environ, "BACKFILL_DATABASE_URL": db.url, "BACKFILL_APP": "tests.apps.counters",
             "BACKFILL_LOG_FORMAT": "json", "BACKFILL_LOG_LEVEL": "DEBUG"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    transitions = [(line.get("batch_id") is not None, line.get("before"), line["after"]) for line in lines]
    assert (False, "pending", "running") in transitions  # the run started
    assert (True, "pending", "running") in transitions  # a batch was claimed
    assert (True, "running", "succeeded") in transitions
    assert (False, "running", "failed") in transitions
    failure = next(line for line in lines if line["after"] == "failed" and line.get("batch_id"))
    assert "row 60 is poisoned" in failure["error"] and failure["level"] == "warning" and failure["seq"] == 1

    with db.engine.connect() as connection:
        kept = connection.execute(select(events.c.batch_id, events.c.before, events.c.after, events.c.error)).all()
    assert len(kept) == len(lines)
    assert any(e.after == "failed" and e.batch_id and "row 60 is poisoned" in e.error for e in kept)


def test_a_run_stops_when_too_many_batches_fail(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 2001)))
    poison(db, *range(1, 2001, 10))  # every batch has a bad row
    result = db.cli("run", "poisoned", "--no-progress")
    assert result.returncode == 1
    assert "stopped:" in one_error_line(result) and "more than 20%" in result.stderr
    data = json.loads(db.cli("status", "poisoned", "--json").stdout)
    # It stopped within a few batches of the minimum, not after all 40.
    assert 10 <= data["batches_failed"] <= 14
    assert counter_histogram(db, items) == {0: 2000}


def test_retry_split_narrows_a_failure_down(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 201)))
    poison(db, 77)
    assert db.cli("run", "poisoned", "--no-progress").returncode == 1  # batch 51..100 fails

    split = db.cli("retry", "poisoned", "--split")
    assert split.returncode == 0 and "re-queued in halves" in split.stdout
    assert db.cli("run", "poisoned", "--no-progress").returncode == 1
    data = json.loads(db.cli("status", "poisoned", "--json").stdout)
    (failed,) = data["failed_batches"]
    assert (failed["first"], failed["last"]) == ([76], [100])  # 51..75 went through
    assert counter_histogram(db, items) == {1: 175, 0: 25}

    poison(db)
    assert db.cli("retry", "poisoned").returncode == 0
    assert db.cli("run", "poisoned", "--no-progress").returncode == 0
    assert counter_histogram(db, items) == {1: 200}
    run = db.app().store.latest_run("poisoned")
    assert run is not None and run.status is RunStatus.FINISHED and run.rows_done == 200
    assert len(db.app().store.batches_of(run.id, BatchStatus.SPLIT)) == 1


def test_wait_exit_codes(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 101)))
    assert db.cli("start", "counter_int").returncode == 0
    started = time.monotonic()
    timed_out = db.cli("wait", "counter_int", "--timeout", "1")
    assert timed_out.returncode == 3 and "timed out" in timed_out.stderr
    assert time.monotonic() - started < 30

    runner = background(db, "run", "counter_int", "--no-progress")
    finished = db.cli("wait", "counter_int", "--timeout", "60")
    runner.wait(60)
    assert finished.returncode == 0 and "finished" in finished.stdout

    poison(db, 5)
    assert db.cli("run", "poisoned", "--no-progress").returncode == 1
    failed = db.cli("wait", "counter_int", "poisoned", "--timeout", "60")
    assert failed.returncode == 1 and "poisoned: run" in failed.stdout and "failed" in failed.stdout

    assert db.cli("wait", "no_such_backfill").returncode == 2
    never = db.cli("wait", "counter_text")
    assert never.returncode == 2 and "never run" in one_error_line(never)


def test_watch_follows_a_run_to_its_end(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 301)))
    runner = background(db, "run", "counter_slow", "--no-progress")
    wait_for(lambda: batches_done(db) >= 1, what="first batch", timeout=60)
    watched = db.cli("watch", "counter_slow", "--interval", "0.2", timeout=120)
    runner.wait(60)
    assert watched.returncode == 0
    assert "finished" in watched.stdout and "counter_slow" in watched.stdout


def test_estimate_changes_nothing(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 10_001)))
    result = db.cli("estimate", "counter_int", "--samples", "4", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["rows"] == 10_000 and data["batches"] == 200 and data["sampled_batches"] == 4
    assert data["batch_ms"] > 0 and data["seconds"] > 0
    human = db.cli("estimate", "counter_int", "--batch-size", "500")
    assert "10,000 rows in 20 batches of 500" in human.stdout
    assert counter_histogram(db, items) == {0: 10_000}
    assert db.scalar("SELECT count(*) FROM backfill_runs") == 0


def test_tune_changes_a_running_run(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 1001)))
    runner = background(db, "run", "counter_slow", "--no-progress")
    wait_for(lambda: batches_done(db) >= 5, what="five batches", timeout=60)
    tuned = db.cli("tune", "counter_slow", "--batch-size", "40")
    assert tuned.returncode == 0 and "batch size 40" in tuned.stdout
    assert runner.wait(120) == 0
    run = db.app().store.latest_run("counter_slow")
    assert run is not None and run.status is RunStatus.FINISHED
    sizes = [b.rows for b in db.app().store.batches_of(run.id)]
    assert sizes[0] == 10 and 40 in sizes and sizes.index(40) > 5
    assert counter_histogram(db, items) == {1: 1000}
    assert db.cli("tune", "counter_slow", "--batch-size", "5").returncode == 2  # no active run


def test_a_stuck_batch_is_taken_back(db: Database) -> None:
    """A runner frozen mid-batch (SIGSTOP) stops its heartbeat; its lease runs out and another
    runner takes the batch back, and redoes it once the frozen one's locks are gone."""
    counters.fill(db.engine, items, list(range(1, 301)))
    fast_heartbeat = {"BACKFILL_HEARTBEAT_SECONDS": "0.5"}  # a lease of 1.5 s
    frozen = background(
        db, "run", "counter_sleepy", "--no-progress", "--threads", "1", "--parallelism", "1", **fast_heartbeat
    )
    wait_for(lambda: batches_done(db) >= 2, what="two batches", timeout=60)
    # Freeze it inside a batch's work (0.4 s of its transaction), not in its bookkeeping.
    wait_for(
        lambda: db.scalar("SELECT count(*) FROM backfill_batches WHERE status = 'running'"),
        what="a running batch",
        timeout=60,
    )
    time.sleep(0.1)
    frozen.send_signal(signal.SIGSTOP)
    try:
        stuck = db.scalar("SELECT id FROM backfill_batches WHERE status = 'running'")
        assert stuck is not None
        time.sleep(2)  # past the lease
        rescuer = background(db, "run", "counter_sleepy", "--no-progress", "--lock-timeout", "0.5", **fast_heartbeat)
        wait_for(
            lambda: db.scalar(
                "SELECT count(*) FROM backfill_events WHERE batch_id = :b AND error LIKE '%stopped answering%'", b=stuck
            ),
            what="the stuck batch taken back",
            timeout=60,
        )
    finally:
        frozen.send_signal(signal.SIGKILL)  # its transaction, and its row locks, go with it
        frozen.wait(30)
    assert rescuer.wait(120) == 0, rescuer.stderr.read() if rescuer.stderr else ""
    assert counter_histogram(db, items) == {1: 300}
    run = db.app().store.latest_run("counter_sleepy")
    assert run is not None and run.status is RunStatus.FINISHED and run.batches_failed == 0
    taken_back = next(b for b in db.app().store.batches_of(run.id) if b.id == stuck)
    assert taken_back.attempts >= 2 and taken_back.status is BatchStatus.SUCCEEDED


def test_metrics_endpoint(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 251)))
    assert db.cli("run", "counter_int", "--no-progress").returncode == 0
    body = metrics_page(db)
    labels = 'backfill="counter_int",run="1"'
    assert f"backfill_rows_processed_total{{{labels}}} 250.0" in body
    assert f'backfill_batches{{{labels},status="succeeded"}} 5.0' in body
    assert f"backfill_batch_size{{{labels}}} 50.0" in body
    assert f'backfill_run_status{{{labels},status="finished"}} 1.0' in body
    assert f"backfill_run_pace{{{labels}}} 1.0" in body  # no impact budget: all of its time
    assert 'backfill_batch_duration_seconds_bucket{backfill="counter_int",le="+Inf",run="1"} 5.0' in body
    assert f"backfill_batch_duration_seconds_count{{{labels}}} 5.0" in body
