"""Runs one batch: claim it, bound it in time, do the work, record it — or record why not.

The work and the batch's checkpoint commit in one transaction, guarded by the claim's token and
by the run still working, so a batch delivered twice, re-claimed after its worker vanished, or
finishing after its run ended changes its rows at most once and counts only while the run lives.
Transient database errors are retried here with backoff; anything else fails the batch at once
and its error stays on the batch row.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection
from tenacity import RetryCallState

from backfill import failures
from backfill.errors import AppError, TargetError
from backfill.host import Host
from backfill.keyset import Span
from backfill.limits import Bounded
from backfill.status import ErrorKind, RunStatus
from backfill.store import Carry, Claim, Completed, Refusal, Refused, Run, Store
from backfill.target import Target, Targets

logger = logging.getLogger(__name__)
T = TypeVar("T")

PLAN_AHEAD = 32
PLAN_BELOW = 8
"""A chain plans PLAN_AHEAD more batches once fewer than PLAN_BELOW planned ones are left, so
its next claim rides on the commit before it rather than waiting for a planner."""
RATE_WAIT_SECONDS = 1.0
"""The longest a worker sleeps at a time while the rate cap holds its next batch back."""


class Result(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SPLIT = "split"
    """Ran out of time and was replaced by two smaller batches."""
    SKIPPED = "skipped"
    """Not ours to run: already done, claimed by another worker, or its run is not running."""


@dataclass(frozen=True)
class Outcome:
    batch_id: int
    result: Result
    rows: int = 0
    rows_affected: int | None = None
    duration_ms: float = 0.0
    attempts: int = 0
    error: str | None = None
    refusal: Refusal | None = None


class PendingNotCleared(Exception):
    """A final-pass batch's rows still match ``pending`` after its work: the definition's work
    does not clear what its predicate tests, and every pass would find the same rows again."""


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


class Executor:
    def __init__(self, store: Store, targets: Targets, *, host: Host | None = None) -> None:
        self.store = store
        self.targets = targets
        self.host = host or Host()
        self.heartbeat = self.host.heartbeat(store, self.host.heartbeat_seconds)

    def execute(self, run: Run, batch_id: int) -> Outcome:
        """Run one batch (a chain that carries no claim on)."""
        outcomes = self.run_chain(run, first=batch_id, carry=False)
        return outcomes[0] if outcomes else Outcome(batch_id, Result.SKIPPED, refusal=Refusal.NONE)

    def run_chain(
        self,
        run: Run,
        *,
        first: int | None = None,
        carry: bool = True,
        keep_going: Callable[[], bool] = lambda: True,
        redispatch_after: float | None = None,
        refill: Callable[[Run], Run] | None = None,
        plan_ahead: Callable[[Run, int], Run] | None = None,
        watch: Callable[[Run], Run] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> list[Outcome]:
        """Run batches one after another on one connection, its time limits set once.

        It claims ``first`` (else the run's next free batch); then each batch's commit claims the
        next one in the same statement (``carry``), until the run has no free batch left, stops
        running, or ``keep_going()`` says to stop (a time budget, an interrupt). When the planned
        batches run low, ``plan_ahead`` plans more; when they run out,
        ``refill`` (a planner's tick) plans more. A batch costs its work, one statement and one
        commit: the claim, the checkpoint, the counters and the events ride on that statement.
        Between batches ``watch`` (the run's monitor, rate-limited) may hold or pause the run:
        the batch already claimed is the last this chain starts.
        """
        try:
            target = self.targets.for_run(run)
        except (AppError, TargetError) as exc:
            # Not this process's to run (its definitions are older), or the definition no
            # longer fits the table: the planner says so on the run; the batch stays unclaimed.
            logger.warning("backfill %s left alone here: %s", run.name, exc)
            return [Outcome(first or 0, Result.SKIPPED, error=str(exc))]
        clock = self.host.clock
        outcomes: list[Outcome] = []
        claim = self._claim(run, first, redispatch_after)
        if isinstance(claim, Refused):
            return [Outcome(first, Result.SKIPPED, refusal=claim.reason)] if first is not None else []
        with self.store.connect() as connection, self._bounded(connection, run) as limits:
            following: Claim | None = claim
            while following is not None:
                current = following
                carrying = carry and keep_going() and not _claims_after_rest(run)
                ahead = Carry(self.host.worker_name(), self.host.lease_seconds, redispatch_after) if carrying else None
                outcome, run, following, left = self._one(connection, limits, run, target, current, ahead)
                outcomes.append(outcome)
                if plan_ahead is not None and following is not None and left is not None and left < PLAN_BELOW:
                    run = plan_ahead(run, PLAN_AHEAD)
                if on_outcome is not None:
                    on_outcome(outcome)
                if watch is not None:
                    run = watch(run)
                if outcome.result is Result.SUCCEEDED:
                    clock.sleep(_rest_after(run, outcome.duration_ms / 1000))
                if following is not None:
                    continue
                if not (carry and keep_going()) or run.status is not RunStatus.RUNNING:
                    break
                if carrying and refill is not None:
                    run = refill(run)  # the commit found nothing planned to claim: plan first
                nxt = self._claim(run, None, redispatch_after)
                if not carrying and isinstance(nxt, Refused) and nxt.reason is Refusal.NONE and refill is not None:
                    run = refill(run)  # a throttled chain claims after its sleep, planning only when out
                    nxt = self._claim(run, None, redispatch_after)
                following = None if isinstance(nxt, Refused) else nxt
        return outcomes

    def _one(
        self, connection: Connection, limits: Bounded, run: Run, target: Target, claim: Claim, ahead: Carry | None
    ) -> tuple[Outcome, Run, Claim | None, int | None]:
        """One claimed batch, through transient errors; returns its outcome, the run as its
        commit saw it, the next batch that commit claimed, and how many planned ones are left."""
        tries = max(1, run.tuning.max_attempts - claim.batch.attempts + 1)
        attempts = 0

        def attempt() -> tuple[Completed, int | None, float]:
            nonlocal attempts
            attempts += 1
            limits.change(run.tuning.statement_timeout, run.tuning.lock_timeout)
            return self._attempt(connection, limits, run, target, claim, ahead)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._retried(lambda: self.store.record_retry(claim, failures.error_text(exc) if exc else "retry"))

        try:
            with self.heartbeat.keep(claim, self.host.lease_seconds):
                try:
                    completed, rows_affected, duration_ms = attempt()
                except Exception as exc:
                    # The first attempt runs bare (the hot path). A transient error goes round
                    # again under tenacity, which is handed this failure as its first attempt.
                    if tries < 2 or not failures.is_transient(exc):
                        raise
                    first: Exception | None = exc
                    retrying = failures.retry_transient(tries, self.host.clock.sleep).copy(before_sleep=before_sleep)
                    for again in retrying:
                        with again:
                            if first is not None:
                                failed, first = first, None
                                raise failed from None
                            completed, rows_affected, duration_ms = attempt()
        except _Refused as refused:
            return self._refused(claim, refused.refusal, attempts), run, None, None
        except PendingNotCleared as exc:
            error = str(exc)
            refusal = self._retried(lambda: self.store.fail(claim, error, stop_run=error))
            outcome = self._refused(claim, refusal, attempts) if refusal else self._failed(claim, attempts, error)
            return outcome, run, None, None
        except Exception as exc:
            return self._on_error(run, target, claim, exc, attempts), run, None, None
        outcome = Outcome(
            claim.batch.id,
            Result.SUCCEEDED,
            rows=claim.batch.rows,
            rows_affected=rows_affected,
            duration_ms=duration_ms,
            attempts=attempts,
        )
        return outcome, completed.run or run, completed.next, completed.planned_left

    def _attempt(
        self, connection: Connection, limits: Bounded, run: Run, target: Target, claim: Claim, carry: Carry | None
    ) -> tuple[Completed, int | None, float]:
        clock = self.host.clock
        batch = target.batch(claim.batch)
        limits.batch()
        with self.store.transaction(connection):
            started = clock.monotonic()
            rows_affected = target.definition.run_work(connection, batch)
            duration_ms = (clock.monotonic() - started) * 1000
            if target.still_pending(connection, claim.batch):
                raise PendingNotCleared(
                    f"batch {claim.batch.seq}: rows of {list(batch.first)}..{list(batch.last)} still match "
                    "`pending` after the work: check that `work` sets what `pending` tests"
                )
            completed = self.store.complete(
                connection, claim, rows_affected=rows_affected, duration_ms=duration_ms, carry=carry, run=run
            )
            if completed.refusal is not None:
                raise _Refused(completed.refusal)
        return completed, rows_affected, duration_ms

    def _bounded(self, connection: Connection, run: Run) -> AbstractContextManager[Bounded]:
        """The chain's time limits. On a borrowed connection (a migration) the migration's own
        apply: a session setting would outlive the batch and bind the rest of the migration."""
        if self.store.borrowed:
            return nullcontext(Bounded.unbounded(connection))
        return Bounded(connection, run.tuning.statement_timeout, run.tuning.lock_timeout)

    def _retried(self, call: Callable[[], T]) -> T:
        """A store call, through transient errors: every one is a guarded transaction."""
        return failures.retried(call, self.host.clock.sleep)

    def _claim(self, run: Run, batch_id: int | None, redispatch_after: float | None) -> Claim | Refused:
        """Claim the batch (or the run's next free one), waiting while the rate cap holds it back."""
        worker = self.host.worker_name()
        while True:
            claim = self._retried(
                lambda: self.store.claim(
                    run, batch_id, worker, self.host.lease_seconds, redispatch_after=redispatch_after
                )
            )
            if not (isinstance(claim, Refused) and claim.reason is Refusal.RATE):
                return claim
            self.host.clock.sleep(min(max(claim.retry_after, 0.01), RATE_WAIT_SECONDS))

    def _on_error(self, run: Run, target: Target, claim: Claim, exc: Exception, attempts: int) -> Outcome:
        error = failures.error_text(exc)
        kind = failures.classify(exc)
        if kind is ErrorKind.TIMEOUT and claim.batch.rows >= 2:
            spans = self._retried(lambda: self._halves(target, claim))
            if len(spans) >= 2:
                why = f"split in two after a statement timeout: {error}"
                refusal = self._retried(lambda: self.store.split(claim, spans, why))
                if refusal is not None:
                    return self._refused(claim, refusal, attempts)
                return Outcome(claim.batch.id, Result.SPLIT, rows=claim.batch.rows, attempts=attempts, error=error)
        if kind is ErrorKind.TIMEOUT:
            error = (
                f"batch exceeded its statement timeout of {run.tuning.statement_timeout:g}s ({error}): "
                "lower the batch size or raise statement_timeout"
            )
        elif kind is ErrorKind.TRANSIENT:
            error = f"gave up after {claim.batch.attempts + attempts - 1} attempts: {error}"
        refusal = self._retried(lambda: self.store.fail(claim, error))
        if refusal is not None:
            return self._refused(claim, refusal, attempts)
        return self._failed(claim, attempts, error)

    def _halves(self, target: Target, claim: Claim) -> list[Span]:
        with self.store.reading() as connection:
            return target.halves(connection, claim.batch)

    def _failed(self, claim: Claim, attempts: int, error: str) -> Outcome:
        return Outcome(claim.batch.id, Result.FAILED, rows=claim.batch.rows, attempts=attempts, error=error)

    def _refused(self, claim: Claim, refusal: Refusal, attempts: int) -> Outcome:
        """The batch could not be concluded: another worker holds it now, or its run stopped
        working — then the claim is handed back, so a retry or a resume runs the batch again."""
        if refusal is Refusal.NOT_RUNNING:
            why = "its run stopped before the batch could commit; nothing of it counted"
            self._retried(lambda: self.store.release(claim, why))
        return Outcome(claim.batch.id, Result.SKIPPED, attempts=attempts, refusal=refusal)


__all__ = ["Executor", "Outcome", "PendingNotCleared", "Result"]


CARRY_THROUGH_RATIO = 3.0
"""A rest of at most this many times a batch's duration is taken holding the next batch, claimed
with the commit before it: a claim of its own would cost a transaction a batch."""


def _claims_after_rest(run: Run) -> bool:
    """A run that rests long between batches (a fixed ``pause_seconds``, a large nice ratio, a
    slow pace) claims its next batch after the rest, in the same chain, rather than hold it
    (and its lease) all the while; a short rest rides on the commit's claim."""
    return bool(run.tuning.pause_seconds) or _rest_ratio(run) > CARRY_THROUGH_RATIO


def _rest_ratio(run: Run) -> float:
    """Rest per second of batch: the nice ratio's, and the pace's (a pace of 0.25 rests three
    times the batch)."""
    pace = run.pace_in_force
    return run.tuning.nice_ratio + (1 - pace) / pace


def _rest_after(run: Run, seconds: float) -> float:
    """A worker's rest after a batch of ``seconds``: the fixed pause, then the nice ratio's and
    the impact budget's share."""
    return run.tuning.pause_seconds + _rest_ratio(run) * seconds
