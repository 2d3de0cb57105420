"""Batches in the hands of workers: claims and their leases, the end of a claim (succeeded,
failed, split, released), stale claims taken back, and the marks of messages sent for batches.

Every time here is the database's. Every write that changes a run's counters locks the run row
first and is guarded by the run's status, so nothing counts once a run is over.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Select,
    bindparam,
    case,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    true,
    update,
)

from backfill import tables
from backfill.clock import plus_seconds
from backfill.events import Event
from backfill.keyset import Span
from backfill.status import BatchStatus, Phase, RunStatus
from backfill.store.base import StoreBase, batches, one_of, runs
from backfill.store.records import BatchRecord, Carry, Claim, Completed, Refusal, Refused, Run
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
    def claim(
        self,
        run: Run,
        batch_id: int | None,
        worker: str,
        lease_seconds: float,
        *,
        redispatch_after: float | None = None,
    ) -> Claim | Refused:
        """pending -> running for one worker, only while its run is running and, under a rate
        cap, only once the cap's schedule allows another batch. ``batch_id`` None: the run's next
        planned batch (by seq) that is free, unless the run is held; with ``redispatch_after``,
        not one whose message went out less than that long ago (another chain starts from it).

        Committed on its own, before the work starts, so that the attempt counts even if the
        worker dies, and so that the lease is visible to status and to the stuck-batch sweep.
        """
        token = secrets.token_hex(16)
        try:
            with self.begin() as conn:
                chosen = batch_id
                if chosen is None:
                    chosen = conn.execute(self._next_pending(run.id, redispatch_after, held_too=True)).scalar()
                    if chosen is None:
                        return Refused(Refusal.NONE)
                if run.tuning.max_rows_per_second > 0:
                    wait = self._take_rate_slot(conn, run.id, chosen)
                    if wait:
                        return Refused(Refusal.RATE, wait)
                claimed = self._claim_in(conn, run.name, run.id, chosen, token, worker, lease_seconds)
                if claimed is None:
                    raise _Undo(Refusal.TAKEN)
                self._record(conn, claimed.event(BatchStatus.RUNNING, BatchStatus.PENDING))
                return claimed
        except _Undo:
            why = self._why_not(run.id)
            if why is Refusal.NOT_RUNNING and batch_id is not None:
                # The message was spent on a run that does not run: forget it was ever sent, so
                # the first tick after the run runs again sends another.
                self.unmark_dispatched(batch_id)
            return Refused(why)

    def _claim_in(
        self, conn: Connection, backfill: str, run_id: int, batch_id: int, token: str, worker: str, lease: float
    ) -> Claim | None:
        """The guarded claim of one batch, inside the caller's transaction."""
        run_is_running = exists().where(runs.c.id == run_id, runs.c.status == RunStatus.RUNNING.value)
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

    def _next_pending(self, run_id: Any, redispatch_after: float | None, *, held_too: bool = False) -> Select[Any]:
        """The id of the run's first free planned batch (locked, on PostgreSQL, skipping any that
        another transaction is claiming)."""
        query = select(batches.c.id).where(batches.c.run_id == run_id, batches.c.status == BatchStatus.PENDING.value)
        if redispatch_after is not None:
            query = query.where(
                or_(
                    batches.c.dispatched_at.is_(None),
                    batches.c.dispatched_at < plus_seconds(self.now(), -redispatch_after),
                )
            )
        if held_too:
            query = query.where(~exists().where(runs.c.id == run_id, runs.c.held_reason.is_not(None)))
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
        self,
        conn: Connection,
        claim: Claim,
        *,
        rows_affected: int | None,
        duration_ms: float,
        carry: Carry | None = None,
        run: Run | None = None,
    ) -> Completed:
        """Mark the batch succeeded and count it, inside the batch's own transaction — and, with
        ``carry``, claim the run's next free batch in the same commit, if the run still runs,
        unheld and uncapped (a capped run claims through its rate schedule).

        A refusal says the claim was lost (another worker re-claimed the batch after the lease
        ran out) or the run is over: the caller must then roll back, so the work commits at most
        once and nothing counts after the end.
        """
        if conn.dialect.name == "postgresql":
            return self._complete_in_one(conn, claim, rows_affected, duration_ms, carry, run)
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
        if not conn.execute(count_it).rowcount:
            return Completed(Refusal.NOT_RUNNING)
        done = conn.execute(
            self._move_batches(SUCCEED, **self._done_values(rows_affected, duration_ms)).where(
                batches.c.id == claim.batch.id, batches.c.lease_token == claim.token
            )
        ).rowcount
        if not done:
            return Completed(Refusal.LOST)
        self._record(conn, claim.event(BatchStatus.SUCCEEDED))
        run = self._run(conn, claim.batch.run_id)
        if carry is None or not _carries(run):
            return Completed(None, run)
        chosen = conn.execute(self._next_pending(run.id, carry.redispatch_after)).scalar()
        if chosen is None:
            return Completed(None, run, None, 0)
        token = secrets.token_hex(16)
        following = self._claim_in(conn, run.name, run.id, chosen, token, carry.worker, carry.lease_seconds)
        if following is not None:
            self._record(conn, following.event(BatchStatus.RUNNING, BatchStatus.PENDING))
        return Completed(None, run, following, None)

    def _done_values(self, rows_affected: Any, duration_ms: Any) -> dict[str, Any]:
        return {
            "rows_affected": rows_affected,
            "duration_ms": duration_ms,
            "lease_token": None,
            "lease_expires_at": None,
            "error": None,
            "finished_at": self.now(),
        }

    def _complete_in_one(
        self,
        conn: Connection,
        claim: Claim,
        rows_affected: int | None,
        duration_ms: float,
        carry: Carry | None,
        known: Run | None,
    ) -> Completed:
        """PostgreSQL: the batch done, its run counted, its event, and (with ``carry``) the next
        batch claimed with its event — one statement, one round trip, all or nothing."""
        token = secrets.token_hex(16) if carry is not None else None
        params = {
            "bf_batch": claim.batch.id,
            "bf_token": claim.token,
            "bf_run": claim.batch.run_id,
            "bf_rows": claim.batch.rows,
            "bf_affected": rows_affected,
            "bf_affected_sum": rows_affected or 0,
            "bf_ms": duration_ms,
            "bf_worker": claim.worker,
            "bf_next_token": token,
            "bf_next_worker": carry.worker if carry else None,
            "bf_lease": carry.lease_seconds if carry else 0.0,
            "bf_redispatch": carry.redispatch_after if carry and carry.redispatch_after is not None else -1.0,
        }
        statement = self._complete_statement(carry is not None)
        compiled = self._statements.get(("compiled", carry is not None, conn.dialect.name))
        if compiled is None:
            compiled = self._statements[("compiled", carry is not None, conn.dialect.name)] = statement.compile(
                dialect=conn.dialect
            )
        row = conn.exec_driver_sql(compiled.string, compiled.construct_params(params)).first()
        if row is None or not row.logged:
            return self._completed_refusal(conn, claim)
        run = _refreshed(known or self._run(conn, claim.batch.run_id), row.run)
        events = [claim.event(BatchStatus.SUCCEEDED)]
        following = None
        left = None
        if carry is not None and row.next is not None:
            assert token is not None and row.logged_next
            following = Claim(run.name, _next_batch(row.next), token, carry.worker)
            events.append(following.event(BatchStatus.RUNNING, BatchStatus.PENDING))
            # Batches are claimed in seq order: those planned after this one are what is left.
            left = run.next_seq - following.batch.seq - 1
        self._will_log(conn, *events)
        return Completed(None, run, following, left)

    def _completed_refusal(self, conn: Connection, claim: Claim) -> Completed:
        return Completed(self._lost_or_over(conn, claim))

    def _complete_statement(self, carry: bool) -> Any:
        """Built once per store (its clock is part of it), then only executed: the statement
        cache and PostgreSQL's prepared statements make the per-batch cost a round trip."""
        key = ("complete", carry)
        cached = self._statements.get(key)
        if cached is not None:
            return cached
        now = self.now()
        ev = tables.events
        done = (
            self._move_batches(SUCCEED, **self._done_values(bindparam("bf_affected"), bindparam("bf_ms")))
            .where(batches.c.id == bindparam("bf_batch"), batches.c.lease_token == bindparam("bf_token"))
            .returning(batches.c.id, batches.c.run_id)
            .cte("done")
        )
        counted = (
            update(runs)
            .where(runs.c.id == bindparam("bf_run"), one_of(runs.c.status, _WORKING), exists(select(done.c.id)))
            .values(
                rows_done=runs.c.rows_done + bindparam("bf_rows"),
                rows_affected=runs.c.rows_affected + bindparam("bf_affected_sum"),
                batches_done=runs.c.batches_done + 1,
                updated_at=now,
            )
            .returning(runs.c.id, *(runs.c[name] for name in _RUN_STATE))
            .cte("counted")
        )
        event_columns = ["run_id", "batch_id", "before", "after", "worker", "error", "at"]
        logged = (
            ev.insert()
            .from_select(
                event_columns,
                select(
                    done.c.run_id,
                    done.c.id,
                    literal(BatchStatus.RUNNING.value, ev.c.before.type),
                    literal(BatchStatus.SUCCEEDED.value, ev.c.after.type),
                    bindparam("bf_worker", type_=ev.c.worker.type),
                    null(),
                    now,
                ),
            )
            .returning(ev.c.id)
            .cte("logged")
        )
        # The rows come back as JSON objects: a short statement (PostgreSQL's driver caches
        # statements below 4 kB) and few result columns to describe.
        columns = [
            done.c.id.label("done_id"),
            select(func.count()).select_from(logged).scalar_subquery().label("logged"),
            func.to_jsonb(counted.table_valued()).label("run"),
        ]
        joined: Any = done.join(counted, true())
        if carry:
            stale = plus_seconds(now, -bindparam("bf_redispatch", type_=Float()))
            candidate = (
                select(batches.c.id)
                .where(
                    batches.c.run_id == bindparam("bf_run"),
                    batches.c.status == BatchStatus.PENDING.value,
                    or_(
                        bindparam("bf_redispatch") < 0,
                        batches.c.dispatched_at.is_(None),
                        batches.c.dispatched_at < stale,
                    ),
                )
                .order_by(batches.c.seq)
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            runs_on = exists(select(counted.c.id).where(*_carrying(counted.c)))
            following = (
                self._move_batches(
                    CLAIM,
                    attempts=batches.c.attempts + 1,
                    worker=bindparam("bf_next_worker"),
                    lease_token=bindparam("bf_next_token"),
                    lease_expires_at=plus_seconds(now, bindparam("bf_lease", type_=Float())),
                    started_at=now,
                )
                .where(batches.c.id == candidate, runs_on)
                .returning(*(batches.c[name] for name in _NEXT_BATCH))
                .cte("following")
            )
            logged_next = (
                ev.insert()
                .from_select(
                    event_columns,
                    select(
                        following.c.run_id,
                        following.c.id,
                        literal(BatchStatus.PENDING.value, ev.c.before.type),
                        literal(BatchStatus.RUNNING.value, ev.c.after.type),
                        bindparam("bf_next_worker", type_=ev.c.worker.type),
                        null(),
                        now,
                    ),
                )
                .returning(ev.c.id)
                .cte("logged_next")
            )
            columns += [
                func.to_jsonb(following.table_valued()).label("next"),
                select(func.count()).select_from(logged_next).scalar_subquery().label("logged_next"),
            ]
            joined = joined.outerjoin(following, true())
        statement = select(*columns).select_from(joined)
        self._statements[key] = statement
        return statement

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

    def dispatch_chains(self, run: Run, *, redispatch_after: float) -> list[int]:
        """The batches to send messages for now, marked as sent: one per chain the run is short
        of its parallelism. A chain is a running batch, or a pending one whose message went out
        less than ``redispatch_after`` ago (older ones may be lost, and are sent again). Decided
        under the run row's lock, so two dispatchers never start more chains than that."""
        recent = plus_seconds(self.now(), -redispatch_after)
        with self.begin() as conn:
            self._lock_run(conn, run.id)
            current = self._run(conn, run.id)
            if current.status is not RunStatus.RUNNING or current.held_reason:
                return []
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


def _carrying(run: Any) -> list[ColumnElement[bool]]:
    """A run whose next batch may be claimed in the statement completing this one: running,
    not held, and not under a rate cap (a capped claim goes through the cap's schedule)."""
    return [run.status == RunStatus.RUNNING.value, run.held_reason.is_(None), run.max_rows_per_second == 0]


def _carries(run: Run) -> bool:
    return run.status is RunStatus.RUNNING and run.held_reason is None and not run.tuning.max_rows_per_second


_RUN_STATE = (
    "status", "phase", "planned_all", "next_seq", "cursor", "end_key", "held_reason", "batches_done",
    "batch_size", "parallelism", "max_attempts", "statement_timeout", "lock_timeout",
    "max_rows_per_second", "pause_seconds", "nice_ratio",
)  # fmt: skip
"""What a chain goes on by, as the completing statement leaves the run: its status and hold, its
planning state, and the settings an operator may have tuned. (Few columns: they are read back
with every batch.)"""
_TUNED = {"batch_size", "parallelism", "max_attempts", "statement_timeout", "lock_timeout",
          "max_rows_per_second", "pause_seconds", "nice_ratio"}  # fmt: skip
_NEXT_BATCH = ("id", "run_id", "seq", "phase", "first_key", "last_key", "rows", "status", "attempts")


def _refreshed(run: Run, state: dict[str, Any]) -> Run:
    """``run`` as the completing statement left it (``state``: its returned columns)."""
    tuning = {name: state.pop(name) for name in _TUNED}
    if any(getattr(run.tuning, name) != value for name, value in tuning.items()):
        run = dataclasses.replace(run, tuning=dataclasses.replace(run.tuning, **tuning))
    return dataclasses.replace(
        run,
        status=RunStatus(state["status"]),
        phase=Phase(state["phase"]),
        planned_all=bool(state["planned_all"]),
        next_seq=state["next_seq"],
        batches_done=state["batches_done"],
        cursor=state["cursor"],
        end_key=state["end_key"],
        held_reason=state["held_reason"],
    )


def _next_batch(values: dict[str, Any]) -> BatchRecord:
    return BatchRecord.from_mapping(values)


def _batch_event(run: Run, batch_id: int, seq: int, worker: str | None, after: BatchStatus, error: str) -> Event:
    return Event(run.name, run.id, after, BatchStatus.RUNNING, batch_id, seq, worker, error)
