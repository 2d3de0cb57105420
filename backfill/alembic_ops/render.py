"""What the operations write into a SQL script (``alembic upgrade --sql``), and the DDL
SQLAlchemy has no construct for."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    String,
    cast,
    exists,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql.compiler import DDLCompiler, IdentifierPreparer

from backfill.alembic_ops.context import MIGRATION_ACTOR
from backfill.definition import Backfill, Tuning
from backfill.status import RunStatus
from backfill.store import statements


def _sql_utcnow(dialect: str) -> ColumnElement[datetime]:
    """The current UTC time as the store keeps it (naive), read when the script runs."""
    if dialect == "postgresql":
        return literal_column("(now() AT TIME ZONE 'UTC')")
    if dialect in ("mysql", "mariadb"):
        return func.utc_timestamp()
    return func.current_timestamp()


def offline_queue_statement(
    definition: Backfill, tuning: Tuning, dialect: str, arguments: Mapping[str, Any] | None = None
) -> Any:
    """The run row of ``Store.create_run``, as one guarded INSERT for a SQL script."""
    return statements.queue_run(
        definition, tuning, _sql_utcnow(dialect), lambda c, v: _literal(c, v, dialect), arguments, MIGRATION_ACTOR
    )


def _literal(target: Column[Any], value: Any, dialect: str) -> ColumnElement[Any]:
    """A value for a SQL script. JSON has no literal form in SQLAlchemy: it goes as its text,
    cast on PostgreSQL (text does not turn into json by itself in INSERT ... SELECT); SQLite
    and MySQL take the text as it is."""
    if isinstance(value, ColumnElement):
        return value
    if isinstance(target.type, JSON):
        encoded = literal(json.dumps(value), String())
        return cast(encoded, JSON()) if dialect == "postgresql" else encoded
    return literal(value, target.type)


class RequireFinished(ExecutableDDLElement):
    """PostgreSQL: abort the script unless the backfill's latest run is finished."""

    def __init__(self, name: str) -> None:
        self.name = name


@compiles(RequireFinished)
def _render_require_finished(element: RequireFinished, compiler: DDLCompiler, **kw: Any) -> str:
    latest = statements.latest_status(element.name)
    finished = select(literal(1)).where(latest.scalar_subquery() == RunStatus.FINISHED.value)
    condition = compiler.sql_compiler.process(exists(finished), literal_binds=True)
    message = compiler.sql_compiler.render_literal_value(
        f"backfill {element.name} is not finished: `backfill run {element.name}` "
        f"(see `backfill status {element.name}`), then run this script again",
        String(),
    )
    return f"DO $$\nBEGIN\n  IF NOT {condition} THEN\n    RAISE EXCEPTION {message};\n  END IF;\nEND\n$$"


class OnlineAlter(ExecutableDDLElement):
    """An ``ALTER TABLE`` that must run in place without blocking DML, or not at all."""

    def __init__(self, alter: ExecutableDDLElement) -> None:
        self.alter = alter


@compiles(OnlineAlter)
def _render_online_alter(element: OnlineAlter, compiler: DDLCompiler, **kw: Any) -> str:
    return f"{compiler.process(element.alter, **kw)}, ALGORITHM=INPLACE, LOCK=NONE"


class ValidateConstraint(ExecutableDDLElement):
    def __init__(self, table_name: str, name: str, schema: str | None) -> None:
        self.table_name = table_name
        self.name = name
        self.schema = schema


def qualified(preparer: IdentifierPreparer, table_name: str, schema: str | None) -> str:
    quoted = preparer.quote(table_name)
    return f"{preparer.quote_schema(schema)}.{quoted}" if schema else quoted


@compiles(ValidateConstraint)
def _render_validate(element: ValidateConstraint, compiler: DDLCompiler, **kw: Any) -> str:
    return (
        f"ALTER TABLE {qualified(compiler.preparer, element.table_name, element.schema)} "
        f"VALIDATE CONSTRAINT {compiler.preparer.quote(element.name)}"
    )
