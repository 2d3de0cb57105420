"""NOT NULL on a column that may hold millions of rows, per dialect: refused while any row is
NULL, and otherwise done the way each database can do it without blocking writers for a scan."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from alembic.ddl.mysql import MySQLModifyColumn
from alembic.operations import Operations
from sqlalchemy import (
    Connection,
    column,
    func,
    inspect,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError, NoSuchTableError

from backfill.alembic_ops.context import dialect_name, logger, migration_definitions, offline
from backfill.alembic_ops.ops import (
    AddNotNullOp,
)
from backfill.alembic_ops.render import (
    OnlineAlter,
    ValidateConstraint,
)
from backfill.definition import Backfill
from backfill.errors import BackfillError, NullValuesError, OfflineModeError, TargetError
from backfill.failures import error_text


def reflect_column(connection: Connection, operation: AddNotNullOp, where: str) -> dict[str, Any]:
    try:
        columns = inspect(connection).get_columns(operation.table_name, schema=operation.schema)
    except NoSuchTableError:
        raise TargetError(f"op.add_not_null: table '{where}' does not exist: check the table name") from None
    for info in columns:
        if info["name"] == operation.column_name:
            return dict(info)
    raise TargetError(
        f"op.add_not_null: column '{operation.column_name}' does not exist in table '{where}' "
        f"(columns: {', '.join(c['name'] for c in columns)}): check the column name"
    )


def count_nulls(connection: Connection, operation: AddNotNullOp) -> int:
    target = table(operation.table_name, column(operation.column_name), schema=operation.schema)
    query = select(func.count()).select_from(target).where(target.c[operation.column_name].is_(None))
    return int(connection.execute(query).scalar_one())


def nulls_message(operations: Operations, operation: AddNotNullOp, where: str, nulls: int) -> str:
    problem = f"cannot make {where}.{operation.column_name} NOT NULL: {nulls:,} row(s) are NULL"
    fillers = backfills_filling(operations, operation)
    if not fillers:
        return f"{problem}; fill or delete them, then migrate again (nothing was changed)"
    name = fillers[0].name
    return (
        f"{problem}; backfill '{name}' fills that column: see `backfill status {name}`, finish it with "
        f"`backfill run {name}` (or op.ensure_backfill_finished('{name}') before this), then migrate again "
        "(nothing was changed)"
    )


def backfills_filling(operations: Operations, operation: AddNotNullOp) -> list[Backfill]:
    try:
        definitions = migration_definitions(operations)
    except BackfillError:
        return []  # naming the backfill is a courtesy: the count alone still says what is wrong
    return [
        d
        for d in definitions.values()
        if d.table == operation.table_name and d.schema == operation.schema and operation.column_name in d.columns
    ]


def alter_not_null(operations: Operations, operation: AddNotNullOp, existing: dict[str, Any]) -> None:
    operations.alter_column(
        operation.table_name, operation.column_name, nullable=False, schema=operation.schema, **existing
    )


_MYSQL_NULLS = {1138, 1263, 1265}
"""Invalid use of NULL / data truncated: a NULL reached the column while the table was rebuilt."""

_MYSQL_NOT_ONLINE = {1845, 1846}
"""LOCK=NONE / ALGORITHM=INPLACE not supported for this table or column."""


def not_null_mysql(operations: Operations, operation: AddNotNullOp, info: Mapping[str, Any], where: str) -> None:
    """MODIFY with the column's definition as reflected (MODIFY restates the whole column: a
    default or comment left out would be dropped), pinned to the in-place, non-locking
    algorithm."""
    default = info.get("default")
    if isinstance(default, str) and default.strip().upper() == "NULL":
        default = None
    modify = MySQLModifyColumn(
        operation.table_name,
        operation.column_name,
        schema=operation.schema,
        newname=operation.column_name,
        type_=operation.existing_type or info["type"],
        nullable=False,
        default=text(default) if isinstance(default, str) else False,
        autoincrement=bool(info.get("autoincrement")) or None,
        comment=info.get("comment"),
    )
    try:
        operations.execute(OnlineAlter(modify))
    except DBAPIError as exc:
        number = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
        reason = error_text(exc, 300).splitlines()[0]
        if number in _MYSQL_NULLS:
            raise NullValuesError(
                f"cannot make {where}.{operation.column_name} NOT NULL: {reason}; NULLs were written meanwhile "
                "(or the session is not in strict SQL mode): fill them, then migrate again"
            ) from None
        if number in _MYSQL_NOT_ONLINE:
            raise BackfillError(
                f"cannot make {where}.{operation.column_name} NOT NULL without blocking writes: {reason}; "
                "run the ALTER with an online schema change tool (gh-ost, pt-online-schema-change) "
                "or in a maintenance window, then migrate again"
            ) from None
        raise


def check_constraint_name(table_name: str, column_name: str) -> str:
    """The temporary check's name, within PostgreSQL's 63-byte identifiers and still unique."""
    name = f"{table_name}_{column_name}_not_null"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:50].decode(errors='ignore')}_{digest}_nn"


def not_null_postgresql(operations: Operations, operation: AddNotNullOp, info: Mapping[str, Any], where: str) -> None:
    name = check_constraint_name(operation.table_name, operation.column_name)
    as_sql = offline(operations)
    existing = (
        set()
        if as_sql
        else {
            c["name"]
            for c in inspect(operations.get_bind()).get_check_constraints(operation.table_name, schema=operation.schema)
        }
    )
    if name not in existing:  # a run interrupted after validation leaves it behind: reuse it
        operations.create_check_constraint(
            name,
            operation.table_name,
            column(operation.column_name).is_not(None),
            schema=operation.schema,
            postgresql_not_valid=True,
        )
    validate = ValidateConstraint(operation.table_name, name, operation.schema)
    # The scan runs outside the migration's transaction, so the check's lock goes with it; an
    # env.py that holds its connections' transactions itself (Alembic's multidb template) leaves
    # Alembic none to step out of: there the scan runs inside it (VALIDATE blocks no writer).
    managed = as_sql or getattr(operations.get_context(), "_transaction", None) is not None
    with operations.get_context().autocommit_block() if managed else contextlib.nullcontext():
        if as_sql:
            operations.execute(validate)
        else:
            try:
                operations.execute(validate)
            except DBAPIError as exc:
                # A writer stored a NULL between the count and the check: the check stops it
                # from happening again, but the column cannot be NOT NULL yet.
                if managed:
                    operations.drop_constraint(name, operation.table_name, type_="check", schema=operation.schema)
                raise NullValuesError(
                    f"cannot make {where}.{operation.column_name} NOT NULL: validation failed "
                    f"({error_text(exc, 200).splitlines()[0]}); NULLs were written meanwhile: fill them, "
                    "then migrate again"
                ) from None
    operations.alter_column(operation.table_name, operation.column_name, nullable=False, schema=operation.schema)
    operations.drop_constraint(name, operation.table_name, type_="check", schema=operation.schema)


def not_null_sqlite(operations: Operations, operation: AddNotNullOp, info: Mapping[str, Any], where: str) -> None:
    """Batch mode: SQLite cannot alter a column in place, so the table is copied."""
    with operations.batch_alter_table(operation.table_name, schema=operation.schema) as batch:
        batch.alter_column(operation.column_name, nullable=False, existing_type=info["type"])


def not_null_other(operations: Operations, operation: AddNotNullOp, info: Mapping[str, Any], where: str) -> None:
    """Any other database: Alembic's own ALTER, with the column as reflected."""
    existing = {
        "existing_type": operation.existing_type or info["type"],
        "existing_server_default": info.get("default") or False,
        "existing_comment": info.get("comment"),
        "existing_autoincrement": info.get("autoincrement"),
    }
    alter_not_null(operations, operation, existing)


NotNull = Callable[[Operations, AddNotNullOp, Mapping[str, Any], str], None]
ONLINE: dict[str, NotNull] = {
    "postgresql": not_null_postgresql,
    "sqlite": not_null_sqlite,
    "mysql": not_null_mysql,
    "mariadb": not_null_mysql,
}
OFFLINE: dict[str, NotNull] = {"postgresql": not_null_postgresql, "mysql": not_null_mysql, "mariadb": not_null_mysql}
"""What can be written as SQL without reading the table: MySQL and MariaDB need ``existing_type``."""


def add_not_null(operations: Operations, operation: AddNotNullOp) -> None:
    dialect = dialect_name(operations)
    where = f"{operation.schema}.{operation.table_name}" if operation.schema else operation.table_name
    if offline(operations):
        render = OFFLINE.get(dialect)
        needs_type = dialect in ("mysql", "mariadb") and operation.existing_type is None
        if render is None or needs_type:
            raise OfflineModeError(
                f"op.add_not_null('{operation.table_name}', '{operation.column_name}') cannot be written as SQL "
                f"for {dialect}: it must read the table from the database; run this revision online"
                + (" or pass existing_type=" if needs_type else "")
            )
        render(operations, operation, {"type": operation.existing_type}, where)
        return
    connection = operations.get_bind()
    info = reflect_column(connection, operation, where)
    if not info["nullable"]:
        logger.info("%s.%s is NOT NULL already", where, operation.column_name)
        return
    nulls = count_nulls(connection, operation)
    if nulls:
        raise NullValuesError(nulls_message(operations, operation, where, nulls))
    ONLINE.get(dialect, not_null_other)(operations, operation, info, where)
    logger.info("%s.%s is NOT NULL", where, operation.column_name)
