"""Alembic operations that carry a backfill through a deploy.

Importing this module (``env.py`` does, once) registers them on Alembic's ``Operations`` with
its own plugin mechanism, so every revision calls them on ``op``:

- ``op.create_backfill_tables()`` / ``op.drop_backfill_tables()``: the checkpoint tables;
- ``op.queue_backfill(NAME, **overrides)``: record a run for the workers, in the migration's
  transaction; ``op.forget_backfill(NAME)`` is its reverse, for the downgrade;
- ``op.ensure_backfill_finished(NAME, finalize=True)``: the gate of the revision that depends on
  the data being complete;
- ``op.add_not_null(TABLE, COLUMN)``: NOT NULL without blocking writers behind a full scan;
- ``op.run_backfill(NAME)``: a whole run inline, for small tables and downgrades.

The operations need the backfill definitions. They take them from
``config.attributes["backfill_app"]`` — a module name, a module's ``Registry``, or any mapping
of names to definitions — which ``env.py`` sets, and fall back on ``BACKFILL_APP`` when the
migration environment leaves it unset. One place, in the one file a project already owns for
its migration setup, and overridable by whoever drives Alembic from Python (tests, tools).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from alembic.ddl.mysql import MySQLModifyColumn
from alembic.operations import MigrateOperation, Operations
from alembic.util import CommandError
from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Connection,
    String,
    cast,
    column,
    exists,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    or_,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError, NoSuchTableError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql.compiler import DDLCompiler, IdentifierPreparer

from backfill import environment, tables
from backfill.app import App
from backfill.definition import Backfill, Tuning
from backfill.errors import (
    BackfillError,
    ConfigurationError,
    MigrationError,
    NullValuesError,
    OfflineModeError,
    TargetError,
    UnfinishedBackfillError,
)
from backfill.estimate import estimate_rows
from backfill.failures import error_text
from backfill.progress import measure
from backfill.registry import APP_ENV, Registry, load
from backfill.status import RunStatus
from backfill.store import Run, Store, new_run_values
from backfill.target import resolve

logger = logging.getLogger("backfill.alembic")

APP_ATTRIBUTE = "backfill_app"
"""The key in ``config.attributes`` that names the definitions (see the module docstring)."""

PROGRESS_EVERY_SECONDS = 5.0
"""How often inline finalization logs its progress: enough to see it move, not a flood."""


# -- the definitions -------------------------------------------------------------------------


def migration_definitions(operations: Operations) -> Registry:
    config = operations.migration_context.config
    found: Any = config.attributes.get(APP_ATTRIBUTE) if config is not None else None
    if found is None:
        if not os.environ.get(APP_ENV):
            raise ConfigurationError(
                f"the migration does not know the backfill definitions: set "
                f'config.attributes["{APP_ATTRIBUTE}"] = "myapp.backfills" in env.py, or set {APP_ENV}'
            )
        return load(None)
    if isinstance(found, str):
        return load(found)
    if isinstance(found, Registry):
        return found
    if isinstance(found, Mapping) and all(isinstance(d, Backfill) for d in found.values()):
        return Registry(dict(found), source=f'config.attributes["{APP_ATTRIBUTE}"]')
    raise ConfigurationError(
        f'config.attributes["{APP_ATTRIBUTE}"] must be a module name or a mapping of backfill '
        f"definitions, not {type(found).__name__}"
    )


def _for_alembic(implementation: Callable[[Operations, Any], None]) -> Callable[[Operations, Any], None]:
    """Alembic's command line prints its own ``CommandError`` as one ``FAILED: <message>`` line
    and anything else as a traceback: a mistake met inside an operation (an unknown backfill,
    a missing column, NULL rows) is re-raised as one, keeping its message and its class."""

    @functools.wraps(implementation)
    def implement(operations: Operations, operation: Any) -> None:
        try:
            implementation(operations, operation)
        except CommandError:
            raise
        except BackfillError as exc:
            raise MigrationError(" ".join(str(exc).split())) from exc

    return implement


def _offline(operations: Operations) -> bool:
    return bool(operations.migration_context.as_sql)


def _dialect_name(operations: Operations) -> str:
    return str(operations.migration_context.dialect.name)


# -- checkpoint tables -----------------------------------------------------------------------


@Operations.register_operation("create_backfill_tables")
@dataclass(frozen=True)
class CreateBackfillTablesOp(MigrateOperation):
    """Create ``backfill_runs`` and ``backfill_batches`` (from ``backfill.tables``)."""

    @classmethod
    def create_backfill_tables(cls, operations: Operations) -> None:
        operations.invoke(cls())

    def reverse(self) -> DropBackfillTablesOp:
        return DropBackfillTablesOp()


@Operations.register_operation("drop_backfill_tables")
@dataclass(frozen=True)
class DropBackfillTablesOp(MigrateOperation):
    """Drop the checkpoint tables, and with them every run's history."""

    @classmethod
    def drop_backfill_tables(cls, operations: Operations) -> None:
        operations.invoke(cls())

    def reverse(self) -> CreateBackfillTablesOp:
        return CreateBackfillTablesOp()


def _existing_tables(operations: Operations) -> set[str]:
    """Which checkpoint tables exist already; offline, none are assumed to."""
    if _offline(operations):
        return set()
    inspector = inspect(operations.get_bind())
    return {t.name for t in tables.metadata.sorted_tables if inspector.has_table(t.name)}


@Operations.implementation_for(CreateBackfillTablesOp)
@_for_alembic
def _create_backfill_tables(operations: Operations, operation: CreateBackfillTablesOp) -> None:
    """Skips tables that exist: ``backfill init-db`` may have created them before the project
    moved its schema under Alembic, and that must not stop the migration."""
    existing = _existing_tables(operations)
    for t in tables.metadata.sorted_tables:
        if t.name in existing:
            logger.info("%s exists already: left as it is", t.name)
        else:
            operations.impl.create_table(t)


@Operations.implementation_for(DropBackfillTablesOp)
@_for_alembic
def _drop_backfill_tables(operations: Operations, operation: DropBackfillTablesOp) -> None:
    existing = None if _offline(operations) else _existing_tables(operations)
    for t in reversed(tables.metadata.sorted_tables):
        if existing is None or t.name in existing:
            operations.impl.drop_table(t)


# -- queueing --------------------------------------------------------------------------------


@Operations.register_operation("queue_backfill")
@dataclass(frozen=True)
class QueueBackfillOp(MigrateOperation):
    """Record a run of a backfill for the workers to start after the deploy.

    The run is written in the migration's own transaction: a migration that fails and rolls
    back leaves no run behind, and the workers cannot pick the run up before the schema it
    needs is committed. Queuing a backfill that already has an active or a finished run does
    nothing (and says so in the log), so a revision can be run again safely.

    Offline (``--sql``) it renders an ``INSERT ... SELECT ... WHERE NOT EXISTS`` with the same
    guard, its timestamps taken from the database clock when the script runs.
    """

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def queue_backfill(cls, operations: Operations, name: str, **overrides: Any) -> None:
        operations.invoke(cls(name, overrides))

    def reverse(self) -> ForgetBackfillOp:
        return ForgetBackfillOp(self.name)


@Operations.implementation_for(QueueBackfillOp)
@_for_alembic
def _queue_backfill(operations: Operations, operation: QueueBackfillOp) -> None:
    definition = migration_definitions(operations)[operation.name]
    tuning = definition.tuning.replace(operation.overrides)
    if _offline(operations):
        operations.execute(_offline_queue_statement(definition, tuning, _dialect_name(operations)))
        return
    connection = operations.get_bind()
    store = Store(connection)
    store.check_tables()
    # The definition is checked against the schema as this migration leaves it, so a wrong
    # table or column fails the deploy instead of the first worker.
    resolve(connection, definition)
    active = store.active_run(definition.name, connection=connection)
    if active is not None:
        logger.info("backfill %s already has an active run (run %s, %s): not queued again", *_ident(active))
        return
    latest = store.latest_run(definition.name, connection=connection)
    if latest is not None and latest.status is RunStatus.FINISHED:
        logger.info("backfill %s has finished already (run %s, %s): not queued again", *_ident(latest))
        return
    run = store.create_run(definition, tuning, connection=connection)
    logger.info("backfill %s queued (run %s): workers start it once this migration commits", run.name, run.id)


def _ident(run: Run) -> tuple[str, int, str]:
    return run.name, run.id, run.status.value


def _sql_utcnow(dialect: str) -> ColumnElement[datetime]:
    """The current UTC time as the store keeps it (naive), read when the script runs."""
    if dialect == "postgresql":
        return literal_column("(now() AT TIME ZONE 'UTC')")
    if dialect in ("mysql", "mariadb"):
        return func.utc_timestamp()
    return func.current_timestamp()


def _offline_queue_statement(definition: Backfill, tuning: Tuning, dialect: str) -> Any:
    """The run row of ``Store.create_run``, as one guarded INSERT for a SQL script."""
    runs = tables.runs
    now = _sql_utcnow(dialect)
    values = new_run_values(definition, tuning, now)
    row = [_literal(runs.c[name], value, dialect).label(name) for name, value in values.items()]
    taken = exists().where(
        runs.c.name == definition.name,
        or_(runs.c.active_name.is_not(None), runs.c.status == RunStatus.FINISHED.value),
    )
    return insert(runs).from_select(list(values), select(*row).where(~taken))


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


@Operations.register_operation("forget_backfill")
@dataclass(frozen=True)
class ForgetBackfillOp(MigrateOperation):
    """Delete every run of a backfill, with its batches: the downgrade of ``queue_backfill``.

    Without it, a downgrade past the revision that queued a backfill would leave its finished
    run behind, and upgrading again would skip the queue and find the new column empty.
    """

    name: str

    @classmethod
    def forget_backfill(cls, operations: Operations, name: str) -> None:
        operations.invoke(cls(name))

    def reverse(self) -> QueueBackfillOp:
        return QueueBackfillOp(self.name)


@Operations.implementation_for(ForgetBackfillOp)
@_for_alembic
def _forget_backfill(operations: Operations, operation: ForgetBackfillOp) -> None:
    runs, batches = tables.runs, tables.batches
    if not _offline(operations) and len(_existing_tables(operations)) < len(tables.metadata.tables):
        return
    of_name = select(runs.c.id).where(runs.c.name == operation.name).scalar_subquery()
    operations.execute(batches.delete().where(batches.c.run_id.in_(of_name)))
    operations.execute(runs.delete().where(runs.c.name == operation.name))
    logger.info("backfill %s: runs forgotten", operation.name)


# -- finishing -------------------------------------------------------------------------------


@Operations.register_operation("ensure_backfill_finished")
@dataclass(frozen=True)
class EnsureBackfillFinishedOp(MigrateOperation):
    """Pass when a backfill's latest run is finished; otherwise finish it here, or fail.

    With ``finalize`` (the default), an unfinished run — pending, running, failed (its failed
    batches are retried), or one never queued — is run to its end inline, on the migration's
    own connection and inside its transaction, logging progress. That is right for a small
    table or a development database; on a large table it holds the migration's locks for the
    whole run, which is why a production deploy should let the workers finish first (see the
    README). A paused or cancelled run is an operator's decision and always fails the check.

    Without ``finalize``, or when finalizing fails, it raises one line with the run's state,
    its progress and the command that finishes it.

    Offline (``--sql``) nothing can be run, so on PostgreSQL it emits a check — a ``DO`` block
    that raises unless the run is finished, stopping the script before the statements that
    depend on the data — and on other databases, which have no such statement outside a
    stored procedure, it refuses to render.
    """

    name: str
    finalize: bool | None = None

    @classmethod
    def ensure_backfill_finished(cls, operations: Operations, name: str, finalize: bool | None = None) -> None:
        operations.invoke(cls(name, finalize))


@Operations.implementation_for(EnsureBackfillFinishedOp)
@_for_alembic
def _ensure_backfill_finished(operations: Operations, operation: EnsureBackfillFinishedOp) -> None:
    name = operation.name
    definitions = migration_definitions(operations)
    definitions.require(name)
    policy = finalize_policy(operations, operation.finalize)
    if _offline(operations):
        if _dialect_name(operations) != "postgresql":
            raise OfflineModeError(
                f"op.ensure_backfill_finished('{name}') cannot be written as SQL for "
                f"{_dialect_name(operations)}: run this revision online, after `backfill status {name}` "
                "shows it finished"
            )
        operations.execute(_RequireFinished(name))
        return
    app = App(operations.get_bind(), definitions)
    app.store.check_tables()
    run = app.store.latest_run(name)
    if run is not None and run.status is RunStatus.FINISHED:
        logger.info("backfill %s is finished (run %s)", name, run.id)
        return
    if policy.mode is Finalize.NEVER or (run is not None and run.status in (RunStatus.PAUSED, RunStatus.CANCELLED)):
        raise UnfinishedBackfillError(_unfinished(app, name, run))
    if policy.mode is Finalize.AUTO:
        left = _rows_left(app, name, run)
        if left > policy.max_rows:
            why = f"about {left:,} rows are left, more than the {policy.max_rows:,} a migration finishes inline"
            raise UnfinishedBackfillError(_unfinished(app, name, run, f"{why} ({FINALIZE_MAX_ROWS_ENV})"))
    if run is not None and run.status is RunStatus.FAILED:
        _, requeued = app.retry(name)
        logger.info("backfill %s: %s failed batch(es) of run %s re-queued", name, requeued, run.id)
    _run_inline(app, name, "finalizing inline, inside this migration")


class Finalize(enum.StrEnum):
    """Whether a migration may run a backfill's remaining batches itself."""

    AUTO = "auto"
    """Only while little is left (``BACKFILL_FINALIZE_MAX_ROWS``): a development database, a
    small table, an empty one. A large remainder is refused with the command to run, since
    inside a migration it holds the deploy, and the locks, for as long as the work takes."""
    ALWAYS = "always"
    NEVER = "never"


FINALIZE_ENV = "BACKFILL_FINALIZE"
FINALIZE_MAX_ROWS_ENV = "BACKFILL_FINALIZE_MAX_ROWS"
DEFAULT_FINALIZE_MAX_ROWS = 100_000
_LEGACY = {"true": Finalize.ALWAYS, "false": Finalize.NEVER}


@dataclass(frozen=True)
class FinalizePolicy:
    mode: Finalize
    max_rows: int


def finalize_policy(operations: Operations, explicit: bool | None) -> FinalizePolicy:
    """The choice from, first to last: the op's own ``finalize=`` argument, ``alembic -x
    backfill_finalize=…`` (or the older ``-x finalize=true|false``), ``BACKFILL_FINALIZE``,
    else ``auto``; the threshold from ``-x backfill_finalize_max_rows=…`` or
    ``BACKFILL_FINALIZE_MAX_ROWS``."""
    x = _x_arguments(operations)
    raw_max = x.get("backfill_finalize_max_rows")
    env = {**os.environ, FINALIZE_MAX_ROWS_ENV: raw_max} if raw_max is not None else os.environ
    max_rows = environment.whole(
        FINALIZE_MAX_ROWS_ENV, DEFAULT_FINALIZE_MAX_ROWS, least=0, most=2**62, what="a number of rows", env=env
    )
    if explicit is not None:
        return FinalizePolicy(Finalize.ALWAYS if explicit else Finalize.NEVER, max_rows)
    if "backfill_finalize" in x:
        raw = x["backfill_finalize"]
    elif "finalize" in x:
        legacy = _LEGACY.get(x["finalize"].strip().lower())
        if legacy is None:
            raise ConfigurationError(f"-x finalize must be true or false, got {x['finalize']!r}")
        return FinalizePolicy(legacy, max_rows)
    else:
        raw = os.environ.get(FINALIZE_ENV, "")
    choices = tuple(m.value for m in Finalize)
    mode = environment.choice(FINALIZE_ENV, Finalize.AUTO.value, choices, env={FINALIZE_ENV: raw})
    return FinalizePolicy(Finalize(mode), max_rows)


def _x_arguments(operations: Operations) -> dict[str, str]:
    config = operations.migration_context.config
    given = getattr(getattr(config, "cmd_opts", None), "x", None) or []
    return dict(arg.split("=", 1) for arg in given if "=" in arg)


def _rows_left(app: App, name: str, run: Run | None) -> int:
    """The work left, by the same total ``status`` shows (refined as the run goes); for a run
    not started yet, the table's own row estimate."""
    if run is not None and run.rows_total is not None:
        progress = measure(app.store, run)
        return max(0, (progress.rows_total or 0) - run.rows_done)
    target = app.targets.get(name)
    with app.store.reading() as connection:
        return estimate_rows(connection, target.table)[0]


def _run_inline(app: App, name: str, why: str, **overrides: Any) -> Run:
    logger.info("backfill %s: %s", name, why)
    started = time.monotonic()
    final = app.run(name, on_progress=_ProgressLog(app, name, started).report, **overrides)
    if final.status is not RunStatus.FINISHED:
        raise UnfinishedBackfillError(_unfinished(app, name, final))
    logger.info(
        "backfill %s finished: %s rows in %s batches, %.1fs",
        name,
        f"{final.rows_done:,}",
        final.batches_done,
        time.monotonic() - started,
    )
    return final


@dataclass
class _ProgressLog:
    app: App
    name: str
    started: float
    last: float = 0.0

    def report(self, run: Run) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        logger.info("backfill %s: %s (%.0fs)", self.name, _progress(self.app, run), now - self.started)


def _progress(app: App, run: Run) -> str:
    """The run's progress in the words and the total ``status`` uses: one total everywhere."""
    progress = measure(app.store, run)
    total = progress.rows_total
    shown = "?" if total is None else f"{'~' if progress.to_json()['rows_total_is_estimate'] else ''}{total:,}"
    percent = "" if progress.fraction is None else f" ({100 * progress.fraction:.1f}%)"
    return f"{run.rows_done:,} of {shown} rows{percent}, {run.batches_done} batch(es) done, {run.batches_failed} failed"


def _unfinished(app: App, name: str, run: Run | None, why: str = "") -> str:
    if run is None:
        state = "it has never run"
        fix = f"run it with `backfill run {name}` (or `backfill start {name}` for the workers)"
    else:
        state = f"run {run.id} is {run.status}: {_progress(app, run)}"
        if run.last_error:
            state += f"; last error: {' '.join(run.last_error.split())[:200]}"
        fix = {
            RunStatus.PAUSED: f"`backfill resume {name}`, then `backfill run {name}` or let the workers finish it",
            RunStatus.FAILED: f"fix the error, then `backfill retry {name}` and `backfill run {name}`",
            RunStatus.CANCELLED: f"`backfill run {name}` starts a new run",
        }.get(run.status, f"finish it with `backfill run {name}`, or let the workers finish it")
    because = f"; {why}" if why else ""
    return (
        f"backfill '{name}' is not finished ({state}{because}): {fix}; "
        f"watch it with `backfill status {name}`, then migrate again"
    )


class _RequireFinished(ExecutableDDLElement):
    """PostgreSQL: abort the script unless the backfill's latest run is finished."""

    def __init__(self, name: str) -> None:
        self.name = name


@compiles(_RequireFinished)
def _render_require_finished(element: _RequireFinished, compiler: DDLCompiler, **kw: Any) -> str:
    runs = tables.runs
    latest = select(runs.c.status).where(runs.c.name == element.name).order_by(runs.c.id.desc()).limit(1)
    finished = select(literal(1)).where(latest.scalar_subquery() == RunStatus.FINISHED.value)
    condition = compiler.sql_compiler.process(exists(finished), literal_binds=True)
    message = compiler.sql_compiler.render_literal_value(
        f"backfill {element.name} is not finished: `backfill run {element.name}` "
        f"(see `backfill status {element.name}`), then run this script again",
        String(),
    )
    return f"DO $$\nBEGIN\n  IF NOT {condition} THEN\n    RAISE EXCEPTION {message};\n  END IF;\nEND\n$$"


@Operations.register_operation("run_backfill")
@dataclass(frozen=True)
class RunBackfillOp(MigrateOperation):
    """Run a backfill from start to end inside the migration (continuing its active run).

    For small tables and for downgrades, where there is no deploy to wait for: the work joins
    the migration's transaction, so it commits or rolls back with the schema change around it.
    Offline it refuses: a SQL script cannot run batches.
    """

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def run_backfill(cls, operations: Operations, name: str, **overrides: Any) -> None:
        operations.invoke(cls(name, overrides))


@Operations.implementation_for(RunBackfillOp)
@_for_alembic
def _run_backfill(operations: Operations, operation: RunBackfillOp) -> None:
    definitions = migration_definitions(operations)
    definitions.require(operation.name).tuning.replace(operation.overrides)
    if _offline(operations):
        raise OfflineModeError(
            f"op.run_backfill('{operation.name}') cannot be written as SQL: run this revision online "
            "(it runs the backfill's batches inside the migration)"
        )
    app = App(operations.get_bind(), definitions)
    app.store.check_tables()
    _run_inline(app, operation.name, "running inline, inside this migration", **operation.overrides)


# -- NOT NULL --------------------------------------------------------------------------------


@Operations.register_operation("add_not_null")
@dataclass(frozen=True)
class AddNotNullOp(MigrateOperation):
    """Make a column NOT NULL once no row holds NULL, without a long write lock.

    First it counts the NULLs; if there are any it fails with the count (and the backfill that
    fills the column, when a definition names it in ``columns``) and changes nothing.

    - PostgreSQL: ``ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID`` (a brief exclusive
      lock, no scan), committed; then ``VALIDATE CONSTRAINT`` outside any transaction — the full
      scan, under a lock that lets writers carry on; then ``SET NOT NULL``, which PostgreSQL 12+
      proves from the valid constraint without scanning, and the check is dropped. The
      validation commits the migration's transaction so far (Alembic's ``autocommit_block``):
      run the environment with ``transaction_per_migration=True``.
    - SQLite: batch mode (``op.batch_alter_table``), which copies the table — SQLite cannot
      alter a column in place, and the copy holds the database's write lock while it runs.
    - MySQL/MariaDB: ``ALTER TABLE ... MODIFY col <its reflected type, default, comment> NOT
      NULL, ALGORITHM=INPLACE, LOCK=NONE``. InnoDB rebuilds the table in place (a full copy of
      its rows and indexes, as long as the table is large) while reads and writes carry on:
      concurrent changes are kept in an online log (``innodb_online_alter_log_max_size``) and
      applied at the end. Locks: a shared-upgradable metadata lock for the rebuild, and an
      exclusive metadata lock twice, briefly — to start and to swap the rebuilt table in. Each
      exclusive lock waits for every open transaction that touched the table (up to
      ``lock_wait_timeout``), and queries arriving meanwhile wait behind it: run it when no long
      transaction is open on the table. The clauses make the server refuse (1845/1846), rather
      than fall back to a copy that blocks writers, and with strict SQL mode a NULL written
      during the rebuild fails the statement, leaving the column nullable. MySQL commits before
      any DDL: what the revision did before this is committed here.

    Offline (``--sql``) the NULL count cannot be taken: PostgreSQL renders the statements above
    (``VALIDATE`` is then the check, and fails the script if NULLs remain); MySQL/MariaDB render
    the MODIFY when ``existing_type`` is given; SQLite refuses, since batch mode must read the
    table's definition from the database.
    """

    table_name: str
    column_name: str
    schema: str | None = None
    existing_type: Any = None

    @classmethod
    def add_not_null(
        cls,
        operations: Operations,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        existing_type: Any = None,
    ) -> None:
        operations.invoke(cls(table_name, column_name, schema, existing_type))


@Operations.implementation_for(AddNotNullOp)
@_for_alembic
def _add_not_null(operations: Operations, operation: AddNotNullOp) -> None:
    dialect = _dialect_name(operations)
    where = f"{operation.schema}.{operation.table_name}" if operation.schema else operation.table_name
    if _offline(operations):
        if dialect == "postgresql":
            _not_null_postgresql(operations, operation, where)
        elif dialect in ("mysql", "mariadb") and operation.existing_type is not None:
            _not_null_mysql(operations, operation, {"type": operation.existing_type}, where)
        else:
            raise OfflineModeError(
                f"op.add_not_null('{operation.table_name}', '{operation.column_name}') cannot be written as SQL "
                f"for {dialect}: it must read the table from the database; run this revision online"
                + (" or pass existing_type=" if dialect in ("mysql", "mariadb") else "")
            )
        return
    connection = operations.get_bind()
    info = _reflect_column(connection, operation, where)
    if not info["nullable"]:
        logger.info("%s.%s is NOT NULL already", where, operation.column_name)
        return
    nulls = _count_nulls(connection, operation)
    if nulls:
        raise NullValuesError(_nulls_message(operations, operation, where, nulls))
    if dialect == "postgresql":
        _not_null_postgresql(operations, operation, where)
    elif dialect == "sqlite":
        with operations.batch_alter_table(operation.table_name, schema=operation.schema) as batch:
            batch.alter_column(operation.column_name, nullable=False, existing_type=info["type"])
    elif dialect in ("mysql", "mariadb"):
        _not_null_mysql(operations, operation, info, where)
    else:
        _alter_not_null(
            operations,
            operation,
            {
                "existing_type": operation.existing_type or info["type"],
                "existing_server_default": info.get("default") or False,
                "existing_comment": info.get("comment"),
                "existing_autoincrement": info.get("autoincrement"),
            },
        )
    logger.info("%s.%s is NOT NULL", where, operation.column_name)


def _reflect_column(connection: Connection, operation: AddNotNullOp, where: str) -> dict[str, Any]:
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


def _count_nulls(connection: Connection, operation: AddNotNullOp) -> int:
    target = table(operation.table_name, column(operation.column_name), schema=operation.schema)
    query = select(func.count()).select_from(target).where(target.c[operation.column_name].is_(None))
    return int(connection.execute(query).scalar_one())


def _nulls_message(operations: Operations, operation: AddNotNullOp, where: str, nulls: int) -> str:
    problem = f"cannot make {where}.{operation.column_name} NOT NULL: {nulls:,} row(s) are NULL"
    fillers = _backfills_filling(operations, operation)
    if not fillers:
        return f"{problem}; fill or delete them, then migrate again (nothing was changed)"
    name = fillers[0].name
    return (
        f"{problem}; backfill '{name}' fills that column: see `backfill status {name}`, finish it with "
        f"`backfill run {name}` (or op.ensure_backfill_finished('{name}') before this), then migrate again "
        "(nothing was changed)"
    )


def _backfills_filling(operations: Operations, operation: AddNotNullOp) -> list[Backfill]:
    try:
        definitions = migration_definitions(operations)
    except BackfillError:
        return []  # naming the backfill is a courtesy: the count alone still says what is wrong
    return [
        d
        for d in definitions.values()
        if d.table == operation.table_name and d.schema == operation.schema and operation.column_name in d.columns
    ]


def _alter_not_null(operations: Operations, operation: AddNotNullOp, existing: dict[str, Any]) -> None:
    operations.alter_column(
        operation.table_name, operation.column_name, nullable=False, schema=operation.schema, **existing
    )


_MYSQL_NULLS = {1138, 1263, 1265}
"""Invalid use of NULL / data truncated: a NULL reached the column while the table was rebuilt."""

_MYSQL_NOT_ONLINE = {1845, 1846}
"""LOCK=NONE / ALGORITHM=INPLACE not supported for this table or column."""


def _not_null_mysql(operations: Operations, operation: AddNotNullOp, info: Mapping[str, Any], where: str) -> None:
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
        operations.execute(_OnlineAlter(modify))
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


class _OnlineAlter(ExecutableDDLElement):
    """An ``ALTER TABLE`` that must run in place without blocking DML, or not at all."""

    def __init__(self, alter: ExecutableDDLElement) -> None:
        self.alter = alter


@compiles(_OnlineAlter)
def _render_online_alter(element: _OnlineAlter, compiler: DDLCompiler, **kw: Any) -> str:
    return f"{compiler.process(element.alter, **kw)}, ALGORITHM=INPLACE, LOCK=NONE"


def check_constraint_name(table_name: str, column_name: str) -> str:
    """The temporary check's name, within PostgreSQL's 63-byte identifiers and still unique."""
    name = f"{table_name}_{column_name}_not_null"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:50].decode(errors='ignore')}_{digest}_nn"


def _not_null_postgresql(operations: Operations, operation: AddNotNullOp, where: str) -> None:
    name = check_constraint_name(operation.table_name, operation.column_name)
    offline = _offline(operations)
    existing = (
        set()
        if offline
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
    validate = _ValidateConstraint(operation.table_name, name, operation.schema)
    with operations.get_context().autocommit_block():
        if offline:
            operations.execute(validate)
        else:
            try:
                operations.execute(validate)
            except DBAPIError as exc:
                # A writer stored a NULL between the count and the check: the check stops it
                # from happening again, but the column cannot be NOT NULL yet.
                operations.drop_constraint(name, operation.table_name, type_="check", schema=operation.schema)
                raise NullValuesError(
                    f"cannot make {where}.{operation.column_name} NOT NULL: validation failed "
                    f"({error_text(exc, 200).splitlines()[0]}); NULLs were written meanwhile: fill them, "
                    "then migrate again"
                ) from None
    operations.alter_column(operation.table_name, operation.column_name, nullable=False, schema=operation.schema)
    operations.drop_constraint(name, operation.table_name, type_="check", schema=operation.schema)


class _ValidateConstraint(ExecutableDDLElement):
    def __init__(self, table_name: str, name: str, schema: str | None) -> None:
        self.table_name = table_name
        self.name = name
        self.schema = schema


def _qualified(preparer: IdentifierPreparer, table_name: str, schema: str | None) -> str:
    quoted = preparer.quote(table_name)
    return f"{preparer.quote_schema(schema)}.{quoted}" if schema else quoted


@compiles(_ValidateConstraint)
def _render_validate(element: _ValidateConstraint, compiler: DDLCompiler, **kw: Any) -> str:
    return (
        f"ALTER TABLE {_qualified(compiler.preparer, element.table_name, element.schema)} "
        f"VALIDATE CONSTRAINT {compiler.preparer.quote(element.name)}"
    )


__all__ = [
    "APP_ATTRIBUTE",
    "AddNotNullOp",
    "CreateBackfillTablesOp",
    "DropBackfillTablesOp",
    "EnsureBackfillFinishedOp",
    "ForgetBackfillOp",
    "NullValuesError",
    "OfflineModeError",
    "QueueBackfillOp",
    "RunBackfillOp",
    "UnfinishedBackfillError",
    "check_constraint_name",
    "migration_definitions",
]
