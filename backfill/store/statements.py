"""Checkpoint statements a migration carries as they are — run on its own connection, or written
into a SQL script by ``alembic upgrade --sql`` — built here, beside the store that makes the
same writes online, so the two never disagree on a guard."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Column, ColumnElement, Delete, Insert, Select, exists, insert, or_, select

from backfill import tables
from backfill.definition import Backfill, Tuning
from backfill.status import RunStatus
from backfill.store.records import new_run_values

Literal = Callable[[Column[Any], Any], ColumnElement[Any]]


def queue_run(
    definition: Backfill,
    tuning: Tuning,
    now: ColumnElement[Any],
    literal: Literal,
    arguments: Mapping[str, Any] | None = None,
    started_by: str | None = None,
) -> Insert:
    """The run row of ``Store.create_run`` as one INSERT, guarded as ``queue_backfill`` is:
    nothing when the backfill has an active or a finished run (a script cannot compare the
    parameters of the finished one: PostgreSQL's ``json`` has no equality)."""
    runs = tables.runs
    values = new_run_values(definition, tuning, now, started_by, arguments)
    row = [literal(runs.c[name], value).label(name) for name, value in values.items()]
    taken = exists().where(
        runs.c.name == definition.name,
        or_(runs.c.active_name.is_not(None), runs.c.status == RunStatus.FINISHED.value),
    )
    return insert(runs).from_select(list(values), select(*row).where(~taken))


def forget_runs(name: str) -> list[Delete]:
    """Every run of a backfill, with its batches (its events go with the runs)."""
    runs, batches = tables.runs, tables.batches
    of_name = select(runs.c.id).where(runs.c.name == name).scalar_subquery()
    return [batches.delete().where(batches.c.run_id.in_(of_name)), runs.delete().where(runs.c.name == name)]


def latest_status(name: str) -> Select[Any]:
    runs = tables.runs
    return select(runs.c.status).where(runs.c.name == name).order_by(runs.c.id.desc()).limit(1)
