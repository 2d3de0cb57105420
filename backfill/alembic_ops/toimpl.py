"""How each operation is carried out, online and offline (as Alembic's ``operations/toimpl.py``).
Each goes through ``context.for_alembic``, so a mistake reaches Alembic's command line as one line."""

from __future__ import annotations

from alembic.operations import Operations

from backfill import params, tables
from backfill.alembic_ops.context import (
    MIGRATION_ACTOR,
    dialect_name,
    existing_tables,
    for_alembic,
    logger,
    migration_definitions,
    offline,
)
from backfill.alembic_ops.finalize import (
    FINALIZE_MAX_ROWS_ENV,
    Finalize,
    finalize_policy,
    rows_left,
    run_inline,
    unfinished,
)
from backfill.alembic_ops.not_null import add_not_null
from backfill.alembic_ops.ops import (
    AddNotNullOp,
    CreateBackfillTablesOp,
    DropBackfillTablesOp,
    EnsureBackfillFinishedOp,
    ForgetBackfillOp,
    QueueBackfillOp,
    RunBackfillOp,
)
from backfill.alembic_ops.render import (
    RequireFinished,
    offline_queue_statement,
)
from backfill.app import App
from backfill.errors import (
    OfflineModeError,
    UnfinishedBackfillError,
)
from backfill.status import RunStatus
from backfill.store import Run, Store, statements
from backfill.target import resolve


@Operations.implementation_for(CreateBackfillTablesOp)
@for_alembic
def _create_backfill_tables(operations: Operations, operation: CreateBackfillTablesOp) -> None:
    """Skips tables that exist: ``backfill init-db`` may have created them before the project
    moved its schema under Alembic, and that must not stop the migration."""
    existing = existing_tables(operations)
    for t in tables.metadata.sorted_tables:
        if t.name in existing:
            logger.info("%s exists already: left as it is", t.name)
        else:
            operations.impl.create_table(t)


@Operations.implementation_for(DropBackfillTablesOp)
@for_alembic
def _drop_backfill_tables(operations: Operations, operation: DropBackfillTablesOp) -> None:
    existing = None if offline(operations) else existing_tables(operations)
    for t in reversed(tables.metadata.sorted_tables):
        if existing is None or t.name in existing:
            operations.impl.drop_table(t)


@Operations.implementation_for(QueueBackfillOp)
@for_alembic
def _queue_backfill(operations: Operations, operation: QueueBackfillOp) -> None:
    definition = migration_definitions(operations).require(operation.name)
    tuning = definition.tuning.replace(operation.overrides)
    arguments = definition.bind_arguments(operation.params)
    if offline(operations):
        operations.execute(offline_queue_statement(definition, tuning, dialect_name(operations), arguments))
        return
    connection = operations.get_bind()
    store = Store(connection)
    store.check_tables()
    # The definition is checked against the schema as this migration leaves it, so a wrong
    # table or column fails the deploy instead of the first worker.
    resolve(connection, definition)
    active = store.active_run(definition.name, connection=connection)
    if active is not None:
        logger.info("backfill %s already has an active run (run %s, %s): not queued again", *ident(active))
        return
    latest = store.latest_run(definition.name, connection=connection)
    if (
        latest is not None
        and latest.status is RunStatus.FINISHED
        and latest.params == params.encode(definition.parameters, arguments)
    ):
        logger.info("backfill %s has finished already (run %s, %s): not queued again", *ident(latest))
        return
    run = store.create_run(definition, tuning, connection=connection, started_by=MIGRATION_ACTOR, arguments=arguments)
    logger.info("backfill %s queued (run %s): workers start it once this migration commits", run.name, run.id)


def ident(run: Run) -> tuple[str, int, str]:
    return run.name, run.id, run.status.value


@Operations.implementation_for(ForgetBackfillOp)
@for_alembic
def _forget_backfill(operations: Operations, operation: ForgetBackfillOp) -> None:
    if not offline(operations) and len(existing_tables(operations)) < len(tables.metadata.tables):
        return
    for statement in statements.forget_runs(operation.name):
        operations.execute(statement)
    logger.info("backfill %s: runs forgotten", operation.name)


@Operations.implementation_for(EnsureBackfillFinishedOp)
@for_alembic
def _ensure_backfill_finished(operations: Operations, operation: EnsureBackfillFinishedOp) -> None:
    name = operation.name
    definitions = migration_definitions(operations)
    definitions.require(name)
    policy = finalize_policy(operations, operation.finalize)
    if offline(operations):
        if dialect_name(operations) != "postgresql":
            raise OfflineModeError(
                f"op.ensure_backfill_finished('{name}') cannot be written as SQL for "
                f"{dialect_name(operations)}: run this revision online, after `backfill status {name}` "
                "shows it finished"
            )
        operations.execute(RequireFinished(name))
        return
    app = App(operations.get_bind(), definitions)
    app.store.check_tables()
    run = app.store.latest_run(name)
    if run is not None and run.status is RunStatus.FINISHED:
        logger.info("backfill %s is finished (run %s)", name, run.id)
        return
    if policy.mode is Finalize.NEVER or (run is not None and run.status in (RunStatus.PAUSED, RunStatus.CANCELLED)):
        raise UnfinishedBackfillError(unfinished(app, name, run))
    if policy.mode is Finalize.AUTO:
        left = rows_left(app, name, run)
        if left > policy.max_rows:
            why = f"about {left:,} rows are left, more than the {policy.max_rows:,} a migration finishes inline"
            raise UnfinishedBackfillError(unfinished(app, name, run, f"{why} ({FINALIZE_MAX_ROWS_ENV})"))
    if run is not None and run.status is RunStatus.FAILED:
        _, requeued = app.retry(name, actor=MIGRATION_ACTOR)
        logger.info("backfill %s: %s failed batch(es) of run %s re-queued", name, requeued, run.id)
    run_inline(app, name, "finalizing inline, inside this migration")


@Operations.implementation_for(RunBackfillOp)
@for_alembic
def _run_backfill(operations: Operations, operation: RunBackfillOp) -> None:
    definitions = migration_definitions(operations)
    definition = definitions.require(operation.name)
    definition.tuning.replace(operation.overrides)
    definition.bind_arguments(operation.params)
    if offline(operations):
        raise OfflineModeError(
            f"op.run_backfill('{operation.name}') cannot be written as SQL: run this revision online "
            "(it runs the backfill's batches inside the migration)"
        )
    app = App(operations.get_bind(), definitions)
    app.store.check_tables()
    run_inline(
        app, operation.name, "running inline, inside this migration", params=operation.params, **operation.overrides
    )


@Operations.implementation_for(AddNotNullOp)
@for_alembic
def _add_not_null(operations: Operations, operation: AddNotNullOp) -> None:
    add_not_null(operations, operation)
