"""Runs one batch: claim it, bound it in time, do the work, record it — or record why not.

The work and the batch's checkpoint commit in one transaction, guarded by the claim's token, so
a batch delivered twice, or re-claimed after its worker vanished, changes its rows once.
Transient database errors are retried here with backoff; anything else fails the batch at once
and its error stays on the batch row.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tenacity import RetryCallState

from backfill import dialects, keyset
from backfill.definition import Batch
from backfill.status import ErrorKind
from backfill.store import Claim, Run, Store
from backfill.target import Target, Targets

_HOST = socket.gethostname()
logger = logging.getLogger(__name__)


def worker_name() -> str:
    """Who is running a batch: host, process and thread, so a dead owner can be recognised."""
    return f"{_HOST}:{os.getpid()}:{threading.current_thread().name}"


def worker_is_gone(worker: str) -> bool:
    """True when ``worker`` names a process on this host that no longer exists."""
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


HEARTBEAT_SECONDS = float(os.environ.get("BACKFILL_HEARTBEAT_SECONDS") or 10.0)
"""How often a worker renews the lease of the batches it is running."""


def lease_seconds(run: Run) -> float:
    """How long a claim is honoured without a heartbeat: three missed heartbeats mean the worker
    is stuck or gone, and the batch may be handed to someone else."""
    return 3 * HEARTBEAT_SECONDS


class Heartbeat:
    """One thread per executor renewing the leases of the batches in progress."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._claims: dict[int, tuple[Claim, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def keep(self, claim: Claim, lease: float) -> Iterator[None]:
        if self.store.borrowed:
            yield  # one borrowed connection serves one thread: no heartbeat beside the batch
            return
        with self._lock:
            self._claims[claim.batch.id] = (claim, lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="backfill-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._claims.pop(claim.batch.id, None)

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                claims = list(self._claims.values())
            for claim, lease in claims:
                try:
                    self.store.extend_lease(claim, lease)
                except Exception:  # a missed beat is survivable; the next one tries again
                    logger.warning("heartbeat of batch %s failed", claim.batch.id, exc_info=True)


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


class _ClaimLost(Exception):
    """Another worker owns the batch now; this attempt's work must not commit."""


class Executor:
    def __init__(self, store: Store, targets: Targets) -> None:
        self.store = store
        self.targets = targets
        self.heartbeat = Heartbeat(store)

    def execute(self, run: Run, batch_id: int) -> Outcome:
        claim = self.store.claim(run, batch_id, worker_name(), lease_seconds(run))
        if claim is None:
            return Outcome(batch_id, Result.SKIPPED)
        target = self.targets.get(run.name)
        tries = max(1, run.tuning.max_attempts - claim.batch.attempts + 1)
        attempts = 0

        def note_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.store.record_retry(claim, dialects.error_text(exc) if exc else "retry")

        retrying = dialects.retry_transient(tries).copy(before_sleep=note_retry)
        try:
            with self.heartbeat.keep(claim, lease_seconds(run)):
                for attempt in retrying:
                    with attempt:
                        attempts += 1
                        rows_affected, duration_ms = self._run_once(run, target, claim)
        except _ClaimLost:
            return Outcome(batch_id, Result.SKIPPED, attempts=attempts)
        except Exception as exc:
            error = dialects.error_text(exc)
            if dialects.classify(exc) is ErrorKind.TIMEOUT and self._split(target, claim, error):
                return Outcome(batch_id, Result.SPLIT, rows=claim.batch.rows, attempts=attempts, error=error)
            if dialects.classify(exc) is ErrorKind.TIMEOUT:
                error = (
                    f"batch exceeded its statement timeout of {run.tuning.statement_timeout:g}s ({error}): "
                    "lower the batch size or raise statement_timeout"
                )
            elif dialects.classify(exc) is ErrorKind.TRANSIENT:
                error = f"gave up after {claim.batch.attempts + attempts - 1} attempts: {error}"
            self.store.fail(claim, error)
            return Outcome(batch_id, Result.FAILED, rows=claim.batch.rows, attempts=attempts, error=error)
        pause = run.tuning.pause_seconds + run.tuning.nice_ratio * duration_ms / 1000
        if pause:
            time.sleep(pause)  # throttling: this worker slot leaves the database alone a while
        return Outcome(
            batch_id,
            Result.SUCCEEDED,
            rows=claim.batch.rows,
            rows_affected=rows_affected,
            duration_ms=duration_ms,
            attempts=attempts,
        )

    def _split(self, target: Target, claim: Claim, error: str) -> bool:
        """Replace a batch that ran out of time by its two halves, when it can be cut."""
        record = claim.batch
        if record.rows < 2:
            return False
        first, last = target.decode(record.first_key), target.decode(record.last_key)
        assert first is not None and last is not None
        with self.store.connect() as connection:
            spans = keyset.halves(connection, target.key_columns, first, last, record.rows)
        if len(spans) < 2:
            return False
        return self.store.split(claim, spans, f"split in two after a statement timeout: {error}")

    def _run_once(self, run: Run, target: Target, claim: Claim) -> tuple[int | None, float]:
        record = claim.batch
        batch = Batch(
            id=record.id,
            run_id=record.run_id,
            seq=record.seq,
            phase=record.phase,
            key_columns=run.key_columns,
            first=target.decode(record.first_key) or (),
            last=target.decode(record.last_key) or (),
            rows=record.rows,
        )
        tuning = run.tuning
        # On a borrowed connection (a migration), the migration's own time limits apply:
        # SET LOCAL would outlive the batch's savepoint and bind the rest of the migration.
        bounded = not self.store.borrowed
        with self.store.connect() as connection:
            if bounded:
                dialects.before_begin(connection, tuning.lock_timeout)
            try:
                with self.store.transaction(connection):
                    started = time.perf_counter()
                    if bounded:
                        dialects.apply_timeouts(connection, tuning.statement_timeout, tuning.lock_timeout)
                    rows_affected = target.definition.run_work(connection, batch)
                    duration_ms = (time.perf_counter() - started) * 1000
                    if not self.store.complete(connection, claim, rows_affected=rows_affected, duration_ms=duration_ms):
                        raise _ClaimLost
            finally:
                if bounded:
                    dialects.after_end(connection)
        return rows_affected, duration_ms
