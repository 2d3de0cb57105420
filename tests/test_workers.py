"""Celery delivery with real Redis, real PostgreSQL and real worker processes — and the faults it
must survive. Every test ends with the check on the data: a counter at exactly 1 on every row,
the run finished, no failed batch."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
from alembic import command
from sqlalchemy import text

from backfill import BatchStatus, RunStatus
from backfill.dispatch import Dispatcher
from backfill.errors import RunStateError
from backfill.store import BatchRecord, Run, Store
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import Database, service_missing
from tests.helpers import free_port, poison, wait_for
from tests.test_alembic import alembic, columns, seed_players
from tests.test_engine import counter_histogram
from tests.test_throttling import rows_in_windows
from tests.workers_cluster import REDIS_START, REDIS_URL, Cluster, cluster_for

pytestmark = pytest.mark.parametrize("db", ["postgresql"], indirect=True)


@pytest.fixture
def cluster(db: Database, tmp_path: Path) -> Iterator[Cluster]:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        service_missing("Redis", REDIS_START, exc)
    cluster = cluster_for(db, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop(graceful=False)


def wait_for_run(db: Database, name: str, *, until: str = "over", timeout: float = 120) -> Run:
    """The run of ``name`` once it is over, or (``until`` a number) once that many batches are done."""

    def there() -> Run | None:
        run = db.app().store.latest_run(name)
        reached = run is not None and (run.status.is_over if until == "over" else run.batches_done >= int(until))
        return run if reached else None

    return wait_for(there, timeout=timeout, what=f"the run of {name} ({until})", every=0.1)


def assert_clean_finish(db: Database, name: str, rows: int) -> Run:
    run = wait_for_run(db, name)
    assert run.status is RunStatus.FINISHED, run.last_error
    assert counter_histogram(db, items) == {1: rows}
    assert run.batches_failed == 0 and run.rows_done == rows
    assert not db.app().store.batches_of(run.id, BatchStatus.FAILED)
    return run


def test_workers_run_a_started_backfill_in_parallel(db: Database, cluster: Cluster) -> None:
    counters.fill(db.engine, items, list(range(1, 1001)))
    port = free_port()
    cluster.start_worker("w1", concurrency=2, BACKFILL_METRICS_PORT=str(port))
    cluster.start_worker("w2", concurrency=2)
    cluster.start_scheduler()
    assert db.cli("start", "counter_int", "--parallelism", "4").returncode == 0
    run = assert_clean_finish(db, "counter_int", 1000)
    batches = db.app().store.batches_of(run.id)
    assert len(batches) == 20
    # Ranges never overlap: each batch starts after the previous one ended.
    for before, after in itertools.pairwise(batches):
        assert after.first_key > before.last_key
    processes = {b.worker.split(":")[1] for b in batches if b.worker}
    assert len(processes) >= 2, "batches ran in one process only"
    # Any worker's metrics describe the whole run, read from the store.
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f'backfill_rows_processed_total{{backfill="counter_int",run="{run.id}"}} 1000.0' in body
    # The library's lines join Celery's log: its format and level, one timestamp, with the fields.
    logged = cluster.log("w1") + cluster.log("w2")
    done = [line for line in logged.splitlines() if "batch running -> succeeded" in line]
    assert done and all(re.match(r"^\[\d{4}-\d\d-\d\d [\d:,]+: INFO/", line) for line in done), done[:3]
    assert all(line.count("202") == 1 and f"run_id={run.id}" in line for line in done), done[:3]
    assert not re.search(r"/[\w-]+\] \d{4}-\d\d-\d\d", logged), logged[-3000:]  # no stderr line re-logged


def test_a_worker_killed_mid_batch(db: Database, cluster: Cluster) -> None:
    counters.fill(db.engine, items, list(range(1, 501)))
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.start_scheduler()
    assert db.cli("start", "counter_sleepy").returncode == 0
    store = db.app().store

    def running_batch() -> BatchRecord | None:
        run = store.latest_run("counter_sleepy")
        running = store.batches_of(run.id, BatchStatus.RUNNING) if run and run.batches_done >= 2 else []
        return running[0] if running else None

    victim = wait_for(running_batch, timeout=60, what="a running batch after two done")
    assert victim.worker is not None
    os.kill(int(victim.worker.split(":")[1]), signal.SIGKILL)

    run = assert_clean_finish(db, "counter_sleepy", 500)
    again = next(b for b in store.batches_of(run.id) if b.id == victim.id)
    assert again.attempts >= 2 and again.status is BatchStatus.SUCCEEDED


def test_messages_a_dead_worker_took_are_sent_again_within_seconds_by_default(db: Database, cluster: Cluster) -> None:
    """A worker SIGKILLed with messages it had taken but not yet claimed (Redis gives those back
    only after the visibility timeout, an hour): with the default settings the batches are sent
    again and the run moves within 15 s of the loss, none run twice."""
    counters.fill(db.engine, items, list(range(1, 301)))
    assert db.cli("start", "counter_sleepy", "--parallelism", "2").returncode == 0
    app = db.app()
    lost: list[int] = []
    assert Dispatcher(app.store, app.targets, lost.append).tick() == 2  # sent to a worker that died
    assert lost
    lost_at = time.monotonic()
    cluster.start_scheduler()
    cluster.start_worker("w1", concurrency=2, BACKFILL_REDISPATCH_SECONDS="")  # the default
    wait_for_run(db, "counter_sleepy", until="1", timeout=60)
    moved_after = time.monotonic() - lost_at
    assert_clean_finish(db, "counter_sleepy", 300)
    assert moved_after < 15, f"the run moved again only {moved_after:.1f}s after the loss"


def test_every_message_lost_mid_run(db: Database, cluster: Cluster) -> None:
    counters.fill(db.engine, items, list(range(1, 501)))
    cluster.start_worker("w1")
    cluster.start_scheduler()
    assert db.cli("start", "counter_sleepy", "--parallelism", "4").returncode == 0
    wait_for_run(db, "counter_sleepy", until="3")
    lost_at: datetime = db.app().store.db_time()
    assert cluster.lose_every_message() > 0

    run = assert_clean_finish(db, "counter_sleepy", 500)
    resent = [
        b
        for b in db.app().store.batches_of(run.id)
        if b.created_at < lost_at and b.started_at is not None and b.started_at > lost_at
    ]
    assert resent, "no batch queued before the loss ran after it"


def test_a_worker_connection_killed_mid_batch(db: Database, cluster: Cluster) -> None:
    counters.fill(db.engine, items, list(range(1, 301)))
    cluster.start_worker("w1", concurrency=2)
    cluster.start_scheduler()
    assert db.cli("start", "counter_sleepy").returncode == 0
    wait_for_run(db, "counter_sleepy", until="2")
    killed = wait_for(
        lambda: db.scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep%' AND state = 'active'"
        ),
        what="a batch's connection to terminate",
    )
    assert killed

    run = assert_clean_finish(db, "counter_sleepy", 300)
    retried = [b for b in db.app().store.batches_of(run.id) if b.attempts >= 2]
    assert retried, "no batch was retried after its connection was killed"


def test_an_application_lock_longer_than_the_lock_timeout(db: Database, cluster: Cluster) -> None:
    """An application transaction holds row 120 far longer than the batch's lock timeout, while
    the application's other traffic writes rows 101..119 one at a time. The batch covering them
    backs off and retries; the traffic waits on it at most the lock timeout."""
    counters.fill(db.engine, items, list(range(1, 301)))
    lock_timeout = 0.3
    waits: list[float] = []
    held, released = threading.Event(), threading.Event()

    def blocked_batch_retried() -> bool:
        return bool(
            db.scalar("SELECT count(*) FROM backfill_batches WHERE CAST(first_key AS TEXT) = '[101]' AND attempts >= 3")
        )

    def long_transaction() -> None:
        with db.engine.connect() as connection, connection.begin():
            connection.execute(text("SELECT id FROM items WHERE id = 120 FOR UPDATE"))
            held.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not blocked_batch_retried():
                time.sleep(0.05)
        released.set()

    def traffic() -> None:
        with db.engine.connect() as connection:
            row = 101
            while not released.is_set():
                started = time.monotonic()
                with connection.begin():
                    # Takes the row lock an UPDATE takes, without moving the row in the heap:
                    # the batch meets row 120 after rows 101..119, as their order stays put.
                    connection.execute(text("SELECT id FROM items WHERE id = :id FOR UPDATE"), {"id": row})
                waits.append(time.monotonic() - started)
                row = 101 if row >= 119 else row + 1
                time.sleep(0.005)

    cluster.start_worker("w1")
    cluster.start_scheduler()
    holder, writer = threading.Thread(target=long_transaction), threading.Thread(target=traffic)
    holder.start()
    held.wait(10)
    writer.start()
    assert (
        db.cli("start", "counter_sleepy", "--lock-timeout", str(lock_timeout), "--max-attempts", "50").returncode == 0
    )
    holder.join()
    writer.join()

    run = assert_clean_finish(db, "counter_sleepy", 300)
    blocked = next(b for b in db.app().store.batches_of(run.id) if b.first_key == [101])
    assert blocked.attempts >= 3
    print(f"application traffic's longest wait: {max(waits) * 1000:.0f} ms over {len(waits)} writes")
    assert max(waits) > 0.05, "the traffic never met the batch: the test did not test anything"
    assert max(waits) < lock_timeout + 0.25


def test_the_deploy_recipe_with_workers(empty: Database, tmp_path: Path) -> None:
    """Deploy N queues the backfill, workers run it, deploy N+1 enforces NOT NULL without doing
    any of the work itself (``-x finalize=false``)."""
    db = empty
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        service_missing("Redis", REDIS_START, exc)
    command.upgrade(alembic(db), "0001_players")
    team_of = seed_players(db)
    command.upgrade(alembic(db), "0003_teams")
    cluster = cluster_for(db, tmp_path, BACKFILL_APP="example_app.backfills")
    try:
        cluster.start_worker("w1", concurrency=2)
        cluster.start_scheduler()
        waited = db.cli("wait", "players_team_id", "--timeout", "90", app="example_app.backfills")
        assert waited.returncode == 0, waited.stdout + waited.stderr
    finally:
        cluster.stop()
    command.upgrade(alembic(db, x=["finalize=false"]), "head")
    with db.engine.connect() as connection:
        linked = dict(
            connection.execute(text("SELECT p.id, t.name FROM players p JOIN teams t ON t.id = p.team_id")).all()
        )
    assert linked == team_of
    assert columns(db, "players")["team_id"] is False
    run = Store(db.engine).latest_run("players_team_id")
    assert run is not None and run.status is RunStatus.FINISHED
    assert {b.worker.split(":")[1] for b in Store(db.engine).batches_of(run.id) if b.worker}  # workers ran it


def test_a_rate_cap_holds_for_every_worker_together(db: Database, cluster: Cluster) -> None:
    counters.fill(db.engine, items, list(range(1, 3601)))
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    cluster.start_scheduler()
    started = time.monotonic()
    result = db.cli("start", "counter_int", "--parallelism", "4", "--max-rows-per-second", "300")
    assert result.returncode == 0, result.stderr
    run = assert_clean_finish(db, "counter_int", 3600)
    # Four chains on two hosts share one schedule in the database: 3600 rows at 300 rows/s.
    assert time.monotonic() - started >= (3600 - 150) / 300
    assert rows_in_windows(db, run.id, 10.0) <= 300 * 10 * 1.1


def test_operators_retrying_splitting_and_tuning_at_once_while_workers_run(db: Database, cluster: Cluster) -> None:
    """Non-idempotent work, batches failing on bad rows, two operators doing the same things at
    the same moments: once the data is fixed the run finishes and every row counted once."""
    counters.fill(db.engine, items, list(range(1, 2001)))
    poison(db, *range(7, 2001, 97))
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    cluster.start_scheduler()
    assert db.cli("start", "poisoned", "--parallelism", "4", "--batch-size", "40").returncode == 0
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def operator(rounds: int) -> None:
        app = db.app()
        try:
            for i in range(rounds):
                barrier.wait(timeout=60)
                action = ("retry", "split", "tune")[i % 3]
                try:
                    if action == "tune":
                        app.tune("poisoned", parallelism=2 + i % 3, batch_size=20 + i)
                    else:
                        app.retry("poisoned", split=action == "split")
                except RunStateError:
                    pass  # nothing to retry just now, or the other operator got there first
                time.sleep(0.3)
        except BaseException as exc:
            errors.append(exc)

    operators = [threading.Thread(target=operator, args=(12,)) for _ in range(2)]
    for thread in operators:
        thread.start()
    for thread in operators:
        thread.join(120)
    assert not errors, errors
    poison(db)  # the data is fixed
    app = db.app()
    deadline = time.monotonic() + 120
    while True:
        run = app.store.latest_run("poisoned")
        assert run is not None
        if run.status is RunStatus.FINISHED or time.monotonic() > deadline:
            break
        if run.batches_failed or run.status is RunStatus.FAILED:
            with contextlib.suppress(RunStateError):
                app.retry("poisoned")
        time.sleep(0.5)
    assert run.status is RunStatus.FINISHED, run.last_error
    assert counter_histogram(db, items) == {1: 2000}
    batches = app.store.batches_of(run.id)
    assert run.rows_done == sum(b.rows for b in batches if b.status is BatchStatus.SUCCEEDED)
    assert run.batches_failed == 0 == sum(b.status is BatchStatus.FAILED for b in batches)


def test_a_throttle_stops_every_workers_next_claim_messages_sent_before_it_too(db: Database, cluster: Cluster) -> None:
    from tests.test_holds import claimed_after, event_time, held

    counters.fill(db.engine, items, list(range(1, 8001)))
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    cluster.start_scheduler()
    assert db.cli("start", "counter_slow", "--parallelism", "4").returncode == 0
    run = wait_for_run(db, "counter_slow", until="8")
    assert db.cli("throttle", "counter_slow", "--for", "1h", "--reason", "month-end close").returncode == 0
    at = event_time(db, run.id, "throttled")
    held(db, "counter_slow", "month-end close")
    time.sleep(2.0)  # four chains, messages already in the queue, ticks every 0.5 s
    assert claimed_after(db, run.id, at) == 0
    assert db.cli("throttle", "counter_slow", "--off").returncode == 0
    assert_clean_finish(db, "counter_slow", 8000)
