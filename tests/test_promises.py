"""What "finished" promises, checked on the data on SQLite, PostgreSQL and MariaDB: the final
pass with and without a way to tell what is pending, work that does not clear ``pending``, a
predicate that fails mid-run, per-run settings on a resumed run, operators retrying at once, and
log lines only for what committed."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from backfill import App, Registry, RunStatus, Tuning
from backfill.errors import RunStateError
from backfill.events import Event
from backfill.executor import Outcome
from backfill.planner import Planner
from backfill.store import Carry, Claim, Store
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import Database
from tests.helpers import poison
from tests.test_engine import counter_histogram


def once(action: Any) -> Any:
    """An ``on_outcome`` callback that does ``action`` after the first batch, and never again."""
    done: list[bool] = []

    def callback(outcome: Outcome) -> None:
        if not done:
            done.append(True)
            action()

    return callback


def insert(db: Database, *keys: int) -> None:
    with db.engine.begin() as connection:
        connection.execute(items.insert(), [{"id": k} for k in keys])


def test_the_final_pass_finds_rows_written_below_the_end_when_columns_say_what_is_pending(db: Database) -> None:
    counters.fill(db.engine, items, list(range(10, 1010, 10)))
    app = db.app()
    # After the first batch: rows in gaps well below the end, and one past it.
    run = app.run("counter_noted", on_outcome=once(lambda: insert(db, 15, 505, 995, 2000)))
    assert run.status is RunStatus.FINISHED, run.last_error
    assert counter_histogram(db, items) == {1: 104}
    with db.engine.connect() as connection:
        assert connection.execute(select(func.count()).where(items.c.note.is_(None))).scalar() == 0
    status = json.loads(db.cli("status", "--json").stdout)
    assert status[0]["final_pass"] == "pending"


def test_without_a_way_to_tell_what_is_pending_the_final_pass_covers_keys_past_the_end(db: Database) -> None:
    counters.fill(db.engine, items, list(range(10, 1010, 10)))
    run = db.app().run("counter_int", on_outcome=once(lambda: insert(db, 505, 2000)))
    assert run.status is RunStatus.FINISHED
    with db.engine.connect() as connection:
        counted = dict(connection.execute(select(items.c.id, items.c.counter).where(items.c.id.in_([505, 2000]))).all())
    assert counted == {505: 0, 2000: 1}  # the row below the end is not processed: status says so
    assert counter_histogram(db, items) == {1: 101, 0: 1}
    status = json.loads(db.cli("status", "--json").stdout)
    assert status[0]["final_pass"] == "past_end"
    assert "not processed" in status[0]["final_pass_covers"]
    assert "final pass: only keys added past the end" in db.cli("status", "counter_int").stdout


def test_work_that_does_not_clear_pending_stops_the_run(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 201)))
    run = db.app().run("counter_forgetful")
    assert run.status is RunStatus.FAILED
    assert "still match `pending` after the work" in (run.last_error or "")
    # The main sweep ran each row once; the final-pass batch that found them still pending rolled back.
    assert counter_histogram(db, items) == {1: 200}
    assert run.batches_failed == 1


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_a_pending_predicate_that_fails_in_the_final_pass_fails_the_run(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 201)))
    app = db.app()
    run = app.run("counter_trapped", on_outcome=once(lambda: poison(db, 7, 8)))  # its subquery returns two rows
    assert run.status is RunStatus.FAILED
    assert "planning the final pass failed" in (run.last_error or ""), run.last_error
    assert "backfill retry counter_trapped" in (run.last_error or "")
    shown = db.cli("status", "counter_trapped")
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr
    assert counter_histogram(db, items) == {1: 200}
    poison(db)  # the fix
    app.retry("counter_trapped")
    again = db.cli("run", "counter_trapped", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert counter_histogram(db, items) == {1: 200}


def test_settings_given_to_run_apply_to_the_run_it_resumes(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 501)))
    db.app().start("counter_int")  # batch size 50, no batch run yet
    result = db.cli("run", "counter_int", "--batch-size", "20", "--parallelism", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    run = db.app().store.latest_run("counter_int")
    assert run is not None and run.tuning.batch_size == 20 and run.tuning.parallelism == 2
    assert max(b.rows for b in db.app().store.batches_of(run.id)) == 20
    assert counter_histogram(db, items) == {1: 500}


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_two_operators_retrying_at_once_re_queue_each_batch_once(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 501)))
    poison(db, 60, 260, 460)
    run = db.app().run("poisoned")
    assert run.status is RunStatus.FAILED and run.batches_failed == 3
    poison(db)
    for split in (False, True):
        barrier = threading.Barrier(2)
        requeued: list[int] = []

        def operator(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                requeued.append(db.app().retry("poisoned", split=split)[1])  # noqa: B023
            except RunStateError:
                requeued.append(0)  # noqa: B023 - the other operator got there first

        threads = [threading.Thread(target=operator) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(requeued) == [0, 3]
        run = db.app().store.get_run(run.id)
        failed = db.app().store.batches_of(run.id)
        assert run.batches_failed == sum(b.status == "failed" for b in failed) == 0
        assert run.status is RunStatus.RUNNING
        if not split:  # fail them again, for the split round
            poison(db, 60, 260, 460)
            run = db.app().run("poisoned")
            assert run.status is RunStatus.FAILED and run.batches_failed == 3, run.last_error
            poison(db)
    final = db.app().run("poisoned")
    assert final.status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 500}


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Each event's change (``run running -> paused``), without the fields that follow it."""
    return [" ".join(r.getMessage().split()[:4]) for r in caplog.records if r.name == "backfill.events"]


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_no_event_is_logged_for_a_transaction_that_rolled_back(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="backfill.events")
    store = db.app().store
    run = db.app().start("counter_int")
    caplog.clear()
    with store.connect() as connection:
        with pytest.raises(RuntimeError), store.transaction(connection):
            store._record(
                connection,
                Event(backfill="counter_int", run_id=run.id, after=RunStatus.PAUSED, before=RunStatus.RUNNING),
            )
            raise RuntimeError("the commit never happens")
        assert not log_lines(caplog)
        with store.transaction(connection):  # the next transaction on the same connection
            store._record(
                connection,
                Event(backfill="counter_int", run_id=run.id, after=RunStatus.RUNNING, before=RunStatus.RUNNING),
            )
    assert log_lines(caplog) == ["run running -> running"]


@pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)
def test_a_batch_whose_transaction_rolls_back_logs_nothing_later(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch's completion queues its events on the batch's own transaction (on PostgreSQL in
    the one completing statement). Rolled back, they are gone: the next commit on the same
    connection (a chain's next batch) or the same pooled connection does not log them."""
    caplog.set_level(logging.DEBUG, logger="backfill.events")
    counters.fill(db.engine, items, list(range(1, 11)))
    app = db.app()
    run = app.start("counter_int")
    Planner(app.store, app.targets).tick(run)
    claim = app.store.claim(run, None, "worker-1", 60.0)
    assert isinstance(claim, Claim), claim
    caplog.clear()
    with db.engine.connect() as connection:  # a chain's connection: batch after batch on it
        with pytest.raises(RuntimeError), connection.begin():
            assert app.store.complete(connection, claim, rows_affected=10, duration_ms=1.0).refusal is None
            raise RuntimeError("the batch's commit never happens")
        with connection.begin():
            connection.execute(select(1))
    for _ in range(6):  # and whichever pooled connection it was, the next commits on it
        with db.engine.connect() as connection, connection.begin():
            connection.execute(select(1))
    app.store.pause(run)
    assert log_lines(caplog) == ["run running -> paused"]


@pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)
def test_a_migration_that_rolls_back_logs_nothing_of_what_it_did(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="backfill.events")
    registry = Registry.from_module(counters)
    for outcome in ("rollback", "commit"):
        caplog.clear()
        with db.engine.connect() as connection:
            transaction = connection.begin()
            app = App(connection, registry)
            app.store.create_run(registry["counter_int"], registry["counter_int"].tuning)
            assert not log_lines(caplog), "logged before the migration committed"
            getattr(transaction, outcome)()
        assert log_lines(caplog) == ([] if outcome == "rollback" else ["run new -> pending"])
    assert Store(db.engine).latest_run("counter_int") is not None


TUNED_MID_RUN = {
    "batch_size": 700, "parallelism": 3, "max_attempts": 7, "statement_timeout": 12.5, "lock_timeout": 1.5,
    "max_failed_ratio": 0.3, "min_batches_for_ratio": 12, "target_batch_seconds": 0.2, "min_batch_size": 50,
    "max_batch_size": 9000, "max_rows_per_second": 5000.0, "pause_seconds": 0.25, "nice_ratio": 0.5,
    "max_replica_lag": 12.0, "max_transaction_age": 300.0, "max_connections_used": 0.8, "max_load": 6.0,
    "critical_load": 20.0, "hold_during_vacuum": False, "impact_budget": 0.2,
}  # fmt: skip


@pytest.mark.parametrize("db", ["sqlite", "postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("carry", [False, True])
def test_every_setting_tuned_mid_chain_reaches_the_chain_at_its_next_commit(db: Database, carry: bool) -> None:
    """A chain goes on by the run its batch's commit hands back (its rests, its monitor's limits,
    the impact budget's pace all read it): an operator's tune of any setting, made while a batch
    is in flight, is in that run."""
    assert set(TUNED_MID_RUN) == set(Tuning.__dataclass_fields__)  # a new setting is added here
    counters.fill(db.engine, items, list(range(1, 31)))
    app = db.app()
    run = app.start("counter_int", batch_size=10)
    Planner(app.store, app.targets).tick(run)
    claim = app.store.claim(run, None, "worker-1", 60.0)
    assert isinstance(claim, Claim), claim
    tuned = app.tune("counter_int", **TUNED_MID_RUN)
    assert tuned.tuning == Tuning().replace(TUNED_MID_RUN)
    with db.engine.connect() as connection, connection.begin():
        completed = app.store.complete(
            connection,
            claim,
            rows_affected=10,
            duration_ms=1.0,
            carry=Carry("worker-1", 60.0) if carry else None,
            run=run,
        )
    assert completed.refusal is None and completed.run is not None
    assert completed.run.tuning == tuned.tuning
