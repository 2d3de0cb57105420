"""Creating the checkpoint tables all or nothing, and never over a table that is not ours.

PostgreSQL and SQLite create them in one transaction. MySQL and MariaDB commit each CREATE on
its own, so there the tables are created one by one and, if any step fails (a role with CREATE
but not INDEX, a full disk), the ones this call created are dropped again: a failure leaves the
database as it found it, and the next ``init-db`` starts clean.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import Column, Connection, Engine, Inspector, Table, false, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable

from backfill import tables
from backfill.database import reading, schema_of
from backfill.errors import ConfigurationError, StoreMissingError


def create_checkpoint_tables(bind: Engine | Connection) -> None:
    if isinstance(bind, Connection):  # a migration's: its transaction decides
        _refuse_foreign_tables(inspect(bind))
        tables.metadata.create_all(bind)
        _add_missing_columns(bind)
        return
    with bind.begin() as connection:
        _refuse_foreign_tables(inspect(connection))
        _add_missing_columns(connection)
        if connection.dialect.name not in ("mysql", "mariadb"):
            tables.metadata.create_all(connection)
            return
        missing = [
            t
            for t in tables.metadata.sorted_tables
            if not inspect(connection).has_table(t.name, schema_of(connection, t))
        ]
    created: list[Table] = []
    try:
        for table in missing:
            with bind.begin() as connection:
                created.append(table)
                connection.exec_driver_sql(_create_with_its_indexes(connection, table))
    except BaseException:
        with contextlib.suppress(DBAPIError), bind.begin() as connection:  # the first error is the one to tell
            for table in reversed(created):
                table.drop(connection, checkfirst=True)
        raise


def _create_with_its_indexes(connection: Connection, table: Table) -> str:
    """MySQL's CREATE TABLE with the table's indexes inside it: one statement, whole or not at
    all, that needs the CREATE privilege only (a separate CREATE INDEX needs INDEX too, and a
    role without it would be left with a table it may not be able to DROP)."""
    created = str(CreateTable(table).compile(dialect=connection.dialect)).rstrip()
    quote = connection.dialect.identifier_preparer.quote
    indexes = [
        f"INDEX {quote(str(index.name))} ({', '.join(quote(column.name) for column in index.columns)})"
        for index in sorted(table.indexes, key=lambda index: str(index.name))
    ]
    end = created.rindex("\n)")  # the column list's closing parenthesis; table options follow it
    return created[:end] + "".join(f", \n\t{index}" for index in indexes) + created[end:]


def check_checkpoint_tables(bind: Engine | Connection) -> None:
    """The checkpoint tables exist, are ours and are up to date, or the error that says what to do.
    (One inspector for all three looks: it keeps what it read, and every command starts here.)"""
    if isinstance(bind, Engine) and _every_column_answers(bind):
        return
    inspector = inspect(bind)
    _refuse_foreign_tables(inspector)
    if not all(inspector.has_table(t.name, schema_of(inspector.bind, t)) for t in tables.metadata.sorted_tables):
        raise StoreMissingError(
            "the checkpoint tables (backfill_runs, backfill_batches, backfill_events) do not exist in this "
            "database: run `backfill init-db`, or op.create_backfill_tables() in a migration"
        )
    missing = _missing_columns(inspector)
    if missing:
        lacks = "; ".join(f"{table.name} lacks {', '.join(c.name for c in columns)}" for table, columns in missing)
        raise StoreMissingError(
            f"the checkpoint tables were created by an older backfill ({lacks}): run `backfill init-db` to add "
            "what is missing (nothing else changes)"
        )


def _every_column_answers(engine: Engine) -> bool:
    """Whether a query of every column of the three tables, for no rows, runs: the usual answer,
    found in a round trip a table, where the inspector's catalog queries cost a command's start
    tens of milliseconds on PostgreSQL. Anything else goes to the inspector, to say what is wrong."""
    try:
        with reading(engine) as connection:
            for table in tables.metadata.sorted_tables:
                connection.execute(select(*table.c).where(false()))
    except DBAPIError:
        return False
    return True


ADDED_LATER = {
    "backfill_runs": (
        "started_by", "params", "max_load", "critical_load", "hold_during_vacuum", "impact_budget",
        "throttled_until", "throttle_reason", "throttle_query", "pace", "impact_note", "impact_state",
    ),
    "backfill_events": ("note",),
}  # fmt: skip
"""Columns newer than the first release of the checkpoint tables: nullable, so that ``init-db``
adds them to an existing installation in place. A table lacking any other column is not ours."""


def _missing_columns(inspector: Inspector) -> list[tuple[Table, list[Column[Any]]]]:
    found = []
    for table in tables.metadata.sorted_tables:
        schema = schema_of(inspector.bind, table)
        if not inspector.has_table(table.name, schema):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name, schema)}
        lacking = [c for c in table.columns if c.name not in present]
        if lacking:
            found.append((table, lacking))
    return found


def _add_missing_columns(connection: Connection) -> None:
    """Bring tables of an older backfill up to date, with Alembic's own ADD COLUMN."""
    missing = _missing_columns(inspect(connection))
    if not missing:
        return
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    operations = Operations(MigrationContext.configure(connection))
    for table, columns in missing:
        for column in columns:
            operations.add_column(table.name, column.copy(), schema=schema_of(connection, table))


def _refuse_foreign_tables(inspector: Inspector) -> None:
    """A table of one of our names that lacks our columns belongs to someone else: writing
    checkpoints beside its rows, or reporting it "ready", would be wrong either way."""
    for table, missing in _missing_columns(inspector):
        later = ADDED_LATER.get(table.name, ())
        lacking = [c.name for c in missing if c.name not in later]
        if lacking:
            raise ConfigurationError(
                f"a table named '{table.name}' exists but is not one of backfill's checkpoint tables "
                f"(it has no {', '.join(lacking[:3])}{', ...' if len(lacking) > 3 else ''}): rename or drop it, "
                "or give backfill a database or schema of its own"
            )
