"""A definition checked against the database: the reflected table and its key columns.

Everything a definition claims about the schema is verified here, before a run records
anything, so a wrong name or a non-unique key is one clear error and no change.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Select,
    Table,
    and_,
    func,
    inspect,
    literal_column,
    select,
)
from sqlalchemy.engine import Inspector
from sqlalchemy.exc import DBAPIError, NoSuchTableError, SAWarning

from backfill import keyset, params
from backfill.definition import Backfill, Batch, Key
from backfill.errors import DefinitionError, TargetError
from backfill.failures import error_text
from backfill.keyset import KEY_TYPES, Span, decode_key
from backfill.registry import Registry
from backfill.status import Phase
from backfill.store.records import BatchRecord, Run


@dataclass(frozen=True)
class Target:
    definition: Backfill
    table: Table
    key_columns: tuple[Column[Any], ...]
    key_types: tuple[type, ...]

    def decode(self, raw: list[Any] | None) -> Key | None:
        return decode_key(raw, self.key_types)

    def span_of(self, record: BatchRecord) -> tuple[Key, Key]:
        """A batch's first and last keys, in the key columns' Python types."""
        first, last = self.decode(record.first_key), self.decode(record.last_key)
        if first is None or last is None:
            raise ValueError(f"batch {record.id} has no key range")
        return first, last

    def batch(self, record: BatchRecord) -> Batch:
        """The value the work is given for a batch."""
        first, last = self.span_of(record)
        return Batch(
            id=record.id,
            run_id=record.run_id,
            seq=record.seq,
            phase=record.phase,
            key_columns=self.definition.key,
            first=first,
            last=last,
            rows=record.rows,
            arguments=self.definition.arguments,
        )

    def pending_in(self, record: BatchRecord) -> ColumnElement[bool] | None:
        """The rows that count in a batch: all of them in the main sweep, the pending ones in
        the final pass (None: no condition)."""
        return self.definition.pending_clause(self.table) if record.phase is Phase.CATCHUP else None

    def halves(self, connection: Connection, record: BatchRecord) -> list[Span]:
        """The batch's range cut in two that partition it (one span: it cannot be cut)."""
        first, last = self.span_of(record)
        return keyset.halves(connection, self.key_columns, first, last, record.rows, self.pending_in(record))

    def still_pending(self, connection: Connection, record: BatchRecord) -> bool:
        """Whether rows of a final-pass batch's range still match ``pending`` (after its work)."""
        pending = self.pending_in(record)
        if pending is None:
            return False
        first, last = self.span_of(record)
        inside = and_(keyset.at_least(self.key_columns, first), keyset.at_most(self.key_columns, last), pending)
        return (
            connection.execute(select(literal_column("1")).select_from(self.table).where(inside).limit(1)).first()
            is not None
        )


def _python_type(column: Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def reflect(connection: Connection, name: str, schema: str | None) -> tuple[Table, Inspector]:
    """The table with its columns and primary key: all a batch's SQL needs. (``autoload_with``
    also reads foreign keys, checks, comments and options, at three times the cost of a run's
    start on PostgreSQL.) The inspector comes back with it, for what else is asked of the table."""
    inspector = inspect(connection)
    found = inspector.get_columns(name, schema)  # NoSuchTableError when there is none
    primary = set(inspector.get_pk_constraint(name, schema).get("constrained_columns") or ())
    columns = [Column(c["name"], c["type"], nullable=c["nullable"], primary_key=c["name"] in primary) for c in found]
    return Table(name, MetaData(), *columns, schema=schema), inspector


def unique_sets(inspector: Inspector, table: Table) -> Iterator[set[str]]:
    """The column sets the database keeps unique: the primary key, then (asked only if needed)
    unique constraints and unique indexes on plain columns. A partial unique index
    (``WHERE ...``) keeps only some rows unique, so it does not count."""
    yield {c.name for c in table.primary_key.columns}
    for constraint in inspector.get_unique_constraints(table.name, table.schema):
        yield set(constraint["column_names"])
    with warnings.catch_warnings():  # "expression-based index skipped": they do not count here anyway
        warnings.simplefilter("ignore", SAWarning)
        indexes = inspector.get_indexes(table.name, table.schema)
    for index in indexes:
        partial = any(
            option.endswith("_where") and value is not None
            for option, value in index.get("dialect_options", {}).items()
        )
        names = index["column_names"]
        if index["unique"] and not partial and None not in names and not index.get("expressions"):
            yield {n for n in names if n is not None}


def _rowid_alias(connection: Connection, table: Table, column: Column[Any]) -> bool:
    """SQLite's INTEGER PRIMARY KEY: the rowid itself, never NULL, though SQLite reports it as
    nullable. Any other SQLite primary key column not declared NOT NULL does hold NULL."""
    if connection.dialect.name != "sqlite" or list(table.primary_key.columns) != [column]:
        return False
    info = func.pragma_table_info(table.name, table.schema or "main").table_valued("name", "type")
    declared = connection.execute(select(info.c.type).where(info.c.name == column.name)).scalar()
    return str(declared or "").upper() == "INTEGER"


def resolve(connection: Connection, definition: Backfill) -> Target:
    """Reflect the definition's table and check its key; raises ``TargetError`` naming the fix."""
    where = f"{definition.schema}.{definition.table}" if definition.schema else definition.table
    name = f"backfill '{definition.name}'"
    try:
        table, inspector = reflect(connection, definition.table, definition.schema)
    except NoSuchTableError:
        raise TargetError(
            f"{name}: table '{where}' does not exist: create it (run your migrations) or fix the definition's table"
        ) from None

    for column_name in (*definition.key, *definition.columns):
        if column_name not in table.c:
            raise TargetError(
                f"{name}: column '{column_name}' does not exist in table '{where}' "
                f"(columns: {', '.join(table.c.keys())}): fix the definition or add the column"
            )
    key_columns = tuple(table.c[c] for c in definition.key)
    key_types = []
    for column in key_columns:
        python_type = _python_type(column)
        if python_type not in KEY_TYPES:
            raise TargetError(
                f"{name}: key column '{column.name}' has type {column.type}; keys must be integer, text or UUID columns"
            )
        key_types.append(python_type)

    key_set = set(definition.key)
    if not any(s and s <= key_set for s in unique_sets(inspector, table)):
        raise TargetError(
            f"{name}: key ({', '.join(definition.key)}) of table '{where}' is not unique: "
            "batches need a key backed by the primary key or a unique index; "
            "add a unique index on it or choose the primary key"
        )
    nullable = [c.name for c in key_columns if c.nullable and not _rowid_alias(connection, table, c)]
    if nullable:
        sqlite = (
            " (SQLite lets a primary key hold NULL unless it is INTEGER PRIMARY KEY)"
            if any(table.c[n].primary_key for n in nullable)
            else ""
        )
        raise TargetError(
            f"{name}: key column(s) {', '.join(nullable)} of table '{where}' allow NULL{sqlite}, and rows "
            "with a NULL key can be neither ordered nor batched: make them NOT NULL or choose another key"
        )

    target = Target(definition, table, key_columns, tuple(key_types))
    pending = definition.pending_clause(table)
    if pending is not None:
        probe: Select[tuple[Any]] = select(literal_column("1")).select_from(table).where(pending).limit(1)
        try:
            connection.execute(probe)
        except DBAPIError as exc:
            raise TargetError(
                f"{name}: the pending predicate fails on table '{where}': {error_text(exc, 300).splitlines()[0]}"
            ) from None
    return target


def halves_by_key(connection: Connection, run: Run, record: BatchRecord) -> list[Span]:
    """A batch's halves without its definition (an operator with the database URL alone): the
    table reflected from the run's own record; every key counts, pending or not."""
    table, _ = reflect(connection, run.table_name, run.schema_name)
    columns = tuple(table.c[name] for name in run.key_columns)
    types = tuple(_python_type(c) or str for c in columns)
    first, last = decode_key(record.first_key, types), decode_key(record.last_key, types)
    if first is None or last is None:
        return []
    return keyset.halves(connection, columns, first, last, record.rows)


class Targets:
    """Resolved targets by backfill name, reflected once per process.

    Reflection costs several catalog queries: the per-batch path must not pay it.
    """

    def __init__(self, bind: Engine | Connection, definitions: Registry) -> None:
        self.bind = bind
        self.definitions = definitions
        self._resolved: dict[str, Target] = {}
        self._runs: dict[int, Target] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Target:
        target = self._resolved.get(name)
        if target is None:
            with self._lock:
                target = self._resolved.get(name)
                if target is None:
                    if isinstance(self.bind, Connection):
                        target = resolve(self.bind, self.definitions.require(name))
                    else:
                        with self.bind.connect() as connection:
                            target = resolve(connection, self.definitions.require(name))
                    self._resolved[name] = target
        return target

    def for_run(self, run: Run) -> Target:
        """The target as a run sees it: its definition bound to the run's parameter values
        (kept per run, so the per-batch path binds nothing)."""
        target = self.get(run.name)
        if not target.definition.parameters:
            return target
        bound = self._runs.get(run.id)
        if bound is None:
            try:
                values = params.decode(target.definition.parameters, run.params)
            except DefinitionError as exc:
                raise TargetError(
                    f"run {run.id} of backfill '{run.name}' {exc}: `backfill cancel {run.name}`, then start it "
                    "again with its --param values"
                ) from None
            bound = self._runs[run.id] = self.bound(run.name, values)
        return bound

    def bound(self, name: str, arguments: Mapping[str, Any]) -> Target:
        """The target with its definition's SQL bound to these parameter values."""
        target = self.get(name)
        return dataclasses.replace(target, definition=target.definition.with_arguments(arguments))
