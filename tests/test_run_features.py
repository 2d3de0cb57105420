"""Run-level features: a backfill that runs after others, a post-condition checked before a run
may finish, application code that waits for a backfill's data, and run parameters."""

from __future__ import annotations

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.util import CommandError

import backfill.alembic_ops  # noqa: F401  (registers op.queue_backfill)
from backfill import Backfill, BackfillNotFinished, Registry, RunStatus, require_finished
from backfill.errors import AppError, DefinitionError, RunStateError
from backfill.planner import Planner
from backfill.progress import measure
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


def test_run_parameters_are_checked_stored_and_bound_in_the_sql(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, ROWS + 1)))
    app = db.app(counters.counter_from)
    mistakes = [
        ({}, "needs parameter low: int: give it with --param low=VALUE"),
        ({"low": "fifty"}, "parameter 'low' must be integer \\(for example low=42\\), got 'fifty'"),
        ({"low": "1", "lo": "2"}, "has no parameter lo \\(its parameters: low: int, step: int = 1\\)"),
        ({"low": str(2**63)}, "parameter 'low' must be integer"),
        ({"low": 1.5}, "parameter 'low' must be integer"),
        ({"low": True}, "parameter 'low' must be integer"),
    ]
    for given, message in mistakes:
        with pytest.raises(DefinitionError, match=message):
            app.start("counter_from", params=given)
    assert app.store.latest_run("counter_from") is None  # refused before anything was recorded

    started = app.start("counter_from", params={"low": " 50 "}, started_by="test")
    assert started.params == {"low": 50, "step": 1}
    with pytest.raises(RunStateError, match="with other parameters \\(low=50, step=1\\)"):
        app.run("counter_from", params={"low": "60"})
    final = app.run("counter_from")  # continues the run with the values it was started with
    assert final.status is RunStatus.FINISHED and final.params == {"low": 50, "step": 1}
    assert counter_histogram(db, items) == {0: 49, 1: ROWS - 49}
    assert measure(app.store, final).to_json()["params"] == {"low": 50, "step": 1}

    again = app.run("counter_from", params={"low": 10, "step": 5})  # a new run, its own values
    assert again.id != final.id and again.status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {0: 9, 5: 40, 1: ROWS - 49}


def test_a_migration_queues_a_run_with_parameters(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    counters.fill(db.engine, items, list(range(1, ROWS + 1)))
    app = db.app(counters.counter_from)
    monkeypatch.setenv("BACKFILL_APP", "tests.apps.counters")
    with db.engine.connect() as connection:
        op = Operations(MigrationContext.configure(connection))
        with connection.begin():
            with pytest.raises(CommandError, match="needs parameter low"):
                op.queue_backfill("counter_from")
            op.queue_backfill("counter_from", params={"low": 100, "step": 3})
    queued = app.store.active_run("counter_from")
    assert queued is not None and queued.params == {"low": 100, "step": 3} and queued.started_by == "migration"
    assert app.run("counter_from").status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {0: 99, 3: ROWS - 99}


def test_a_run_recorded_before_its_definition_gained_a_parameter_stops_instead_of_binding_null(
    db: Database,
) -> None:
    counters.fill(db.engine, items, list(range(1, ROWS + 1)))
    before = Backfill(name="by_low", table="items", key="id", work=BUMP)
    run = db.app(before).start("by_low")
    after = Backfill(name="by_low", table="items", key="id", work=f"{BUMP} AND id >= :low", params={"low": int})
    final = db.app(after).run("by_low")
    assert final.id == run.id and final.status is RunStatus.FAILED
    assert final.last_error is not None and "has no value for parameter low: int" in final.last_error
    assert "`backfill cancel by_low`, then start it again" in final.last_error
    assert counter_histogram(db, items) == {0: ROWS}
