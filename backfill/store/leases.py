"""Batches in the hands of workers: claims and their leases, the end of a claim (succeeded,
failed, split, released), stale claims taken back, and the marks of messages sent for batches.

Every time here is the database's. Every write that changes a run's counters locks the run row
first and is guarded by the run's status, so nothing counts once a run is over.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, exists, func, literal, or_, select, update

from backfill import tables
from backfill.clock import plus_seconds
from backfill.events import Event
from backfill.keyset import Span
from backfill.status import BatchStatus, RunStatus
from backfill.store.base import StoreBase, batches, runs
from backfill.store.records import BatchRecord, Claim, Refusal, Refused, Run
from backfill.transitions import WORKING, batch_move

CLAIM = batch_move(BatchStatus.PENDING, to=BatchStatus.RUNNING)
SUCCEED = batch_move(BatchStatus.RUNNING, to=BatchStatus.SUCCEEDED)
FAIL = batch_move(BatchStatus.RUNNING, to=BatchStatus.FAILED)
SPLIT = batch_move(BatchStatus.RUNNING, to=BatchStatus.SPLIT)
RELEASE = batch_move(BatchStatus.RUNNING, to=BatchStatus.PENDING)

_WORKING = [s.value for s in WORKING]


class _Undo(Exception):
    """Roll the transaction back: the guarded write that had to come next did not happen."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


class LeasesMixin(StoreBase):
    def claim(self, run: Run, batch_id: int, worker: str, lease_seconds: float) -> Claim | Refused:
        """pending -> running for one worker, only while its run is running and, under a rate
        cap, only once the cap's schedule allows another batch.

        Committed on its own, before the work starts, so that the attempt counts even if the
        worker dies, and so that the lease is visible to status and to the stuck-batch sweep.
        """
        token = secrets.token_hex(16)
        run_is_running = exists().where(runs.c.id == batches.c.run_id, runs.c.status == RunStatus.RUNNING.value)
        target: ColumnElement[bool] = batches.c.id == batch_id
        if self.engine.dialect.name == "postgresql":
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
            lease_expires_at=plus_seconds(self.now(), lease_seconds),
            started_at=self.now(),
        ).where(target, run_is_running)
        try:
            with self.begin() as conn:
                if run.tuning.max_rows_per_second > 0:
                    wait = self._take_rate_slot(conn, run.id, batch_id)
                    if wait:
                        return Refused(Refusal.RATE, wait)
                if conn.dialect.update_returning:
                    row = conn.execute(claim.returning(*batches.c)).first()
                    if row is None:
                        raise _Undo(Refusal.TAKEN)
                    claimed = Claim(run.name, BatchRecord.from_row(row), token, worker)
                else:
                    if not conn.execute(claim).rowcount:
                        raise _Undo(Refusal.TAKEN)
                    claimed = Claim(run.name, self._batch(conn, batch_id), token, worker)
                self._record(conn, claimed.event(BatchStatus.RUNNING, BatchStatus.PENDING))
                return claimed
        except _Undo:
            why = self._why_not(run.id)
            if why is Refusal.NOT_RUNNING:
                # The message was spent on a run that does not run: forget it was ever sent, so
                # the first tick after the run runs again sends another.
                self.unmark_dispatched(batch_id)
            return Refused(why)

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
        return self.rate_wait(run_id, conn)

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
            status = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
        return Refusal.TAKEN if status == RunStatus.RUNNING.value else Refusal.NOT_RUNNING

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

    def complete(
        self, conn: Connection, claim: Claim, *, rows_affected: int | None, duration_ms: float
    ) -> Refusal | None:
        """Mark the batch succeeded and count it, inside the batch's own transaction.

        Returns why not when the claim was lost (another worker re-claimed the batch after the
        lease ran out) or the run is over: the caller must then roll back, so the work commits
        at most once and nothing counts after the end.
        """
        mark_done = self._move_batches(
            SUCCEED,
            rows_affected=rows_affected,
            duration_ms=duration_ms,
            lease_token=None,
            lease_expires_at=None,
            error=None,
            finished_at=self.now(),
        ).where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
        count_it = (
            update(runs)
            .where(runs.c.id == claim.batch.run_id, runs.c.status.in_(_WORKING))
            .values(
                rows_done=runs.c.rows_done + claim.batch.rows,
                rows_affected=runs.c.rows_affected + (rows_affected or 0),
                batches_done=runs.c.batches_done + 1,
                updated_at=self.now(),
            )
        )
        event = claim.event(BatchStatus.SUCCEEDED)
        if conn.dialect.name == "postgresql":
            # The per-batch path is hot: on PostgreSQL the three writes go in one round trip,
            # as data-modifying CTEs that run together or not at all.
            done = mark_done.returning(batches.c.id).cte("done")
            counted = count_it.where(exists(select(done.c.id))).returning(runs.c.id).cte("counted")
            row = {**event.row(), "at": self.now()}
            logged = (
                tables.events.insert()
                .from_select(
                    list(row),
                    select(
                        *(
                            v if isinstance(v, ColumnElement) else literal(v, tables.events.c[k].type)
                            for k, v in row.items()
                        )
                    ).where(exists(select(done.c.id))),
                )
                .returning(tables.events.c.id)
                .cte("logged")
            )
            found = conn.execute(
                select(done.c.id).where(exists(select(counted.c.id)), exists(select(logged.c.id)))
            ).first()
            if found is None:
                return self._lost_or_over(conn, claim)
            self._will_log(conn, event)
            return None
        if not conn.execute(count_it).rowcount:
            return Refusal.NOT_RUNNING
        if not conn.execute(mark_done).rowcount:
            return Refusal.LOST
        self._record(conn, event)
        return None

    def _lost_or_over(self, conn: Connection, claim: Claim) -> Refusal:
        status = conn.execute(select(runs.c.status).where(runs.c.id == claim.batch.run_id)).scalar()
        return Refusal.LOST if status in _WORKING else Refusal.NOT_RUNNING

    def record_retry(self, claim: Claim, error: str) -> bool:
        """Count one more attempt of a claimed batch after a transient error."""
        with self.begin() as conn:
            counted = conn.execute(
                update(batches)
                .where(
                    batches.c.id == claim.batch.id,
                    batches.c.lease_token == claim.token,
                    batches.c.status == BatchStatus.RUNNING.value,
                )
                .values(attempts=batches.c.attempts + 1, error=error)
            ).rowcount
            if counted:
                self._record(conn, claim.event(BatchStatus.RUNNING, error=f"retrying: {error}"))
            return bool(counted)

    def fail(self, claim: Claim, error: str, *, stop_run: str | None = None) -> Refusal | None:
        """running -> failed, with the error kept on the batch and on its run; with
        ``stop_run``, the run fails too (an error no other batch would get past)."""
        from backfill.store.runs import STOP

        def end(conn: Connection) -> None:
            changes = [claim.event(BatchStatus.FAILED, error=error)]
            if stop_run is not None:
                stop = self._move_run(claim.batch.run_id, STOP, last_error=stop_run)
                if conn.execute(stop).rowcount:
                    changes.append(
                        Event(claim.backfill, claim.batch.run_id, STOP.target, RunStatus.RUNNING, error=stop_run)
                    )
            self._record(conn, *changes)

        return self._end_claim(
            claim,
            FAIL,
            {"error": error},
            {
                "batches_failed": runs.c.batches_failed + 1,
                # A run that already stopped keeps the reason it stopped for.
                "last_error": case(
                    (runs.c.status == RunStatus.RUNNING.value, f"batch {claim.batch.seq}: {error}"),
                    else_=runs.c.last_error,
                ),
            },
            end,
        )

    def split(self, claim: Claim, spans: Sequence[Span], error: str) -> Refusal | None:
        """running -> split: a batch that ran out of time is replaced by smaller batches over
        its range, and the run plans smaller batches from now on."""
        smaller = max(1, max(span.rows for span in spans))

        def end(conn: Connection) -> None:
            # The run row was moved on by len(spans) just above, under its lock: the seqs below are ours.
            after = conn.execute(select(runs.c.next_seq).where(runs.c.id == claim.batch.run_id)).scalar_one()
            changes = [claim.event(BatchStatus.SPLIT, error=error)]
            self._add_batches(conn, claim.backfill, claim.batch, spans, after - len(spans), changes)
            self._record(conn, *changes)

        return self._end_claim(
            claim,
            SPLIT,
            {"error": error},
            {
                "next_seq": runs.c.next_seq + len(spans),
                "batch_size": case((runs.c.batch_size > smaller, smaller), else_=runs.c.batch_size),
            },
            end,
        )

    def _end_claim(
        self,
        claim: Claim,
        move: Any,
        batch_changes: dict[str, Any],
        run_changes: dict[str, Any],
        then: Callable[[Connection], None],
    ) -> Refusal | None:
        """End a claim along ``move`` and change its run's counters, in one transaction: the run
        row first (only while the run works), then the batch (only under the claim's token)."""
        try:
            with self.begin() as conn:
                counted = conn.execute(
                    update(runs)
                    .where(runs.c.id == claim.batch.run_id, runs.c.status.in_(_WORKING))
                    .values(**run_changes, updated_at=self.now())
                ).rowcount
                if not counted:
                    raise _Undo(Refusal.NOT_RUNNING)
                ended = conn.execute(
                    self._move_batches(
                        move, lease_token=None, lease_expires_at=None, finished_at=self.now(), **batch_changes
                    ).where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
                ).rowcount
                if not ended:
                    raise _Undo(Refusal.LOST)
                then(conn)
                return None
        except _Undo as undo:
            return undo.refusal

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
                self._record(conn, claim.event(BatchStatus.PENDING, error=why))
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

    def mark_dispatched(self, batch_ids: Sequence[int], *, redispatch_after: float) -> list[int]:
        """Record that messages for these pending batches are being sent; returns those no other
        dispatcher sent one for in the last ``redispatch_after`` seconds (so only one sends)."""
        if not batch_ids:
            return []
        due = or_(
            batches.c.dispatched_at.is_(None),
            batches.c.dispatched_at < plus_seconds(self.now(), -redispatch_after),
        )
        mark = (
            update(batches).where(batches.c.status == BatchStatus.PENDING.value, due).values(dispatched_at=self.now())
        )
        with self.begin() as conn:
            if conn.dialect.update_returning:
                marked = set(conn.execute(mark.where(batches.c.id.in_(batch_ids)).returning(batches.c.id)).scalars())
            else:
                marked = {i for i in batch_ids if conn.execute(mark.where(batches.c.id == i)).rowcount}
        return [i for i in batch_ids if i in marked]

    def unmark_dispatched(self, batch_id: int) -> None:
        with self.begin() as conn:
            conn.execute(
                update(batches)
                .where(batches.c.id == batch_id, batches.c.status == BatchStatus.PENDING.value)
                .values(dispatched_at=None)
            )


def _batch_event(run: Run, batch_id: int, seq: int, worker: str | None, after: BatchStatus, error: str) -> Event:
    return Event(run.name, run.id, after, BatchStatus.RUNNING, batch_id, seq, worker, error)
