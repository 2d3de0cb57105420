"""Run-level features: a backfill that runs after others, a post-condition checked before a run
may finish, and application code that waits for a backfill's data."""

from __future__ import annotations

import pytest

from backfill import Backfill, BackfillNotFinished, Registry, RunStatus, require_finished
from backfill.errors import AppError, RunStateError
from backfill.planner import Planner
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import Database
from tests.test_engine import counter_histogram

ROWS = 120
BUMP = "UPDATE items SET counter = counter + 1 WHERE id BETWEEN :first AND :last"

first = Backfill(name="first", table="items", key="id", work=BUMP, exclusive=False)
second = Backfill(name="second", table="items", key="id", work=BUMP, exclusive=False, after="first")


def test_a_backfill_waits_for_the_ones_it_runs_after(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, ROWS + 1)))
    app = db.app(first, second)
    with pytest.raises(RunStateError, match="waiting for backfill 'first' to finish \\(it has never run\\)"):
        app.run("second")
    assert app.store.latest_run("second") is None  # refused before anything was recorded

    queued = app.start("second")  # for the workers: recorded, and held until 'first' is finished
    held = Planner(app.store, app.targets).tick(queued).run
    assert held.held_reason is not None and "waiting for backfill 'first'" in held.held_reason
    assert counter_histogram(db, items) == {0: ROWS}

    assert app.run("first").status is RunStatus.FINISHED
    assert app.run("second").status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {2: ROWS}  # each row once by each


def test_unknown_or_circular_dependencies_are_refused_when_definitions_load() -> None:
    with pytest.raises(AppError, match="'second' runs after 'first', which the app does not define"):
        Registry.of(second)
    a = Backfill(name="a", table="items", key="id", work=BUMP, after="c")
    b = Backfill(name="b", table="items", key="id", work=BUMP, after="a")
    c = Backfill(name="c", table="items", key="id", work=BUMP, after=("b",))
    with pytest.raises(AppError, match="in a cycle: a -> c -> b -> a"):
        Registry.of(a, b, c)


def test_a_run_finishes_only_when_its_post_condition_holds(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, ROWS + 1)))
    odd_only = Backfill(
        name="odd_only",
        table="items",
        key="id",
        work="UPDATE items SET counter = 1 WHERE id BETWEEN :first AND :last AND id % 2 = 1",
        verify="SELECT count(*) FROM items WHERE counter = 0",
    )
    app = db.app(odd_only)
    run = app.run("odd_only")
    assert run.status is RunStatus.FAILED
    assert run.last_error is not None and f"verify found {ROWS // 2:,} row(s) still wrong" in run.last_error
    assert "SELECT count(*) FROM items WHERE counter = 0" in run.last_error
    assert "`backfill retry odd_only` checks again" in run.last_error

    with db.engine.begin() as connection:  # the operator fixes the data
        connection.execute(items.update().where(items.c.counter == 0).values(counter=1))
    app.retry("odd_only")
    assert app.run("odd_only").status is RunStatus.FINISHED


def test_application_code_waits_for_the_data(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, ROWS + 1)))
    app = db.app(first)
    with pytest.raises(BackfillNotFinished, match="backfill 'first' has never run: `backfill run first`"):
        require_finished("first", db.engine)
    app.start("first")
    with pytest.raises(BackfillNotFinished, match=r"run \d+ is running"):
        require_finished("first", db.engine)
    app.run("first")
    require_finished("first", db.engine)
    app.store.drop_tables()  # the answer is kept: no query once it is yes
    require_finished("first", db.engine)
