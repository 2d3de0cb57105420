"""Fast and gentle: the batch size adapts to a target duration, a batch that overruns its
statement timeout is split, and a run is held by a rate cap or an unhealthy database and
carries on by itself."""

from __future__ import annotations

import json
import statistics
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import ColumnElement, DateTime, Engine, bindparam, cast, event, text, update

from backfill import BatchStatus, RunStatus
from backfill.database import make_engine
from backfill.planner import Planner
from backfill.store import Refusal, Refused, Run, Store
from backfill.tables import runs
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import Database
from tests.helpers import wait_for
from tests.test_engine import counter_histogram


def held_notes(db: Database) -> list[str]:
    with db.engine.connect() as connection:
        return [r[0] for r in connection.execute(text("SELECT note FROM backfill_events WHERE note LIKE 'held:%'"))]


def test_the_batch_size_adapts_to_the_target_duration(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 4001)))
    run = db.app().run("counter_adaptive")
    assert run.status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 4000}
    sizes = [b.rows for b in db.app().store.batches_of(run.id)]
    assert sizes[0] == 10
    # 0.5 ms a row and a 0.05 s target: it settles near 100 rows a batch.
    settled = statistics.median(sizes[-10:])
    assert 50 <= settled <= 200, sizes
    assert 40 <= run.tuning.batch_size <= 250  # the last step, from the last few batches alone


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_batch_over_its_statement_timeout_is_split(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 601)))
    run = db.app().run("counter_timeout")
    assert run.status is RunStatus.FINISHED, run.last_error
    assert counter_histogram(db, items) == {1: 600}
    store = db.app().store
    split = store.batches_of(run.id, BatchStatus.SPLIT)
    assert split and all("statement timeout" in (b.error or "") for b in split)
    assert not store.batches_of(run.id, BatchStatus.FAILED)
    assert run.tuning.batch_size <= 100  # later batches were planned smaller
    assert max(b.rows for b in store.batches_of(run.id, BatchStatus.SUCCEEDED)) <= 100


def rows_in_windows(db: Database, run_id: int, seconds: float) -> int:
    """The most rows that succeeded within any ``seconds`` of the run (by the database's clock)."""
    done = sorted((b.finished_at, b.rows) for b in db.app().store.batches_of(run_id, BatchStatus.SUCCEEDED))
    return max(
        sum(rows for at, rows in done[i:] if (at - start).total_seconds() <= seconds)
        for i, (start, _) in enumerate(done)
    )


@pytest.mark.parametrize("db", ["sqlite", "mariadb"], indirect=True)  # PostgreSQL: over ten seconds, below
def test_a_rate_cap(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 1001)))
    started = time.monotonic()
    run = db.app().run("counter_int", max_rows_per_second=250)
    elapsed = time.monotonic() - started
    assert run.status is RunStatus.FINISHED and counter_histogram(db, items) == {1: 1000}
    # Batches of at most half a second's worth of rows, each starting when the cap allows:
    # the first at once, the last after 1000 - 125 rows' worth of time.
    assert elapsed >= 3.4, elapsed
    assert max(b.rows for b in db.app().store.batches_of(run.id)) <= 125
    assert rows_in_windows(db, run.id, 2.0) <= 250 * 2 * 1.1


def test_a_pause_and_a_nice_ratio_between_batches(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 501)))
    started = time.monotonic()
    run = db.app().run("counter_int", pause_seconds=0.1)
    assert time.monotonic() - started >= 1.0  # 10 batches, 0.1 s apart
    assert run.status is RunStatus.FINISHED and counter_histogram(db, items) == {1: 500}


def run_in_background(db: Database, name: str, **overrides: Any) -> tuple[threading.Thread, list[Run]]:
    result: list[Run] = []
    thread = threading.Thread(target=lambda: result.append(db.app().run(name, **overrides)))
    thread.start()
    return thread, result


def test_an_application_health_check_holds_the_run(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 301)))
    with db.engine.begin() as connection:
        connection.execute(counters.maintenance.insert().values(reason="nightly reindex"))
    thread, result = run_in_background(db, "counter_polite")
    store = db.app().store
    wait_for(lambda: (r := store.latest_run("counter_polite")) is not None and r.held_reason is not None)
    run = store.latest_run("counter_polite")
    assert run is not None and "nightly reindex" in (run.held_reason or "")
    assert run.status is RunStatus.RUNNING and run.batches_done == 0
    data = db.cli("status", "counter_polite", "--json")
    assert "nightly reindex" in data.stdout

    with db.engine.begin() as connection:
        connection.execute(counters.maintenance.delete())
    thread.join(60)
    assert result and result[0].status is RunStatus.FINISHED and result[0].held_reason is None
    assert counter_histogram(db, items) == {1: 300}


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_an_old_transaction_holds_the_run(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 301)))
    old = db.engine.connect()
    old.begin()
    old.execute(text("SELECT count(*) FROM items"))
    time.sleep(2.2)  # MySQL counts a transaction's age in whole seconds
    try:
        thread, result = run_in_background(db, "counter_int", max_transaction_age=1)
        store = db.app().store
        wait_for(lambda: (r := store.latest_run("counter_int")) is not None and r.held_reason is not None)
        run = store.latest_run("counter_int")
        assert run is not None and "a transaction has been open" in (run.held_reason or "")
    finally:
        old.rollback()
        old.close()
    thread.join(60)
    assert result and result[0].status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 300}


def test_a_rate_cap_holds_over_every_ten_seconds(db: Database) -> None:
    """Four chains at once: a claim the cap refused must never pass for one it allowed (on
    MariaDB the refused claim's transaction read the schedule as it was before the claim that
    took the slot, and ran 2x over the cap)."""
    counters.fill(db.engine, items, list(range(1, 3601)))
    started = time.monotonic()
    run = db.app().run("counter_int", max_rows_per_second=300, parallelism=4)
    assert run.status is RunStatus.FINISHED and counter_histogram(db, items) == {1: 3600}
    assert time.monotonic() - started >= (3600 - 150) / 300
    assert rows_in_windows(db, run.id, 10.0) <= 300 * 10 * 1.1


class SteppingTime:
    """The database's clock as a test drives it: a statement that read it leaves it one step
    later for the next (a statement takes time)."""

    def __init__(self, engine: Engine, start: datetime, step: timedelta) -> None:
        self.at, self.step, self.read = start, step, False
        self.cast = engine.dialect.name in ("mysql", "mariadb")
        event.listen(engine, "before_cursor_execute", self._executed)

    def now(self) -> ColumnElement[datetime]:
        now = bindparam(None, callable_=self._now, type_=DateTime())
        # Cast on MySQL, which hands a parameter back as the text it was sent as.
        return cast(now, DateTime()) if self.cast else now

    def _now(self) -> datetime:
        self.read = True
        return self.at

    def _executed(self, *args: Any) -> None:
        if self.read:
            self.at, self.read = self.at + self.step, False


def test_a_claim_the_rate_cap_refused_never_reads_as_taken_once_its_slot_comes_due(db: Database) -> None:
    """The slot is refused at one moment and, a statement later, the schedule says it is due:
    the claim is still refused (it is tried again), or two claims would share one slot."""
    counters.fill(db.engine, items, list(range(1, 201)))
    app = db.app()
    run = app.start("counter_int", max_rows_per_second=100)
    run = Planner(app.store, app.targets).tick(run).run
    start = datetime(2030, 1, 1)
    with db.engine.begin() as connection:
        connection.execute(update(runs).where(runs.c.id == run.id).values(rate_next_at=start + timedelta(seconds=1.5)))
    engine = make_engine(db.url)  # its own, for the stepping clock's listener
    store = Store(engine, time=SteppingTime(engine, start, timedelta(seconds=1)))
    claimed = store.claim(run, None, "w1", 30.0)
    engine.dispose()
    assert isinstance(claimed, Refused) and claimed.reason is Refusal.RATE and claimed.retry_after > 0, claimed
    assert not app.store.batches_of(run.id, BatchStatus.RUNNING)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # what status computes is the same on every database
def test_status_shows_the_batch_size_batches_have_and_the_batches_running(db: Database) -> None:
    """Under a rate cap batches hold half a second of the cap's rows, whatever the batch size
    setting: status says the size they have (and the setting apart); "running" counts the
    batches being worked on, at most the parallelism, not the batches planned ahead."""
    counters.fill(db.engine, items, list(range(1, 1201)))
    thread, result = run_in_background(db, "counter_int", batch_size=1000, max_rows_per_second=300, parallelism=2)
    try:
        seen: list[dict[str, Any]] = []

        def looked() -> bool:
            data = json.loads(db.cli("status", "counter_int", "--json").stdout)
            seen.append(data)
            return data["batches_pending"] > data["parallelism"]

        wait_for(looked, what="batches planned ahead of the running ones")
        data = seen[-1]
        assert data["batch_size"] == 150 and data["batch_size_setting"] == 1000, data
        assert data["batches_in_flight"] == data["batches_running"] <= 2, data
        row = next(line for line in db.cli("status").stdout.splitlines() if line.startswith("counter_int"))
        assert " 150 " in row and " 1000 " not in row, row
    finally:
        thread.join(60)
    assert result and result[0].status is RunStatus.FINISHED
    assert {b.rows for b in db.app().store.batches_of(result[0].id)} == {150}
