"""The engine end to end on SQLite and PostgreSQL, checked on the data: every row processed
exactly once (a counter column at exactly 1)."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from backfill import App, BatchStatus, Phase, RunStatus
from backfill.errors import RunStateError
from backfill.executor import Executor, Result
from backfill.planner import Planner
from backfill.store import Claim, Refusal
from tests.apps import counters
from tests.apps.counters import items, items_composite, items_text, items_uuid
from tests.conftest import Database


def counter_histogram(db: Database, table: Any) -> dict[int, int]:
    with db.engine.connect() as connection:
        rows = connection.execute(select(table.c.counter, func.count()).group_by(table.c.counter)).all()
    return {counter: n for counter, n in rows}


@pytest.mark.parametrize("threads", [1, 4])
def test_every_row_once_with_an_integer_key(db: Database, threads: int) -> None:
    counters.fill(db.engine, items, list(range(1, 1001)))
    run = db.app().run("counter_int", threads=threads, parallelism=threads)
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 1000}
    assert (run.rows_done, run.batches_done, run.batches_failed) == (1000, 20, 0)
    assert run.rows_affected == 1000


def test_keys_with_gaps_cost_no_extra_batches(db: Database) -> None:
    keys = [*sorted(random.Random(3).sample(range(1, 10_000_000), 700)), 2**31 - 1]
    counters.fill(db.engine, items, keys)
    run = db.app().run("counter_int")
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 701}
    batches = db.app().store.batches_of(run.id)
    # Batches follow the keys that exist, not the key space: 50 rows each, whatever the gaps.
    assert [b.rows for b in batches] == [50] * 14 + [1]
    assert batches[0].first_key == [keys[0]] and batches[-1].last_key == [keys[-1]]


def test_text_key(db: Database) -> None:
    codes = [f"{prefix}-{n:05d}" for prefix in ("alpha", "Beta", "gamma", "ZETA") for n in range(120)]
    counters.fill(db.engine, items_text, codes)
    run = db.app().run("counter_text")
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items_text) == {1: 480}
    assert run.batches_done == 10


def test_composite_key(db: Database) -> None:
    keys = [(tenant, seq) for tenant in ("acme", "globex", "initech") for seq in range(1, 171)]
    counters.fill(db.engine, items_composite, keys)
    run = db.app().run("counter_composite", batch_size=37)
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items_composite) == {1: 510}
    batches = db.app().store.batches_of(run.id)
    assert len(batches) == 14  # ceil(510 / 37)
    # Batches that straddle two tenants are cut by row-value comparison, not per column.
    assert any(b.first_key[0] != b.last_key[0] for b in batches)


def test_uuid_key_with_a_core_statement(db: Database) -> None:
    counters.fill(db.engine, items_uuid, counters.uuids(333))
    run = db.app().run("counter_uuid")
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items_uuid) == {1: 333}


def test_empty_table_finishes_with_no_batches(db: Database) -> None:
    run = db.app().run("counter_int")
    assert run.status is RunStatus.FINISHED
    assert (run.rows_done, run.batches_done, run.rows_total) == (0, 0, 0)


def test_rows_inserted_during_the_run_are_caught_by_the_final_pass(db: Database) -> None:
    counters.fill(db.engine, items, list(range(0, 2000, 2)))  # even ids 0..1998
    app = db.app()
    inserted: list[int] = []

    def insert_during_run(outcome: Any) -> None:
        if len(inserted) == 0 and outcome.result is Result.SUCCEEDED:
            # Into ranges already done (odd ids low in the table) and past the run's end.
            late = [1, 3, 5, 7, 51, 2001, 2003, 5000]
            counters.fill(db.engine, items, late)
            inserted.extend(late)

    run = app.run("counter_pending", on_outcome=insert_during_run)
    assert run.status is RunStatus.FINISHED
    assert inserted
    assert counter_histogram(db, items) == {1: 1008}
    assert db.scalar("SELECT count(*) FROM items WHERE done = 0") == 0
    catchup = [b for b in app.store.batches_of(run.id) if b.phase is Phase.CATCHUP]
    assert catchup and sum(b.rows for b in catchup) >= 8
    assert run.rows_total == run.rows_done  # exact once finished


def test_without_pending_the_final_pass_takes_keys_past_the_end(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 201)))
    app = db.app()
    done: list[bool] = []

    def insert_past_end(outcome: Any) -> None:
        if not done:
            counters.fill(db.engine, items, [500, 501, 502])
            done.append(True)

    run = app.run("counter_int", on_outcome=insert_past_end)
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 203}


def test_a_failing_batch_is_recorded_and_retry_completes_it(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 501)))
    with db.engine.begin() as connection:
        connection.execute(counters.poison.insert(), [{"id": 123}])
    app = db.app()
    run = app.run("poisoned")

    assert run.status is RunStatus.FAILED
    assert run.batches_failed == 1 and run.batches_done == 9
    assert "row 123 is poisoned" in (run.last_error or "")
    (failed,) = app.store.batches_of(run.id, BatchStatus.FAILED)
    assert failed.first_key == [101] and failed.last_key == [150]
    assert failed.attempts == 1  # not a transient error: no retry
    assert "ValueError: row 123 is poisoned" in (failed.error or "")
    # The failed batch's own writes rolled back with it; the other batches' stayed.
    assert counter_histogram(db, items) == {0: 50, 1: 450}

    with db.engine.begin() as connection:
        connection.execute(counters.poison.delete())
    reopened, requeued = app.retry("poisoned")
    assert requeued == 1 and reopened.status is RunStatus.RUNNING
    run = app.run("poisoned")
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 500}
    assert (run.batches_done, run.batches_failed, run.rows_done) == (10, 0, 500)


def test_a_transient_error_is_retried(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 301)))
    counters.Contention.arm(db.url)
    try:
        run = db.app().run("counter_contended")
        provoked = list(counters.Contention.provoked)
    finally:
        counters.Contention.arm(None)
    assert run.status is RunStatus.FINISHED
    assert provoked, "the lock conflict never happened"
    batch = next(b for b in db.app().store.batches_of(run.id) if b.id == provoked[0])
    assert batch.status is BatchStatus.SUCCEEDED and batch.attempts == 2
    assert counter_histogram(db, items) == {1: 300}


def test_a_batch_delivered_twice_runs_once(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 101)))
    app = db.app()
    run = app.start("counter_int")
    plan = Planner(app.store, app.targets).tick(run)
    batch = plan.pending[0]
    executor = Executor(app.store, app.targets)
    results: list[Result] = []
    threads = [
        threading.Thread(target=lambda: results.append(executor.execute(run, batch.id).result)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.value for r in results) == ["skipped", "skipped", "skipped", "succeeded"]
    assert executor.execute(run, batch.id).result is Result.SKIPPED
    assert counter_histogram(db, items) == {0: 50, 1: 50}


def test_a_worker_that_lost_its_claim_cannot_commit(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 101)))
    app = db.app()
    run = app.start("counter_int")
    batch = Planner(app.store, app.targets).tick(run).pending[0]
    slow_claim = app.store.claim(run, batch.id, "slow-worker", lease_seconds=60)
    assert isinstance(slow_claim, Claim)
    # The slow worker's lease is deemed lost; the batch goes back and another worker runs it.
    assert app.store.release_stale(run, is_abandoned=lambda worker: worker == "slow-worker") == 1
    assert Executor(app.store, app.targets).execute(run, batch.id).result is Result.SUCCEEDED
    with db.engine.begin() as connection:
        connection.execute(update(items).values(counter=items.c.counter + 100).where(items.c.id == 1))
        assert app.store.complete(connection, slow_claim, rows_affected=50, duration_ms=1.0).refusal is Refusal.LOST
        connection.rollback()
    assert counter_histogram(db, items) == {1: 50, 0: 50}


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_run_joins_the_transaction_of_a_borrowed_connection(db: Database, outcome: str) -> None:
    """How a migration finalizes a backfill inline: the run commits or rolls back with it."""
    counters.fill(db.engine, items, list(range(1, 301)))
    with db.engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(update(items).where(items.c.id > 290).values(done=1))  # uncommitted, yet seen
        run = App(connection, db.app().definitions).run("counter_pending")
        assert run.status is RunStatus.FINISHED and run.rows_done == 300
        getattr(transaction, outcome)()
    if outcome == "commit":
        assert counter_histogram(db, items) == {1: 290, 0: 10}
        assert db.scalar("SELECT count(*) FROM backfill_runs WHERE status = 'finished'") == 1
    else:
        assert counter_histogram(db, items) == {0: 300}
        assert db.scalar("SELECT count(*) FROM backfill_runs") == 0


def test_runs_share_a_table_only_when_both_definitions_allow_it(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 11)))
    app = db.app()
    first = app.start("counter_int")
    with pytest.raises(RunStateError, match=r"'counter_int' .* is working on table 'items'"):
        app.start("shared_a")
    # Queued (as a migration queues it), it waits for the table instead.
    queued = app.store.create_run(app.definitions["counter_pending"], app.definitions["counter_pending"].tuning)
    planner = Planner(app.store, app.targets)
    assert planner.activate(queued).status is RunStatus.PENDING
    app.cancel("counter_int")
    assert planner.activate(queued).status is RunStatus.RUNNING
    assert first.status is RunStatus.RUNNING
    app.cancel("counter_pending")

    assert app.start("shared_a").status is RunStatus.RUNNING
    assert app.start("shared_b").status is RunStatus.RUNNING


@pytest.mark.parametrize("db", ["mariadb"], indirect=True)
def test_a_batch_leaves_the_pooled_session_limits_as_it_found_them(db: Database) -> None:
    """MySQL has no SET LOCAL: a batch's lock and statement limits are session settings, and
    must not follow the connection back to the pool (and into the store's bookkeeping)."""
    counters.fill(db.engine, items, list(range(1, 201)))
    limits = "SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.max_statement_time"
    with db.engine.connect() as connection:
        before = tuple(connection.execute(text(limits)).one())
    run = db.app().run("counter_int", threads=2, parallelism=2, lock_timeout=1, statement_timeout=0.5)
    assert run.status is RunStatus.FINISHED
    pooled = [db.engine.connect() for _ in range(3)]
    try:
        assert {tuple(c.execute(text(limits)).one()) for c in pooled} == {before}
    finally:
        for connection in pooled:
            connection.close()
