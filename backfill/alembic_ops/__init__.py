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

A project with a schema per tenant runs ``env.py`` once per tenant (``alembic -x tenant=acme
upgrade head``) with ``connection = in_tenant(connection, tenant)`` before ``context.configure``:
the operations then act on that tenant's tables and checkpoint tables.

The package follows Alembic's own layout: ``ops`` declares the operations, ``toimpl`` carries
them out, ``not_null`` holds the per-dialect NOT NULL, ``finalize`` the inline finishing,
``render`` what goes into a SQL script, ``context`` what an operation knows of its migration.
"""

from __future__ import annotations

from backfill.alembic_ops import toimpl  # noqa: F401 - registers the implementations
from backfill.alembic_ops.context import APP_ATTRIBUTE, migration_definitions
from backfill.alembic_ops.finalize import Finalize, finalize_policy
from backfill.alembic_ops.not_null import check_constraint_name
from backfill.alembic_ops.ops import (
    AddNotNullOp,
    CreateBackfillTablesOp,
    DropBackfillTablesOp,
    EnsureBackfillFinishedOp,
    ForgetBackfillOp,
    QueueBackfillOp,
    RunBackfillOp,
)
from backfill.database import in_tenant
from backfill.errors import MigrationError, NullValuesError, OfflineModeError, UnfinishedBackfillError

__all__ = [
    "APP_ATTRIBUTE",
    "AddNotNullOp",
    "CreateBackfillTablesOp",
    "DropBackfillTablesOp",
    "EnsureBackfillFinishedOp",
    "Finalize",
    "ForgetBackfillOp",
    "MigrationError",
    "NullValuesError",
    "OfflineModeError",
    "QueueBackfillOp",
    "RunBackfillOp",
    "UnfinishedBackfillError",
    "check_constraint_name",
    "finalize_policy",
    "in_tenant",
    "migration_definitions",
]
