"""The end of a claim: a batch succeeded (counted, and on a chain its run's next batch claimed
in the same commit), failed, or split into smaller batches, or an attempt that will be retried.

Each ending is guarded twice: the run's counters move only while the run works,
and the batch only under its claim's token, so a claim that was taken back, or a run that ended
meanwhile, makes the ending a refusal and the caller rolls the batch's work back.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, case, select, update

from backfill.definition import Tuning
from backfill.events import Event
from backfill.keyset import Span
from backfill.status import BatchStatus, Phase, RunStatus
from backfill.store.base import Undo, batches, runs
from backfill.store.completion_sql import WORKING_VALUES, complete_statement
from backfill.store.leases import FAIL, SPLIT, SUCCEED, LeasesMixin
from backfill.store.records import BatchRecord, Carry, Claim, Completed, Refusal, Run

_WORKING = WORKING_VALUES  # a module global of its own: the simulator's mutation test replaces it


class CompletionMixin(LeasesMixin):
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
        run = self._run(conn, claim.batch.run_id)
        following: Claim | None = None
        left: int | None = None
        if carry is not None and _carries(run):
            chosen = conn.execute(self._next_pending(run.id, carry.redispatch_after)).scalar()
            if chosen is None:
                left = 0
            else:
                token = secrets.token_hex(16)
                following = self._claim_in(conn, run.name, run.id, chosen, token, carry.worker, carry.lease_seconds)
        # The batch's event goes with the next claim's, in one INSERT: on MySQL and MariaDB
        # every statement of a batch's commit is a round trip the batch's locks wait on.
        claimed = [following.event(BatchStatus.RUNNING, BatchStatus.PENDING)] if following is not None else []
        self._record(conn, claim.event(BatchStatus.SUCCEEDED), *claimed)
        return Completed(None, run, following, left)

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
        if cached is None:
            done = self._done_values(bindparam("bf_affected"), bindparam("bf_ms"))
            cached = self._statements[key] = complete_statement(self.now(), done, carry)
        return cached

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
                        Event(
                            backfill=claim.backfill,
                            run_id=claim.batch.run_id,
                            after=STOP.target,
                            before=RunStatus.RUNNING,
                            error=stop_run,
                        )
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
                    raise Undo(Refusal.NOT_RUNNING)
                ended = conn.execute(
                    self._move_batches(
                        move, lease_token=None, lease_expires_at=None, finished_at=self.now(), **batch_changes
                    ).where(batches.c.id == claim.batch.id, batches.c.lease_token == claim.token)
                ).rowcount
                if not ended:
                    raise Undo(Refusal.LOST)
                then(conn)
                return None
        except Undo as undo:
            return undo.refusal


def _carries(run: Run) -> bool:
    return run.status is RunStatus.RUNNING and run.held_reason is None and not run.tuning.max_rows_per_second


def _refreshed(run: Run, state: dict[str, Any]) -> Run:
    """``run`` as the completing statement left it (``state``: its returned columns)."""
    # A setting added after the run was recorded is NULL on its row: the default applies.
    tuning = {name: value for name in Tuning.__dataclass_fields__ if (value := state.pop(name)) is not None}
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
        pace=state["pace"],
    )


def _next_batch(values: dict[str, Any]) -> BatchRecord:
    return BatchRecord.from_mapping(values)
