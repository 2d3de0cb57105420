"""Batches in the hands of workers: claims and their leases, the rate cap's schedule, claims
given up or taken back from workers that stopped answering, and the marks of messages sent for
batches. (How a claim ends when its batch is done: ``completion``.)

Every time here is the database's. Every write that changes a run's counters locks the run row
first and is guarded by the run's status, so nothing counts once a run is over.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    update,
)

from backfill.clock import plus_seconds
from backfill.events import Event
from backfill.status import BatchStatus, RunStatus
from backfill.store.base import StoreBase, Undo, batches, claimable, runs
from backfill.store.records import BatchRecord, Claim, Refusal, Refused, Run
from backfill.transitions import WORKING, batch_move

CLAIM = batch_move(BatchStatus.PENDING, to=BatchStatus.RUNNING)
SUCCEED = batch_move(BatchStatus.RUNNING, to=BatchStatus.SUCCEEDED)
FAIL = batch_move(BatchStatus.RUNNING, to=BatchStatus.FAILED)
SPLIT = batch_move(BatchStatus.RUNNING, to=BatchStatus.SPLIT)
RELEASE = batch_move(BatchStatus.RUNNING, to=BatchStatus.PENDING)


RATE_RETRY_SECONDS = 0.005
"""The least wait after a claim the rate cap refused: the claim is simply tried again."""


class LeasesMixin(StoreBase):
    def claim(
        self,
        run: Run,
        batch_id: int | None,
        worker: str,
        lease_seconds: float,
        *,
        redispatch_after: float | None = None,
    ) -> Claim | Refused:
        """pending -> running for one worker, only while its run is running, unheld and not
        throttled (``claimable``) and, under a rate cap, only once the cap's schedule allows
        another batch. ``batch_id`` None: the run's next planned batch (by seq) that is free;
        with ``redispatch_after``, not one whose message went out less than that long ago
        (another chain starts from it).

        Committed on its own, before the work starts, so that the attempt counts even if the
        worker dies, and so that the lease is visible to status and to the stuck-batch sweep.
        """
        token = secrets.token_hex(16)
        try:
            with self.begin() as conn:
                chosen = batch_id
                if chosen is None:
                    chosen = conn.execute(self._next_pending(run.id, redispatch_after, claimable_only=True)).scalar()
                    if chosen is None:
                        return Refused(Refusal.NONE)
                if run.tuning.max_rows_per_second > 0:
                    wait = self._take_rate_slot(conn, run.id, chosen)
                    if wait:
                        return Refused(Refusal.RATE, wait)
                claimed = self._claim_in(conn, run.name, run.id, chosen, token, worker, lease_seconds)
                if claimed is None:
                    raise Undo(Refusal.TAKEN)
                self._record(conn, claimed.event(BatchStatus.RUNNING, BatchStatus.PENDING))
                return claimed
        except Undo:
            why = self._why_not(run.id)
            if why in (Refusal.NOT_RUNNING, Refusal.HELD) and batch_id is not None:
                # The message was spent on a run that does not run (or is held): forget it was
                # ever sent, so the first tick after the run runs again sends another.
                self.unmark_dispatched(batch_id)
            return Refused(why)

    def _claim_in(
        self, conn: Connection, backfill: str, run_id: int, batch_id: int, token: str, worker: str, lease: float
    ) -> Claim | None:
        """The guarded claim of one batch, inside the caller's transaction."""
        run_is_running = exists().where(runs.c.id == run_id, *claimable(runs.c, self.now(), self.engine.dialect.name))
        target: ColumnElement[bool] = batches.c.id == batch_id
        if conn.dialect.name == "postgresql":
            # A claim another transaction is still making (its process frozen mid-claim, say)
            # is skipped, not waited for: the batch comes back once that transaction is gone.
            target = batches.c.id == (
                select(batches.c.id).where(batches.c.id == batch_id).with_for_update(skip_locked=True).scalar_subquery()
            )
        claim = self._move_batches(
            CLAIM,
            attempts=batches.c.attempts + 1,
            worker=worker,
            lease_token=token,
            lease_expires_at=plus_seconds(self.now(), lease),
            started_at=self.now(),
        ).where(target, batches.c.run_id == run_id, run_is_running)
        if conn.dialect.update_returning:
            row = conn.execute(claim.returning(*batches.c)).first()
            return None if row is None else Claim(backfill, BatchRecord.from_row(row), token, worker)
        if not conn.execute(claim).rowcount:
            return None
        return Claim(backfill, self._batch(conn, batch_id), token, worker)

    def _next_pending(
        self, run_id: Any, redispatch_after: float | None, *, claimable_only: bool = False
    ) -> Select[Any]:
        """The id of the run's first free planned batch (locked, on PostgreSQL, skipping any that
        another transaction is claiming); with ``claimable_only``, none while the run may not
        claim (``claimable``)."""
        query = select(batches.c.id).where(batches.c.run_id == run_id, batches.c.status == BatchStatus.PENDING.value)
        if redispatch_after is not None:
            query = query.where(
                or_(
                    batches.c.dispatched_at.is_(None),
                    batches.c.dispatched_at < plus_seconds(self.now(), -redispatch_after),
                )
            )
        if claimable_only:
            query = query.where(
                exists().where(runs.c.id == run_id, *claimable(runs.c, self.now(), self.engine.dialect.name))
            )
        query = query.order_by(batches.c.seq).limit(1)
        if self.engine.dialect.name in ("postgresql", "mysql", "mariadb"):
            query = query.with_for_update(skip_locked=True)
        return query

    def _take_rate_slot(self, conn: Connection, run_id: int, batch_id: int) -> float:
        """The rate cap as a schedule on the run row (a generic cell rate algorithm): a batch
        may start once ``rate_next_at`` has come, and pushes it on by its rows / the cap. One
        guarded update, so any number of workers together stay within the cap. Returns 0 when
        the slot was taken, else the seconds to wait."""
        now = self.now()
        rows = select(batches.c.rows).where(batches.c.id == batch_id).scalar_subquery()
        start = case((or_(runs.c.rate_next_at.is_(None), runs.c.rate_next_at < now), now), else_=runs.c.rate_next_at)
        taken = conn.execute(
            update(runs)
            .where(
                runs.c.id == run_id,
                runs.c.max_rows_per_second > 0,
                or_(runs.c.rate_next_at.is_(None), runs.c.rate_next_at <= now),
            )
            .values(rate_next_at=plus_seconds(start, func.coalesce(rows, 0) / runs.c.max_rows_per_second))
        ).rowcount
        if taken:
            return 0.0
        # Refused: another claim took the slot. What this transaction reads of the schedule now
        # may be older than that claim (MySQL's snapshot), or have come due since the refusal
        # (PostgreSQL's next statement): never 0, which would pass for a slot taken.
        return max(self.rate_wait(run_id, conn), RATE_RETRY_SECONDS)

    def rate_wait(self, run_id: int, connection: Connection | None = None) -> float:
        """Seconds until the rate cap lets the run's next batch start (0: now, or no cap)."""
        query = select(runs.c.max_rows_per_second, runs.c.rate_next_at, self.now()).where(runs.c.id == run_id)
        with self._read_borrowed_or_new(connection) as conn:
            cap, next_at, now = conn.execute(query).one()
        if not cap or next_at is None or next_at <= now:
            return 0.0
        return float((next_at - now).total_seconds())

    def _why_not(self, run_id: int) -> Refusal:
        with self.reading() as conn:
            row = conn.execute(
                select(runs.c.status, and_(*claimable(runs.c, self.now(), self.engine.dialect.name))).where(
                    runs.c.id == run_id
                )
            ).first()
        if row is None or row[0] != RunStatus.RUNNING.value:
            return Refusal.NOT_RUNNING
        return Refusal.TAKEN if row[1] else Refusal.HELD

    def extend_lease(self, claim: Claim, lease_seconds: float) -> bool:
        """The heartbeat of a batch in progress: its worker is alive, keep the batch its own."""
        with self.begin() as conn:
            return bool(
                conn.execute(
                    update(batches)
                    .where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
                    .values(lease_expires_at=plus_seconds(self.now(), lease_seconds))
                ).rowcount
            )

    def release(self, claim: Claim, why: str) -> bool:
        """running -> pending: the claim is given up without counting (its run ended before the
        batch could commit). The attempt it spent stays spent."""
        with self.begin() as conn:
            released = conn.execute(
                self._move_batches(
                    RELEASE, lease_token=None, lease_expires_at=None, dispatched_at=None, error=why
                ).where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
            ).rowcount
            if released:
                self._record(conn, claim.event(BatchStatus.PENDING, note=why))
            return bool(released)

    def release_stale(self, run: Run, *, is_abandoned: Callable[[str], bool] | None = None) -> int:
        """Put back running batches whose lease ran out (by the database's clock), or whose
        worker is known to be gone.

        A batch that already used all its attempts fails instead of going round again: a batch
        that kills its worker every time must not loop forever. Once the run is over nothing
        counts any more: its stale batches are only put back.
        """
        expired = batches.c.lease_expires_at < self.now()
        with self.begin() as conn:
            running = conn.execute(
                select(
                    batches.c.id,
                    batches.c.seq,
                    batches.c.worker,
                    batches.c.attempts,
                    batches.c.lease_token,
                    case((expired, True), else_=False).label("expired"),
                ).where(batches.c.run_id == run.id, batches.c.status == BatchStatus.RUNNING.value)
            ).all()
            stale = [
                (r, bool(r.expired))
                for r in running
                if r.expired or (is_abandoned is not None and r.worker is not None and is_abandoned(r.worker))
            ]
            if not stale:
                return 0
            self._lock_run(conn, run.id)
            current = self._run(conn, run.id)
            released = 0
            for r, by_lease in stale:
                give_up = r.attempts >= current.tuning.max_attempts and current.status in WORKING
                error = f"worker {r.worker} stopped answering (lease lost) on attempt {r.attempts}"
                move = FAIL if give_up else RELEASE
                statement = self._move_batches(
                    move,
                    lease_token=None,
                    lease_expires_at=None,
                    dispatched_at=None,
                    error=error,
                    finished_at=self.now() if give_up else None,
                ).where(batches.c.id == r.id, batches.c.lease_token == r.lease_token)
                if by_lease:
                    statement = statement.where(expired)  # unless a heartbeat came in meanwhile
                if not conn.execute(statement).rowcount:
                    continue
                released += 1
                self._record(conn, _batch_event(current, r.id, r.seq, r.worker, move.target, error))
                if give_up:
                    conn.execute(
                        update(runs)
                        .where(runs.c.id == run.id)
                        .values(batches_failed=runs.c.batches_failed + 1, last_error=error, updated_at=self.now())
                    )
            return released

    def chains_in_flight(self, *, redispatch_after: float) -> int:
        """Chains of every run in this database now: running batches, and pending ones whose
        message went out less than ``redispatch_after`` ago (what a fleet's cap counts)."""
        recent = plus_seconds(self.now(), -redispatch_after)
        with self.reading() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(batches)
                    .where(
                        or_(
                            batches.c.status == BatchStatus.RUNNING.value,
                            (batches.c.status == BatchStatus.PENDING.value) & (batches.c.dispatched_at >= recent),
                        )
                    )
                ).scalar_one()
            )

    def dispatch_chains(self, run: Run, *, redispatch_after: float, limit: int | None = None) -> list[int]:
        """The batches to send messages for now, marked as sent: one per chain the run is short
        of its parallelism (at most ``limit``). A chain is a running batch, or a pending one whose
        message went out less than ``redispatch_after`` ago (older ones may be lost, and are sent
        again). Decided under the run row's lock, so two dispatchers never start more chains
        than that."""
        recent = plus_seconds(self.now(), -redispatch_after)
        with self.begin() as conn:
            self._lock_run(conn, run.id)
            may = conn.execute(
                select(runs.c.id).where(runs.c.id == run.id, *claimable(runs.c, self.now(), self.engine.dialect.name))
            ).first()
            if may is None:
                return []
            current = self._run(conn, run.id)
            busy = conn.execute(
                select(func.count())
                .select_from(batches)
                .where(
                    batches.c.run_id == run.id,
                    or_(
                        batches.c.status == BatchStatus.RUNNING.value,
                        (batches.c.status == BatchStatus.PENDING.value) & (batches.c.dispatched_at >= recent),
                    ),
                )
            ).scalar_one()
            wanted = current.tuning.parallelism - busy
            if limit is not None:
                wanted = min(wanted, limit)
            if wanted <= 0:
                return []
            due = or_(batches.c.dispatched_at.is_(None), batches.c.dispatched_at < recent)
            ids = list(
                conn.execute(
                    select(batches.c.id)
                    .where(batches.c.run_id == run.id, batches.c.status == BatchStatus.PENDING.value, due)
                    .order_by(batches.c.seq)
                    .limit(wanted)
                ).scalars()
            )
            if ids:
                conn.execute(
                    update(batches)
                    .where(batches.c.id.in_(ids), batches.c.status == BatchStatus.PENDING.value)
                    .values(dispatched_at=self.now())
                )
            return ids

    def unmark_dispatched(self, batch_id: int) -> None:
        with self.begin() as conn:
            conn.execute(
                update(batches)
                .where(batches.c.id == batch_id, batches.c.status == BatchStatus.PENDING.value)
                .values(dispatched_at=None)
            )


def _batch_event(run: Run, batch_id: int, seq: int, worker: str | None, after: BatchStatus, error: str) -> Event:
    return Event(
        backfill=run.name,
        run_id=run.id,
        after=after,
        before=BatchStatus.RUNNING,
        batch_id=batch_id,
        seq=seq,
        worker=worker,
        error=error,
    )
