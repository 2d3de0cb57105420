"""The impact budget on real servers: the run measures the application alone, works beside it
within the budget, and backs off when the application waits on its locks — each decision said
on the run, in ``status`` and its JSON — and still processes every row exactly once."""

from __future__ import annotations

import itertools
import json
import random
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update

from backfill import Backfill, RunStatus, Tuning, impact
from backfill.store import Run
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import Database
from tests.helpers import wait_for
from tests.test_engine import counter_histogram


def lingering(batch_size: int = 100, seconds: float = 0.1) -> Backfill:
    """Batches that keep their rows locked a while: the application's writers run into them."""

    def work(connection: Any, batch: Any) -> int:
        rows = connection.execute(
            update(items).where(batch.where(items.c.id)).values(counter=items.c.counter + 1)
        ).rowcount
        time.sleep(seconds)
        return int(rows)

    return Backfill(
        name="lingering", table="items", key="id", work=work,
        tuning=Tuning(batch_size=batch_size, target_batch_seconds=0, impact_budget=0.1),
    )  # fmt: skip


@contextmanager
def application(db: Database, rows: int, writers: int = 3) -> Iterator[list[int]]:
    """The application: writers updating random rows of ``items`` one at a time, each in a
    transaction of its own, until the block ends; yields the count of writes done."""
    engine = create_engine(db.url, isolation_level="AUTOCOMMIT")  # not named after backfill
    stop = threading.Event()
    done = [0]

    def write() -> None:
        rng = random.Random()
        with engine.connect() as connection:
            while not stop.is_set():
                connection.execute(text("UPDATE items SET done = done WHERE id = :id"), {"id": rng.randint(1, rows)})
                done[0] += 1

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    try:
        yield done
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        engine.dispose()


def _gaps(times: list[Any]) -> list[float]:
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]


def run_in_background(db: Database, definition: Backfill) -> tuple[threading.Thread, list[Run]]:
    result: list[Run] = []
    thread = threading.Thread(target=lambda: result.append(db.app(definition).run(definition.name)))
    thread.start()
    return thread, result


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_the_run_backs_off_when_the_application_waits_on_its_locks(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 6001)))  # batches left after the tune, on a busy machine
    definition = lingering()
    with application(db, 6000) as writes:
        thread, result = run_in_background(db, definition)
        rested = wait_for(
            lambda: (r := db.app(definition).store.latest_run("lingering")) and r.held_reason == impact.RESTING and r,
            what="the run measuring the application alone",
        )
        assert rested.batches_done == 0  # it measured first, before its first batch
        backed = wait_for(
            lambda: (
                (r := db.app(definition).store.latest_run("lingering"))
                and "waited on the run's locks" in (r.impact_note or "")
                and r
            ),
            timeout=60,
            what="the run backing off",
        )
        assert backed.impact_note is not None and backed.impact_note.startswith("backing off: ")
        assert backed.pace is not None and backed.pace < impact.FIRST_PACE
        shown = json.loads(db.cli("status", "--json", app=None).stdout)[0]
        assert shown["impact"]["budget"] == 0.1 and shown["impact"]["pace"] < impact.FIRST_PACE
        assert shown["impact"]["decision"]
        assert "impact budget 10%: pace" in db.cli("status", "lingering", app=None).stdout
        assert writes[0] > 0
        store = db.app(definition).store
        with store.connect() as connection:
            tuned_at = connection.execute(select(store.now())).scalar_one()
        tuned = db.app(definition).tune("lingering", impact_budget=0)  # off: full speed at once
        assert tuned.tuning.impact_budget == 0
    thread.join(180)
    # Paced, a batch of 0.1 s is followed by a rest at least as long; unpaced, by none: the
    # batches after the tune finish at least a third closer together than those before it.
    finished = sorted(b.finished_at for b in store.batches_of(backed.id) if b.finished_at)
    before = _gaps([t for t in finished if t < tuned_at])[-12:]
    after = _gaps([t for t in finished if t >= tuned_at])
    assert len(after) >= 3, f"only {len(after)} batches after the tune"
    assert statistics.median(after) < statistics.median(before) * 2 / 3, (before, after)
    assert result and result[0].status is RunStatus.FINISHED, result
    assert counter_histogram(db, items) == {1: 6000}
    with db.engine.connect() as connection:
        noted = connection.execute(text("SELECT note FROM backfill_events WHERE note LIKE 'backing off:%'")).all()
    assert noted  # every change of heart is kept in the run's history


@pytest.mark.parametrize("db", ["mariadb"], indirect=True)
def test_mariadb_measures_the_application_by_its_commits(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 1001)))
    definition = lingering(batch_size=50, seconds=0.02)
    with application(db, 1000, writers=2):
        thread, result = run_in_background(db, definition)
        measured = wait_for(
            lambda: (
                (r := db.app(definition).store.latest_run("lingering"))
                and (r.impact_note or "").startswith("the application alone: ")
                and r
            ),
            timeout=30,
            what="the application measured alone",
        )
        assert "commits/s" in (measured.impact_note or "")
    thread.join(180)
    assert result and result[0].status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 1000}


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_sqlite_says_it_has_no_impact_budget(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 101)))
    definition = lingering(batch_size=50, seconds=0.0)
    run = db.app(definition).run("lingering")
    assert run.status is RunStatus.FINISHED and counter_histogram(db, items) == {1: 100}
    assert run.impact_note == "the impact budget needs PostgreSQL or MySQL/MariaDB: not applied"
