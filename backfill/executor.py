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
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState

from backfill import dialects
from backfill.errors import AppError, TargetError
from backfill.host import Host
from backfill.keyset import Span
from backfill.status import ErrorKind
from backfill.store import Claim, Refusal, Refused, Run, Store
from backfill.target import Target, Targets

logger = logging.getLogger(__name__)
T = TypeVar("T")

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
        try:
            target = self.targets.get(run.name)
        except (AppError, TargetError) as exc:
            # Not this process's to run (its definitions are older), or the definition no
            # longer fits the table: the planner says so on the run; the batch stays unclaimed.
            logger.warning("batch %s of backfill %s left alone: %s", batch_id, run.name, exc)
            return Outcome(batch_id, Result.SKIPPED, error=str(exc))
        claim = self._claim(run, batch_id)
        if isinstance(claim, Refused):
            return Outcome(batch_id, Result.SKIPPED, refusal=claim.reason)
        tries = max(1, run.tuning.max_attempts - claim.batch.attempts + 1)
        attempts = 0
        clock = self.host.clock

        def note_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._retried(lambda: self.store.record_retry(claim, dialects.error_text(exc) if exc else "retry"))

        retrying = dialects.retry_transient(tries, clock.sleep).copy(before_sleep=note_retry)
        try:
            with self.heartbeat.keep(claim, self.host.lease_seconds):
                for attempt in retrying:
                    with attempt:
                        attempts += 1
                        rows_affected, duration_ms = self._run_once(run, target, claim)
        except _Refused as refused:
            return self._refused(claim, refused.refusal, attempts)
        except PendingNotCleared as exc:
            error = str(exc)
            refusal = self._retried(lambda: self.store.fail(claim, error, stop_run=error))
            return self._refused(claim, refusal, attempts) if refusal else self._failed(claim, attempts, error)
        except Exception as exc:
            return self._on_error(run, target, claim, exc, attempts)
        pause = run.tuning.pause_seconds + run.tuning.nice_ratio * duration_ms / 1000
        clock.sleep(pause)  # throttling: this worker slot leaves the database alone a while
        return Outcome(
            batch_id,
            Result.SUCCEEDED,
            rows=claim.batch.rows,
            rows_affected=rows_affected,
            duration_ms=duration_ms,
            attempts=attempts,
        )

    def _retried(self, call: Callable[[], T]) -> T:
        """A store call, through transient errors: every one is a guarded transaction."""
        return dialects.retried(call, self.host.clock.sleep)

    def _claim(self, run: Run, batch_id: int) -> Claim | Refused:
        """Claim the batch, waiting while the rate cap holds it back."""
        worker = self.host.worker_name()
        while True:
            claim = self._retried(lambda: self.store.claim(run, batch_id, worker, self.host.lease_seconds))
            if not (isinstance(claim, Refused) and claim.reason is Refusal.RATE):
                return claim
            self.host.clock.sleep(min(max(claim.retry_after, 0.01), RATE_WAIT_SECONDS))

    def _on_error(self, run: Run, target: Target, claim: Claim, exc: Exception, attempts: int) -> Outcome:
        error = dialects.error_text(exc)
        kind = dialects.classify(exc)
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

    def _run_once(self, run: Run, target: Target, claim: Claim) -> tuple[int | None, float]:
        batch = target.batch(claim.batch)
        tuning = run.tuning
        clock = self.host.clock
        # On a borrowed connection (a migration), the migration's own time limits apply:
        # SET LOCAL would outlive the batch's savepoint and bind the rest of the migration.
        bounded = not self.store.borrowed
        with self.store.connect() as connection:
            if bounded:
                dialects.before_begin(connection, tuning.lock_timeout)
            try:
                with self.store.transaction(connection):
                    started = clock.monotonic()
                    if bounded:
                        dialects.apply_timeouts(connection, tuning.statement_timeout, tuning.lock_timeout)
                    rows_affected = target.definition.run_work(connection, batch)
                    duration_ms = (clock.monotonic() - started) * 1000
                    if target.still_pending(connection, claim.batch):
                        raise PendingNotCleared(
                            f"batch {claim.batch.seq}: rows of {list(batch.first)}..{list(batch.last)} still match "
                            "`pending` after the work: check that `work` sets what `pending` tests"
                        )
                    refusal = self.store.complete(
                        connection, claim, rows_affected=rows_affected, duration_ms=duration_ms
                    )
                    if refusal is not None:
                        raise _Refused(refusal)
            finally:
                if bounded:
                    dialects.after_end(connection)
        return rows_affected, duration_ms


__all__ = ["Executor", "Outcome", "PendingNotCleared", "Result"]
