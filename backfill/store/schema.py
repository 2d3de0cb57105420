"""Creating the checkpoint tables all or nothing, and never over a table that is not ours.

PostgreSQL and SQLite create them in one transaction. MySQL and MariaDB commit each CREATE on
its own, so there the tables are created one by one and, if any step fails (a role with CREATE
but not INDEX, a full disk), the ones this call created are dropped again: a failure leaves the
database as it found it, and the next ``init-db`` starts clean.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import Connection, Engine, Table, inspect
from sqlalchemy.exc import DBAPIError

from backfill import tables
from backfill.errors import ConfigurationError, StoreMissingError


def create_checkpoint_tables(bind: Engine | Connection) -> None:
    if isinstance(bind, Connection):  # a migration's: its transaction decides
        _refuse_foreign_tables(bind)
        tables.metadata.create_all(bind)
        return
    with bind.begin() as connection:
        _refuse_foreign_tables(connection)
        if connection.dialect.name not in ("mysql", "mariadb"):
            tables.metadata.create_all(connection)
            return
        missing = [t for t in tables.metadata.sorted_tables if not inspect(connection).has_table(t.name, t.schema)]
    created: list[Table] = []
    try:
        for table in missing:
            with bind.begin() as connection:
                created.append(table)
                table.create(connection)
    except BaseException:
        with contextlib.suppress(DBAPIError), bind.begin() as connection:  # the first error is the one to tell
            for table in reversed(created):
                table.drop(connection, checkfirst=True)
        raise


def check_checkpoint_tables(bind: Engine | Connection) -> None:
    """The checkpoint tables exist and are ours, or the error that says what to do."""
    _refuse_foreign_tables(bind)
    inspector = inspect(bind)
    if not all(inspector.has_table(t.name, t.schema) for t in tables.metadata.sorted_tables):
        raise StoreMissingError(
            "the checkpoint tables (backfill_runs, backfill_batches, backfill_events) do not exist in this "
            "database: run `backfill init-db`, or op.create_backfill_tables() in a migration"
        )


def _refuse_foreign_tables(bind: Engine | Connection) -> None:
    """A table of one of our names that lacks our columns belongs to someone else: writing
    checkpoints beside its rows, or reporting it "ready", would be wrong either way."""
    inspector = inspect(bind)
    for table in tables.metadata.sorted_tables:
        if not inspector.has_table(table.name, table.schema):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name, table.schema)}
        lacking = [c.name for c in table.columns if c.name not in present]
        if lacking:
            raise ConfigurationError(
                f"a table named '{table.name}' exists but is not one of backfill's checkpoint tables "
                f"(it has no {', '.join(lacking[:3])}{', ...' if len(lacking) > 3 else ''}): rename or drop it, "
                "or give backfill a database or schema of its own"
            )
