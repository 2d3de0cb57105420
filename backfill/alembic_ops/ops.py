"""The operations a revision calls on ``op``, declared (as Alembic's own ``operations/ops.py``):
what each takes and what reverses it. ``toimpl`` carries them out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alembic.operations import MigrateOperation, Operations


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


@Operations.register_operation("queue_backfill")
@dataclass(frozen=True)
class QueueBackfillOp(MigrateOperation):
    """Record a run of a backfill for the workers to start after the deploy.

    The run is written in the migration's own transaction: a migration that fails and rolls
    back leaves no run behind, and the workers cannot pick the run up before the schema it
    needs is committed. Queuing a backfill that already has an active or a finished run does
    nothing (and says so in the log), so a revision can be run again safely.

    ``params`` are the run's parameter values (see ``Backfill.params``), checked before anything
    is written; a finished run counts only when it had the same values, so a revision can queue
    the same backfill for another tenant. ``overrides`` are tuning settings.

    Offline (``--sql``) it renders an ``INSERT ... SELECT ... WHERE NOT EXISTS`` with the same
    guard (any finished run counts), its timestamps taken from the database clock when the
    script runs.
    """

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def queue_backfill(
        cls, operations: Operations, name: str, *, params: Mapping[str, Any] | None = None, **overrides: Any
    ) -> None:
        operations.invoke(cls(name, overrides, dict(params or {})))

    def reverse(self) -> ForgetBackfillOp:
        return ForgetBackfillOp(self.name)


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
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def run_backfill(
        cls, operations: Operations, name: str, *, params: Mapping[str, Any] | None = None, **overrides: Any
    ) -> None:
        operations.invoke(cls(name, overrides, dict(params or {})))


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
