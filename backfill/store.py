"""The checkpoint store: every state a run or a batch can be in, and every move between them.

Each transition is one guarded UPDATE (``WHERE status = ...``, or the lease token a claim
handed out), so two processes racing for the same move cannot both win: the loser sees a
rowcount of zero. That is what makes a duplicate delivery, a second scheduler or a resumed
runner harmless.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    and_,
    case,
    exists,
    func,
    inspect,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from backfill import events, tables
from backfill.definition import Backfill, Key, Tuning
from backfill.errors import RunStateError, StoreMissingError
from backfill.events import Event
from backfill.keyset import Span, encode_key
from backfill.status import BatchStatus, Phase, RunStatus

runs = tables.runs
batches = tables.batches
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    status: RunStatus
    phase: Phase
    table_name: str
    schema_name: str | None
    key_columns: tuple[str, ...]
    cursor: list[Any] | None
    end_key: list[Any] | None
    planned_all: bool
    next_seq: int
    tuning: Tuning
    held_reason: str | None
    held_since: datetime | None
    rows_total: int | None
    rows_total_estimated: bool
    rows_done: int
    rows_affected: int
    batches_done: int
    batches_failed: int
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    last_error: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Run:
        m = row._mapping
        return _build(
            cls,
            m,
            status=RunStatus(m["status"]),
            phase=Phase(m["phase"]),
            key_columns=tuple(m["key_columns"]),
            planned_all=bool(m["planned_all"]),
            rows_total_estimated=bool(m["rows_total_estimated"]),
            tuning=Tuning(**{name: m[name] for name in Tuning.__dataclass_fields__}),
        )


@dataclass(frozen=True)
class BatchRecord:
    id: int
    run_id: int
    seq: int
    phase: Phase
    first_key: list[Any]
    last_key: list[Any]
    rows: int
    status: BatchStatus
    attempts: int
    rows_affected: int | None
    duration_ms: float | None
    worker: str | None
    lease_expires_at: datetime | None
    dispatched_at: datetime | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> BatchRecord:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> BatchRecord:
        return _build(cls, m, phase=Phase(m["phase"]), status=BatchStatus(m["status"]))


def _build(cls: type[T], values: Mapping[Any, Any], **converted: Any) -> T:
    """A record from a row: every field by its column's name, some converted on the way."""
    names = (f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]  # a dataclass type
    return cls(**{name: converted[name] if name in converted else values.get(name) for name in names})


@dataclass(frozen=True)
class BatchStats:
    counts: dict[BatchStatus, int]
    planned_main_rows: int
    """Rows in the batches planned so far by the main sweep."""
    first_key: list[Any] | None
    """The first key of the run's first batch: where the main sweep started."""


@dataclass(frozen=True)
class EventRecord:
    id: int
    run_id: int
    batch_id: int | None
    seq: int | None
    before: str | None
    after: str
    worker: str | None
    error: str | None
    at: datetime


@dataclass(frozen=True)
class Claim:
    """A batch handed to one worker: the token proves ownership when the batch commits."""

    backfill: str
    batch: BatchRecord
    token: str
    worker: str

    def event(
        self, after: BatchStatus, before: BatchStatus | None = BatchStatus.RUNNING, error: str | None = None
    ) -> Event:
        return Event(self.backfill, self.batch.run_id, after, before, self.batch.id, self.batch.seq, self.worker, error)


class Store:
    """The checkpoint tables, through an engine or through one borrowed connection.

    Given a connection (a migration finalizing a backfill inline), every transition runs on it
    inside a savepoint, so the whole run commits or rolls back with the migration, and sees the
    schema changes the migration has made but not yet committed.
    """

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind
        self.engine = bind if isinstance(bind, Engine) else bind.engine

    @property
    def borrowed(self) -> bool:
        return isinstance(self.bind, Connection)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (and for a batch's own transaction)."""
        if isinstance(self.bind, Connection):
            yield self.bind
        else:
            with self.bind.connect() as connection:
                yield connection

    @contextmanager
    def transaction(self, connection: Connection) -> Iterator[Connection]:
        """A transaction on ``connection`` (a savepoint when the connection is borrowed); the
        events recorded in it are logged once it has committed."""
        with connection.begin_nested() if self.borrowed else connection.begin():
            yield connection
        events.log(connection.info.pop(_EVENTS, []))

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.connect() as connection, self.transaction(connection):
            yield connection

    def _record(self, conn: Connection, *changes: Event) -> None:
        """Keep state changes in ``backfill_events``, inside the transaction making them."""
        if not changes:
            return
        at = utcnow()
        conn.execute(tables.events.insert(), [change.row(at) for change in changes])
        conn.info.setdefault(_EVENTS, []).extend(changes)

    # -- schema -------------------------------------------------------------------------------

    def create_tables(self) -> None:
        tables.metadata.create_all(self.bind)

    def drop_tables(self) -> None:
        tables.metadata.drop_all(self.bind)

    def check_tables(self) -> None:
        inspector = inspect(self.bind)
        if not all(inspector.has_table(t.name) for t in tables.metadata.sorted_tables):
            raise StoreMissingError(
                "the checkpoint tables (backfill_runs, backfill_batches, backfill_events) do not exist in this "
                "database: run `backfill init-db`, or op.create_backfill_tables() in a migration"
            )

    # -- runs ---------------------------------------------------------------------------------

    def create_run(
        self,
        definition: Backfill,
        tuning: Tuning,
        *,
        connection: Connection | None = None,
    ) -> Run:
        """Record a new pending run; refuses when the name already has an active one."""
        values = new_run_values(definition, tuning, utcnow())
        try:
            with self._transaction(connection) as conn:
                run_id = conn.execute(runs.insert().values(values).returning(runs.c.id)).scalar_one()
                self._record(conn, Event(definition.name, run_id, RunStatus.PENDING))
                return self._run(conn, run_id)
        except IntegrityError:
            active = self.active_run(definition.name, connection=connection)
            if active is None:
                raise
            raise RunStateError(_already_active(active)) from None

    def get_run(self, run_id: int, *, connection: Connection | None = None) -> Run:
        with self._transaction(connection) as conn:
            return self._run(conn, run_id)

    def active_run(self, name: str, *, connection: Connection | None = None) -> Run | None:
        with self._transaction(connection) as conn:
            row = conn.execute(select(runs).where(runs.c.active_name == name)).first()
            return Run.from_row(row) if row else None

    def latest_run(self, name: str, *, connection: Connection | None = None) -> Run | None:
        with self._transaction(connection) as conn:
            row = conn.execute(select(runs).where(runs.c.name == name).order_by(runs.c.id.desc()).limit(1)).first()
            return Run.from_row(row) if row else None

    def list_runs(self, name: str | None = None, *, latest_only: bool = True) -> list[Run]:
        """Runs, newest first; by default only the newest run of each name."""
        query = select(runs).order_by(runs.c.id.desc())
        if name is not None:
            query = query.where(runs.c.name == name)
        if latest_only:
            newest = select(func.max(runs.c.id)).group_by(runs.c.name).scalar_subquery()
            query = query.where(runs.c.id.in_(newest))
        with self.connect() as conn:
            return [Run.from_row(r) for r in conn.execute(query)]

    def runnable_runs(self) -> list[Run]:
        """Runs a scheduler should look after: queued or running."""
        query = select(runs).where(runs.c.status.in_([RunStatus.PENDING, RunStatus.RUNNING])).order_by(runs.c.id)
        with self.connect() as conn:
            return [Run.from_row(r) for r in conn.execute(query)]

    def activate(self, run: Run, *, end: Key | None, rows_total: int, estimated: bool) -> Run | None:
        """pending -> running, fixing the run's end; None if another process got there first."""
        return self.transition(
            run.id,
            RunStatus.RUNNING,
            allowed_from=[RunStatus.PENDING],
            end_key=encode_key(end),
            rows_total=rows_total,
            rows_total_estimated=estimated,
            started_at=utcnow(),
        )

    def transition(
        self,
        run_id: int,
        to: RunStatus,
        *,
        allowed_from: Iterable[RunStatus],
        error: str | None = None,
        **changes: Any,
    ) -> Run | None:
        """Move a run between statuses, with ``changes`` to its other columns; None when it
        was not in one of ``allowed_from``."""
        now = utcnow()
        values: dict[str, Any] = {"status": to, "updated_at": now, **changes}
        if to.is_over:
            values["finished_at"] = now
            values["active_name"] = None
        if error is not None:
            values["last_error"] = error
        with self.begin() as conn:
            before = self._run(conn, run_id)
            changed = conn.execute(
                update(runs).where(runs.c.id == run_id, runs.c.status.in_(list(allowed_from))).values(values)
            ).rowcount
            if not changed:
                return None
            self._record(conn, Event(before.name, run_id, to, before=before.status, error=error))
            return self._run(conn, run_id)

    def finish(self, run: Run) -> Run | None:
        """running -> finished once every row is accounted for; the total becomes exact."""
        return self.transition(
            run.id,
            RunStatus.FINISHED,
            allowed_from=[RunStatus.RUNNING],
            rows_total=runs.c.rows_done,
            rows_total_estimated=False,
        )

    def reopen_failed(self, run: Run, splits: Mapping[int, Sequence[Span]] | None = None) -> tuple[Run, int]:
        """Re-queue the failed batches of a run and make it running again (``backfill retry``).

        A failed batch named in ``splits`` is replaced by new batches over those spans of its
        keys (smaller ones, to get past a timeout or isolate a bad row), and marked split.
        """
        splits = splits or {}
        now = utcnow()
        with self.begin() as conn:
            failed = [
                BatchRecord.from_row(r)
                for r in conn.execute(
                    select(batches)
                    .where(batches.c.run_id == run.id, batches.c.status == BatchStatus.FAILED)
                    .order_by(batches.c.seq)
                )
            ]
            changes: list[Event] = []
            next_seq = conn.execute(select(runs.c.next_seq).where(runs.c.id == run.id)).scalar_one()
            for batch in failed:
                spans = splits.get(batch.id)
                after = BatchStatus.SPLIT if spans else BatchStatus.PENDING
                conn.execute(
                    update(batches)
                    .where(batches.c.id == batch.id, batches.c.status == BatchStatus.FAILED)
                    .values(status=after, attempts=0, lease_token=None, dispatched_at=None, finished_at=None)
                )
                changes.append(Event(run.name, run.id, after, BatchStatus.FAILED, batch.id, batch.seq))
                next_seq = self._replace(conn, run.name, batch, spans or (), next_seq, now, changes)
            values: dict[str, Any] = {
                "batches_failed": runs.c.batches_failed - len(failed),
                "next_seq": next_seq,
                "updated_at": now,
            }
            if run.status == RunStatus.FAILED:
                values.update(status=RunStatus.RUNNING, active_name=run.name, finished_at=None, last_error=None)
                changes.append(Event(run.name, run.id, RunStatus.RUNNING, RunStatus.FAILED))
            try:
                conn.execute(update(runs).where(runs.c.id == run.id).values(values))
            except IntegrityError:
                raise RunStateError(
                    f"backfill '{run.name}' has a newer active run: retry that one, or cancel it first"
                ) from None
            self._record(conn, *changes)
            return self._run(conn, run.id), len(failed)

    def hold(self, run: Run, reason: str | None) -> Run:
        """Mark a running run held (nothing new starts) with its reason, or released (None)."""
        now = utcnow()
        with self.begin() as conn:
            changed = conn.execute(
                update(runs)
                .where(runs.c.id == run.id, runs.c.status == RunStatus.RUNNING)
                .values(
                    held_reason=reason,
                    held_since=case((runs.c.held_reason.is_(None), now), else_=runs.c.held_since) if reason else None,
                    updated_at=now,
                )
            ).rowcount
            if changed and reason != run.held_reason:
                note = f"held: {reason}" if reason else f"released after: {run.held_reason}"
                self._record(conn, Event(run.name, run.id, RunStatus.RUNNING, RunStatus.RUNNING, error=note))
            return self._run(conn, run.id)

    def tune(self, run: Run, tuning: Tuning) -> Run:
        """Change a run's knobs; batches planned or claimed from now on use them."""
        with self.begin() as conn:
            conn.execute(update(runs).where(runs.c.id == run.id).values(**_tuning_values(tuning), updated_at=utcnow()))
            return self._run(conn, run.id)

    # -- planning -----------------------------------------------------------------------------

    def record_batches(self, run: Run, spans: Sequence[Span]) -> list[BatchRecord] | None:
        """Add the next batches and move the cursor past them, in one transaction.

        Guarded by ``next_seq``: if another planner moved the run on since ``run`` was read,
        nothing is written and None comes back, so batches never overlap.
        """
        now = utcnow()
        rows = [_batch_values(run.id, run.next_seq + i, run.phase, span, now) for i, span in enumerate(spans)]
        with self.begin() as conn:
            moved = conn.execute(
                update(runs)
                .where(runs.c.id == run.id, runs.c.next_seq == run.next_seq, runs.c.status == RunStatus.RUNNING)
                .values(cursor=encode_key(spans[-1].last), next_seq=run.next_seq + len(spans), updated_at=now)
            ).rowcount
            if not moved:
                return None
            ids = (
                conn.execute(batches.insert().returning(batches.c.id, sort_by_parameter_order=True), rows)
                .scalars()
                .all()
            )
            self._record(
                conn,
                *(
                    Event(run.name, run.id, BatchStatus.PENDING, None, i, r["seq"])
                    for i, r in zip(ids, rows, strict=True)
                ),
            )
        return [BatchRecord.from_mapping({**row, "id": batch_id}) for batch_id, row in zip(ids, rows, strict=True)]

    def mark_planned_all(self, run: Run) -> bool:
        with self.begin() as conn:
            return bool(
                conn.execute(
                    update(runs)
                    .where(runs.c.id == run.id, runs.c.next_seq == run.next_seq)
                    .values(planned_all=True, updated_at=utcnow())
                ).rowcount
            )

    def start_catchup(self, run: Run, cursor: Key | None) -> bool:
        with self.begin() as conn:
            return bool(
                conn.execute(
                    update(runs)
                    .where(runs.c.id == run.id, runs.c.phase == Phase.MAIN, runs.c.next_seq == run.next_seq)
                    .values(phase=Phase.CATCHUP, cursor=encode_key(cursor), planned_all=False, updated_at=utcnow())
                ).rowcount
            )

    # -- batches ------------------------------------------------------------------------------

    def batch_counts(self, run_id: int) -> dict[BatchStatus, int]:
        return self.batch_stats(run_id).counts

    def batch_stats(self, run_id: int) -> BatchStats:
        with self.connect() as conn:
            rows = conn.execute(
                select(batches.c.status, batches.c.phase, func.count(), func.sum(batches.c.rows))
                .where(batches.c.run_id == run_id)
                .group_by(batches.c.status, batches.c.phase)
            ).all()
            first = conn.execute(
                select(batches.c.first_key).where(batches.c.run_id == run_id, batches.c.seq == 0)
            ).scalar()
        counts = dict.fromkeys(BatchStatus, 0)
        planned_main = 0
        for status, phase, n, planned in rows:
            counts[BatchStatus(status)] += n
            if phase == Phase.MAIN and status != BatchStatus.SPLIT:
                planned_main += int(planned or 0)
        return BatchStats(counts, planned_main, first)

    def recent_batches(self, run_id: int, limit: int = 10) -> list[BatchRecord]:
        """The run's latest finished batches, newest first."""
        query = (
            select(batches)
            .where(batches.c.run_id == run_id, batches.c.status == BatchStatus.SUCCEEDED)
            .order_by(batches.c.finished_at.desc())
            .limit(limit)
        )
        with self.connect() as conn:
            return [BatchRecord.from_row(r) for r in conn.execute(query)]

    def events_of(self, run_id: int, *, limit: int = 20, errors_only: bool = False) -> list[EventRecord]:
        """The run's latest state changes, newest first."""
        ev = tables.events
        query = (
            select(ev, batches.c.seq)
            .select_from(ev.outerjoin(batches, batches.c.id == ev.c.batch_id))
            .where(ev.c.run_id == run_id)
            .order_by(ev.c.id.desc())
            .limit(limit)
        )
        if errors_only:
            query = query.where(ev.c.error.is_not(None))
        with self.connect() as conn:
            return [EventRecord(**r._mapping) for r in conn.execute(query)]

    def open_batches(self, run_id: int) -> list[BatchRecord]:
        """Batches planned and not yet done (pending or running), in key order."""
        query = (
            select(batches)
            .where(batches.c.run_id == run_id, batches.c.status.in_([BatchStatus.PENDING, BatchStatus.RUNNING]))
            .order_by(batches.c.seq)
        )
        with self.connect() as conn:
            return [BatchRecord.from_row(r) for r in conn.execute(query)]

    def batches_of(self, run_id: int, status: BatchStatus | None = None) -> list[BatchRecord]:
        query = select(batches).where(batches.c.run_id == run_id).order_by(batches.c.seq)
        if status is not None:
            query = query.where(batches.c.status == status)
        with self.connect() as conn:
            return [BatchRecord.from_row(r) for r in conn.execute(query)]

    def claim(self, run: Run, batch_id: int, worker: str, lease_seconds: float) -> Claim | None:
        """pending -> running for one worker, only while its run is running.

        Committed on its own, before the work starts, so that the attempt counts even if the
        worker dies, and so that the lease is visible to status and to the stuck-batch sweep.
        """
        token = secrets.token_hex(16)
        now = utcnow()
        run_is_running = exists().where(runs.c.id == batches.c.run_id, runs.c.status == RunStatus.RUNNING)
        target: ColumnElement[bool] = batches.c.id == batch_id
        if self.engine.dialect.name == "postgresql":
            # A claim another transaction is still making (its process frozen mid-claim, say)
            # is skipped, not waited for: the batch comes back once that transaction is gone.
            target = batches.c.id == (
                select(batches.c.id).where(batches.c.id == batch_id).with_for_update(skip_locked=True).scalar_subquery()
            )
        claim = (
            update(batches)
            .where(target, batches.c.status == BatchStatus.PENDING, run_is_running)
            .values(
                status=BatchStatus.RUNNING,
                attempts=batches.c.attempts + 1,
                worker=worker,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=now,
            )
        )
        with self.begin() as conn:
            if conn.dialect.update_returning:
                row = conn.execute(claim.returning(*batches.c)).first()
                if row is None:
                    return None
                claimed = Claim(run.name, BatchRecord.from_row(row), token, worker)
            else:
                if not conn.execute(claim).rowcount:
                    return None
                claimed = Claim(run.name, self._batch(conn, batch_id), token, worker)
            self._record(conn, claimed.event(BatchStatus.RUNNING, BatchStatus.PENDING))
            return claimed

    def extend_lease(self, claim: Claim, lease_seconds: float) -> bool:
        """The heartbeat of a batch in progress: its worker is alive, keep the batch its own."""
        with self.begin() as conn:
            return bool(
                conn.execute(
                    update(batches)
                    .where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
                    .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
                ).rowcount
            )

    def complete(self, conn: Connection, claim: Claim, *, rows_affected: int | None, duration_ms: float) -> bool:
        """Mark the batch succeeded inside the batch's own transaction.

        Returns False when the claim was lost (another worker re-claimed the batch after the
        lease ran out): the caller must roll back, so the work commits at most once.
        """
        now = utcnow()
        mark_done = (
            update(batches)
            .where(
                batches.c.id == claim.batch.id,
                batches.c.lease_token == claim.token,
                batches.c.status == BatchStatus.RUNNING,
            )
            .values(
                status=BatchStatus.SUCCEEDED,
                rows_affected=rows_affected,
                duration_ms=duration_ms,
                lease_token=None,
                lease_expires_at=None,
                error=None,
                finished_at=now,
            )
        )
        count_it = update(runs).values(
            rows_done=runs.c.rows_done + claim.batch.rows,
            rows_affected=runs.c.rows_affected + (rows_affected or 0),
            batches_done=runs.c.batches_done + 1,
            updated_at=now,
        )
        event = claim.event(BatchStatus.SUCCEEDED)
        if conn.dialect.name == "postgresql":
            # The per-batch path is hot: on PostgreSQL the three writes go in one round trip,
            # as data-modifying CTEs that run together or not at all.
            done = mark_done.returning(batches.c.id).cte("done")
            counted = (
                count_it.where(runs.c.id == claim.batch.run_id, exists(select(done.c.id)))
                .returning(runs.c.id)
                .cte("counted")
            )
            row = event.row(now)
            logged = (
                tables.events.insert()
                .from_select(
                    list(row),
                    select(*(literal(v, tables.events.c[k].type) for k, v in row.items())).where(
                        exists(select(done.c.id))
                    ),
                )
                .returning(tables.events.c.id)
                .cte("logged")
            )
            if (
                conn.execute(select(done.c.id).where(exists(select(counted.c.id)), exists(select(logged.c.id)))).first()
                is None
            ):
                return False
            conn.info.setdefault(_EVENTS, []).append(event)
            return True
        if not conn.execute(mark_done).rowcount:
            return False
        conn.execute(count_it.where(runs.c.id == claim.batch.run_id))
        self._record(conn, event)
        return True

    def record_retry(self, claim: Claim, error: str) -> bool:
        """Count one more attempt of a claimed batch after a transient error."""
        with self.begin() as conn:
            counted = conn.execute(
                update(batches)
                .where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
                .values(attempts=batches.c.attempts + 1, error=error)
            ).rowcount
            if counted:
                self._record(conn, claim.event(BatchStatus.RUNNING, error=f"retrying: {error}"))
            return bool(counted)

    def fail(self, claim: Claim, error: str) -> bool:
        """running -> failed, with the error kept on the batch and on its run."""
        now = utcnow()
        with self.begin() as conn:
            failed = conn.execute(
                update(batches)
                .where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
                .values(status=BatchStatus.FAILED, error=error, lease_token=None, finished_at=now)
            ).rowcount
            if failed:
                conn.execute(
                    update(runs)
                    .where(runs.c.id == claim.batch.run_id)
                    .values(
                        batches_failed=runs.c.batches_failed + 1,
                        # A run that already stopped keeps the reason it stopped for.
                        last_error=case(
                            (runs.c.status == RunStatus.RUNNING, f"batch {claim.batch.seq}: {error}"),
                            else_=runs.c.last_error,
                        ),
                        updated_at=now,
                    )
                )
                self._record(conn, claim.event(BatchStatus.FAILED, error=error))
            return bool(failed)

    def split(self, claim: Claim, spans: Sequence[Span], error: str) -> bool:
        """running -> split: a batch that ran out of time is replaced by smaller batches over
        the same keys, and the run plans smaller batches from now on."""
        now = utcnow()
        with self.begin() as conn:
            changed = conn.execute(
                update(batches)
                .where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
                .values(status=BatchStatus.SPLIT, error=error, lease_token=None, finished_at=now)
            ).rowcount
            if not changed:
                return False
            next_seq = conn.execute(select(runs.c.next_seq).where(runs.c.id == claim.batch.run_id)).scalar_one()
            changes = [claim.event(BatchStatus.SPLIT, error=error)]
            next_seq = self._replace(conn, claim.backfill, claim.batch, spans, next_seq, now, changes)
            smaller = max(1, max(span.rows for span in spans))
            conn.execute(
                update(runs)
                .where(runs.c.id == claim.batch.run_id)
                .values(
                    next_seq=next_seq,
                    batch_size=case((runs.c.batch_size > smaller, smaller), else_=runs.c.batch_size),
                    updated_at=now,
                )
            )
            self._record(conn, *changes)
            return True

    @staticmethod
    def _replace(
        conn: Connection,
        backfill: str,
        batch: BatchRecord,
        spans: Sequence[Span],
        next_seq: int,
        now: datetime,
        changes: list[Event],
    ) -> int:
        """Add the batches that replace ``batch`` over ``spans``; returns the next free seq."""
        for span in spans:
            new_id = conn.execute(
                batches.insert()
                .values(_batch_values(batch.run_id, next_seq, batch.phase, span, now))
                .returning(batches.c.id)
            ).scalar_one()
            changes.append(Event(backfill, batch.run_id, BatchStatus.PENDING, None, new_id, next_seq))
            next_seq += 1
        return next_seq

    def release_stale(self, run: Run, *, is_abandoned: Callable[[str], bool] | None = None) -> int:
        """Put back running batches whose lease ran out, or whose worker is known to be gone.

        A batch that already used all its attempts fails instead of going round again: a batch
        that kills its worker every time must not loop forever.
        """
        now = utcnow()
        with self.begin() as conn:
            running = conn.execute(
                select(
                    batches.c.id, batches.c.seq, batches.c.worker, batches.c.lease_expires_at, batches.c.attempts
                ).where(batches.c.run_id == run.id, batches.c.status == BatchStatus.RUNNING)
            ).all()
            stale = [
                r
                for r in running
                if (r.lease_expires_at is not None and r.lease_expires_at < now)
                or (is_abandoned is not None and r.worker is not None and is_abandoned(r.worker))
            ]
            for r in stale:
                give_up = r.attempts >= run.tuning.max_attempts
                error = f"worker {r.worker} stopped answering (lease lost) on attempt {r.attempts}"
                changed = conn.execute(
                    update(batches)
                    .where(batches.c.id == r.id, batches.c.status == BatchStatus.RUNNING)
                    .values(
                        status=BatchStatus.FAILED if give_up else BatchStatus.PENDING,
                        lease_token=None,
                        lease_expires_at=None,
                        dispatched_at=None,
                        error=error,
                        finished_at=now if give_up else None,
                    )
                ).rowcount
                if not changed:
                    continue
                after = BatchStatus.FAILED if give_up else BatchStatus.PENDING
                self._record(conn, Event(run.name, run.id, after, BatchStatus.RUNNING, r.id, r.seq, r.worker, error))
                if give_up:
                    conn.execute(
                        update(runs)
                        .where(runs.c.id == run.id)
                        .values(batches_failed=runs.c.batches_failed + 1, last_error=error, updated_at=now)
                    )
            return len(stale)

    def get_batch(self, batch_id: int) -> BatchRecord | None:
        with self.connect() as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).first()
            return BatchRecord.from_row(row) if row is not None else None

    def mark_dispatched(self, batch_id: int, *, unless_since: datetime) -> bool:
        """Record that a message for a pending batch is being sent; False when another
        dispatcher sent one after ``unless_since`` (so only one of them sends)."""
        with self.begin() as conn:
            return bool(
                conn.execute(
                    update(batches)
                    .where(
                        batches.c.id == batch_id,
                        batches.c.status == BatchStatus.PENDING,
                        or_(batches.c.dispatched_at.is_(None), batches.c.dispatched_at < unless_since),
                    )
                    .values(dispatched_at=utcnow())
                ).rowcount
            )

    def unmark_dispatched(self, batch_id: int) -> None:
        with self.begin() as conn:
            conn.execute(update(batches).where(batches.c.id == batch_id).values(dispatched_at=None))

    def active_runs_on(self, table_name: str, schema_name: str | None) -> list[Run]:
        query = select(runs).where(
            runs.c.active_name.is_not(None),
            runs.c.table_name == table_name,
            runs.c.schema_name.is_(None) if schema_name is None else runs.c.schema_name == schema_name,
        )
        with self.connect() as conn:
            return [Run.from_row(r) for r in conn.execute(query.order_by(runs.c.id))]

    def recent_rows(self, run_id: int, since: datetime) -> int:
        with self.connect() as conn:
            return int(
                conn.execute(
                    select(func.coalesce(func.sum(batches.c.rows), 0)).where(
                        and_(
                            batches.c.run_id == run_id,
                            batches.c.status == BatchStatus.SUCCEEDED,
                            batches.c.finished_at >= since,
                        )
                    )
                ).scalar_one()
            )

    # -- helpers ------------------------------------------------------------------------------

    def _transaction(self, connection: Connection | None) -> Any:
        """Use the caller's connection and transaction (a migration's), or a fresh one."""
        if connection is not None:
            return _Borrowed(connection)
        return self.begin()

    @staticmethod
    def _run(conn: Connection, run_id: int) -> Run:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise RunStateError(f"run {run_id} does not exist")
        return Run.from_row(row)

    @staticmethod
    def _batch(conn: Connection, batch_id: int) -> BatchRecord:
        return BatchRecord.from_row(conn.execute(select(batches).where(batches.c.id == batch_id)).one())


_EVENTS = "backfill_events"
"""Where a connection keeps the events of its open transaction until they are logged."""


def _tuning_values(tuning: Tuning) -> dict[str, Any]:
    return {name: getattr(tuning, name) for name in tuning.__dataclass_fields__}


def new_run_values(definition: Backfill, tuning: Tuning, now: Any) -> dict[str, Any]:
    """The row of a newly queued run (also rendered into SQL scripts by the Alembic ops)."""
    return {
        "name": definition.name,
        "active_name": definition.name,
        "status": RunStatus.PENDING.value,
        "phase": Phase.MAIN.value,
        "table_name": definition.table,
        "schema_name": definition.schema,
        "key_columns": list(definition.key),
        "planned_all": False,
        "next_seq": 0,
        **_tuning_values(tuning),
        "rows_total_estimated": False,
        "rows_done": 0,
        "rows_affected": 0,
        "batches_done": 0,
        "batches_failed": 0,
        "created_at": now,
        "updated_at": now,
    }


def _batch_values(run_id: int, seq: int, phase: Phase, span: Span, now: datetime) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "seq": seq,
        "phase": phase,
        "first_key": encode_key(span.first),
        "last_key": encode_key(span.last),
        "rows": span.rows,
        "status": BatchStatus.PENDING,
        "attempts": 0,
        "created_at": now,
    }


class _Borrowed:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def __enter__(self) -> Connection:
        return self.connection

    def __exit__(self, *exc: object) -> None:
        return None


def _already_active(run: Run) -> str:
    return (
        f"backfill '{run.name}' already has an active run (run {run.id}, {run.status}): "
        f"see `backfill status {run.name}`; `backfill cancel {run.name}` to drop it"
    )


__all__ = ["BatchRecord", "Claim", "Run", "Store", "utcnow"]
