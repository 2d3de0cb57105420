"""The store's plumbing: connections, transactions whose events are logged only once they have
committed, guarded status moves, and the database's clock."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, event, exists, extract, func, or_, select, update
from sqlalchemy.sql.dml import Update

from backfill import events, tables
from backfill.clock import SERVER_TIME, DatabaseTime
from backfill.database import reading
from backfill.errors import RunStateError
from backfill.events import Event
from backfill.keyset import Span
from backfill.status import BatchStatus, RunStatus
from backfill.store.records import BatchRecord, Refusal, Run, batch_values
from backfill.store.schema import check_checkpoint_tables, create_checkpoint_tables
from backfill.transitions import Move

runs = tables.runs
batches = tables.batches

_EVENTS = "backfill_events"
"""``connection.info`` key: a stack of event lists, one per open store transaction."""


class Undo(Exception):
    """Roll the transaction back: the guarded write that had to come next did not happen."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


class StoreBase:
    """The checkpoint tables, through an engine or through one borrowed connection.

    Given a connection (a migration finalizing a backfill inline), every transition runs on it
    inside a savepoint, so the whole run commits or rolls back with the migration, and sees the
    schema changes the migration has made but not yet committed.
    """

    def __init__(self, bind: Engine | Connection, *, time: DatabaseTime = SERVER_TIME) -> None:
        self.bind = bind
        self.engine = bind if isinstance(bind, Engine) else bind.engine
        self.time = time
        self._tables_seen = False
        self._statements: dict[Any, Any] = {}
        """Hot-path statements, built once per store (see ``CompletionMixin._complete_statement``)."""

    @property
    def borrowed(self) -> bool:
        return isinstance(self.bind, Connection)

    def now(self) -> ColumnElement[datetime]:
        """The database's current time, as a SQL expression for the statement being built."""
        return self.time.now()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (and for a batch's own transaction)."""
        if isinstance(self.bind, Connection):
            yield self.bind
        else:
            with self.bind.connect() as connection:
                yield connection

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection that only reads: on SQLite it reads a snapshot beside the writer rather
        than queueing for the write lock. (A borrowed connection is used as it is.)"""
        if isinstance(self.bind, Connection):
            yield self.bind
            return
        with reading(self.bind) as connection:
            yield connection

    def _read_borrowed_or_new(self, connection: Connection | None) -> Any:
        """Read on the caller's connection (a migration's), or on a reading one."""
        if connection is not None:
            return _Borrowed(connection)
        return self.reading()

    @contextmanager
    def transaction(self, connection: Connection) -> Iterator[Connection]:
        """A transaction on ``connection`` (a savepoint when the connection is borrowed).

        The events recorded in it are logged once it has committed, and dropped if it rolls back.
        In a savepoint of a borrowed connection they wait for that connection's own commit: a
        migration that rolls back logs nothing of what it did.
        """
        queued: list[Event] = []
        stack: list[list[Event]] = connection.info.setdefault(_EVENTS, [])
        stack.append(queued)
        try:
            with connection.begin_nested() if self.borrowed else connection.begin():
                yield connection
        except BaseException:
            if not self.borrowed:
                _end_failed_commit(connection)
            raise
        finally:
            stack.remove(queued)
        if self.borrowed:
            _log_at_commit(connection, queued)
        else:
            events.log(queued)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.connect() as connection, self.transaction(connection):
            yield connection

    def _record(self, conn: Connection, *changes: Event) -> None:
        """Keep state changes in ``backfill_events``, inside the transaction making them."""
        if not changes:
            return
        conn.execute(tables.events.insert().values(at=self.now()), [change.row() for change in changes])
        self._will_log(conn, *changes)

    @staticmethod
    def _will_log(conn: Connection, *changes: Event) -> None:
        """Queue events for the log: with the store transaction open on ``conn``, or, on a
        caller's own transaction (a migration's), for that transaction's commit."""
        stack: list[list[Event]] = conn.info.get(_EVENTS) or []
        if stack:
            stack[-1].extend(changes)
        else:
            _log_at_commit(conn, list(changes))

    def _borrowed_or_new(self, connection: Connection | None) -> Any:
        """Use the caller's connection and transaction (a migration's), or a fresh one."""
        if connection is not None:
            return _Borrowed(connection)
        return self.begin()

    # -- guarded moves ------------------------------------------------------------------------

    def _move_run(self, run_id: int, move: Move[RunStatus], **changes: Any) -> Update:
        """``UPDATE backfill_runs`` along one edge: the status guard is in the statement."""
        values: dict[str, Any] = {"status": move.target.value, "updated_at": self.now(), **changes}
        if move.target.is_over:
            values["finished_at"] = self.now()
            values["active_name"] = None
        return update(runs).where(runs.c.id == run_id, one_of(runs.c.status, move.source_values)).values(values)

    @staticmethod
    def _move_batches(move: Move[BatchStatus], on: Any = batches, **changes: Any) -> Update:
        """``UPDATE backfill_batches`` along one edge; the caller adds which batches. ``on`` may
        be an alias of the table (PostgreSQL's completing statement uses short ones)."""
        return update(on).where(one_of(on.c.status, move.source_values)).values(status=move.target.value, **changes)

    @staticmethod
    def _lock_run(conn: Connection, run_id: int) -> None:
        """Take the run row's lock before deciding from the batches: every write that opens a
        batch also writes the run row, so from here until commit none can slip in unseen.
        (SQLite's writers are serialised by ``BEGIN IMMEDIATE`` already.)"""
        if conn.dialect.name != "sqlite":
            conn.execute(select(runs.c.id).where(runs.c.id == run_id).with_for_update())

    def _add_batches(
        self,
        conn: Connection,
        backfill: str,
        batch: BatchRecord,
        spans: Sequence[Span],
        next_seq: int,
        changes: list[Event],
    ) -> int:
        """Add the batches that replace ``batch`` over ``spans``; returns the next free seq."""
        for span in spans:
            new_id = conn.execute(
                batches.insert()
                .values({**batch_values(batch.run_id, next_seq, batch.phase, span), "created_at": self.now()})
                .returning(batches.c.id)
            ).scalar_one()
            changes.append(
                Event(backfill=backfill, run_id=batch.run_id, after=BatchStatus.PENDING, batch_id=new_id, seq=next_seq)
            )
            next_seq += 1
        return next_seq

    # -- schema -------------------------------------------------------------------------------

    def create_tables(self) -> None:
        create_checkpoint_tables(self.bind)

    def drop_tables(self) -> None:
        tables.metadata.drop_all(self.bind)

    def check_tables(self) -> None:
        """The checkpoint tables exist (checked once per store: they do not go away mid-run)."""
        if not self._tables_seen:
            check_checkpoint_tables(self.bind)
            self._tables_seen = True

    # -- reading one row ----------------------------------------------------------------------

    @staticmethod
    def _run(conn: Connection, run_id: int) -> Run:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise RunStateError(f"run {run_id} does not exist")
        return Run.from_row(row)

    @staticmethod
    def _batch(conn: Connection, batch_id: int) -> BatchRecord:
        return BatchRecord.from_row(conn.execute(select(batches).where(batches.c.id == batch_id)).one())


_REPLICATION = func.pg_stat_get_wal_senders().table_valued("replay_lag").alias("senders")
"""The function under ``pg_stat_replication``, alone: the view also joins every session's
activity, which cost a claim half a millisecond to plan and run."""


def claimable(run: Any, now: Any, dialect: str) -> list[ColumnElement[bool]]:
    """A run whose batches may be claimed now (``run``: the runs table or a CTE of its columns):
    running, not held, no operator's throttle in force, and on PostgreSQL no streaming replica
    lagging past the run's ``max_replica_lag``. Every claim is guarded by it in the statement
    that makes it, so a hold, a throttle or a lagging replica takes effect at the next claim of
    every worker, whatever they planned or were sent before (the monitor then says why)."""
    guards = [
        run.status == RunStatus.RUNNING.value,
        run.held_reason.is_(None),
        or_(run.throttled_until.is_(None), run.throttled_until <= now),
    ]
    if dialect == "postgresql":
        lagging = exists().where(extract("epoch", _REPLICATION.c.replay_lag) > run.max_replica_lag)
        guards.append(or_(run.max_replica_lag == 0, ~lagging))
    return guards


def one_of(column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN (values)``, written out as equalities: constant, so the hot-path statements
    compile once to plain SQL (an IN list is rendered at execution time)."""
    return or_(*(column == v for v in values))


def _end_failed_commit(connection: Connection) -> None:
    """Roll back what a failed COMMIT left open. SQLite keeps a transaction (and the database's
    write lock) after a COMMIT fails — a deferred foreign key the work broke, a busy reader —
    while SQLAlchemy counts it as over: a chain keeps its connection, so the lock would stay
    with it, and every other connection (the one recording the batch's failure first) would
    wait for it until it gives up."""
    if connection.dialect.name != "sqlite" or connection.closed or connection.invalidated:
        return
    driver = connection.connection.driver_connection
    if driver is not None and driver.in_transaction:
        driver.rollback()


class _Borrowed:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def __enter__(self) -> Connection:
        return self.connection

    def __exit__(self, *exc: object) -> None:
        return None


_WAITING: weakref.WeakKeyDictionary[Connection, list[Event]] = weakref.WeakKeyDictionary()
"""Events of savepoints on a borrowed connection, waiting for that connection's own commit."""


def _log_at_commit(connection: Connection, queued: list[Event]) -> None:
    if not queued:
        return
    waiting = _WAITING.get(connection)
    if waiting is None:
        waiting = _WAITING[connection] = []

        def flush(conn: Connection) -> None:
            events.log(list(waiting))
            waiting.clear()

        def drop(conn: Connection) -> None:
            waiting.clear()

        event.listen(connection, "commit", flush)
        event.listen(connection, "rollback", drop)
    waiting.extend(queued)


__all__ = ["StoreBase", "batches", "claimable", "runs"]
