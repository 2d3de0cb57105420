"""What status, metrics and planners read: batch counts and lists, recent batches and events,
rows done in a window, and the database's clock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, case, func, null, select

from backfill import tables
from backfill.clock import plus_seconds
from backfill.status import BatchStatus, Phase
from backfill.store.base import StoreBase, batches
from backfill.store.records import BatchRecord, BatchStats, EventRecord


class ReadsMixin(StoreBase):
    def db_time(self) -> datetime:
        """The database's current time: what status measures elapsed times and rates against."""
        with self.reading() as conn:
            now: datetime = conn.execute(select(self.now())).scalar_one()
        return now

    def running_count(self, run_id: int, connection: Connection) -> int:
        """The run's batches in a worker's hands now (its sessions busy in the database)."""
        query = select(func.count()).where(batches.c.run_id == run_id, batches.c.status == BatchStatus.RUNNING.value)
        return int(connection.execute(query).scalar_one())

    def batch_counts(self, run_id: int) -> dict[BatchStatus, int]:
        return self.batch_stats(run_id).counts

    def batch_stats(self, run_id: int) -> BatchStats:
        """Counts by status, the planned rows, and when the run's batches last moved (one
        grouped read: ``status`` stays instant on a run of a million batches)."""
        b = batches.c
        with self.reading() as conn:
            rows = conn.execute(
                select(b.status, b.phase, func.count(), func.sum(b.rows), func.max(b.started_at),
                       func.max(b.finished_at), func.min(b.dispatched_at), func.min(b.lease_expires_at))
                .where(b.run_id == run_id)
                .group_by(b.status, b.phase)
            ).all()  # fmt: skip
            first = conn.execute(select(b.first_key).where(b.run_id == run_id, b.seq == 0)).scalar()
        counts = dict.fromkeys(BatchStatus, 0)
        planned_main = 0
        moved: list[datetime] = []
        dispatched: list[datetime] = []
        leases: list[datetime] = []
        for status, phase, n, planned, started, finished, dispatch, lease in rows:
            counts[BatchStatus(status)] += n
            if phase == Phase.MAIN and status != BatchStatus.SPLIT:
                planned_main += int(planned or 0)
            moved += [t for t in (started, finished) if t is not None]
            if status == BatchStatus.PENDING and dispatch is not None:
                dispatched.append(dispatch)
            if status == BatchStatus.RUNNING and lease is not None:
                leases.append(lease)
        return BatchStats(
            counts,
            planned_main,
            first,
            last_moved_at=max(moved, default=None),
            oldest_dispatch_at=min(dispatched, default=None),
            first_lease_end=min(leases, default=None),
        )

    def duration_counts(self, run_id: int, bounds_seconds: Sequence[float]) -> tuple[list[int], int, float]:
        """How many of the run's succeeded batches took at most each bound, how many there
        are, and their total seconds: a histogram, counted by the database in one query."""
        b = batches.c
        ms = b.duration_ms
        columns = [func.sum(case((ms <= bound * 1000, 1), else_=0)) for bound in bounds_seconds]
        query = select(*columns, func.count(), func.coalesce(func.sum(ms), 0)).where(
            b.run_id == run_id, b.status == BatchStatus.SUCCEEDED.value
        )
        with self.reading() as conn:
            row = conn.execute(query).one()
        return [int(row[i] or 0) for i in range(len(bounds_seconds))], int(row[-2]), float(row[-1]) / 1000

    def recent_batches(self, run_id: int, limit: int = 10) -> list[BatchRecord]:
        """The run's latest finished batches, newest first."""
        query = (
            select(batches)
            .where(batches.c.run_id == run_id, batches.c.status == BatchStatus.SUCCEEDED.value)
            .order_by(batches.c.finished_at.desc())
            .limit(limit)
        )
        with self.reading() as conn:
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
        with self.reading() as conn:
            return [EventRecord(**r._mapping) for r in conn.execute(query)]

    def actions_of(self, run_id: int, *, limit: int = 10) -> list[EventRecord]:
        """Who did what to the run, newest first: its run-level events that name an actor (the
        start, pause, resume, cancel, retry and tune of the CLI, the dashboard or a migration;
        the workers' own run changes name none)."""
        ev = tables.events
        query = (
            select(ev, null().label("seq"))
            .where(ev.c.run_id == run_id, ev.c.batch_id.is_(None), ev.c.worker.is_not(None))
            .order_by(ev.c.id.desc())
            .limit(limit)
        )
        with self.reading() as conn:
            return [EventRecord(**r._mapping) for r in conn.execute(query)]

    def open_batches(self, run_id: int) -> list[BatchRecord]:
        """Batches planned and not yet done (pending or running), in key order."""
        query = (
            select(batches)
            .where(
                batches.c.run_id == run_id,
                batches.c.status.in_([BatchStatus.PENDING.value, BatchStatus.RUNNING.value]),
            )
            .order_by(batches.c.seq)
        )
        with self.reading() as conn:
            return [BatchRecord.from_row(r) for r in conn.execute(query)]

    def batches_of(self, run_id: int, status: BatchStatus | None = None) -> list[BatchRecord]:
        query = select(batches).where(batches.c.run_id == run_id).order_by(batches.c.seq)
        if status is not None:
            query = query.where(batches.c.status == status.value)
        with self.reading() as conn:
            return [BatchRecord.from_row(r) for r in conn.execute(query)]

    def get_batch(self, batch_id: int) -> BatchRecord | None:
        with self.reading() as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).first()
            return BatchRecord.from_row(row) if row is not None else None

    def recent_rows(self, run_id: int, seconds: float) -> int:
        """Rows of the batches that succeeded in the last ``seconds`` (the database's clock)."""
        with self.reading() as conn:
            return int(
                conn.execute(
                    select(func.coalesce(func.sum(batches.c.rows), 0)).where(
                        batches.c.run_id == run_id,
                        batches.c.status == BatchStatus.SUCCEEDED.value,
                        batches.c.finished_at >= plus_seconds(self.now(), -seconds),
                    )
                ).scalar_one()
            )
