"""A run's progress, rate and ETA, read from the checkpoint store alone.

Nothing here touches the user's table: the counters on the run row and the finished batches'
timestamps say everything, so status stays instant on a table of any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from backfill.status import BatchStatus, RunStatus
from backfill.store import Run, Store, utcnow

RATE_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class RunProgress:
    run: Run
    batches_pending: int
    batches_running: int
    rate: float
    """Rows per second over the last minute (over the whole run once it is over)."""
    elapsed_seconds: float | None

    @property
    def rows_total(self) -> int | None:
        run = self.run
        if run.rows_total is None:
            return None
        return max(run.rows_total, run.rows_done)

    @property
    def fraction(self) -> float | None:
        if self.run.status is RunStatus.FINISHED:
            return 1.0
        total = self.rows_total
        if not total:
            return None
        return min(1.0, self.run.rows_done / total)

    @property
    def eta_seconds(self) -> float | None:
        total = self.rows_total
        if self.run.status is not RunStatus.RUNNING or total is None or self.rate <= 0:
            return None
        return max(0.0, (total - self.run.rows_done) / self.rate)

    def to_json(self) -> dict[str, Any]:
        run = self.run
        return {
            "id": run.id,
            "name": run.name,
            "status": run.status.value,
            "phase": run.phase.value,
            "table": f"{run.schema_name}.{run.table_name}" if run.schema_name else run.table_name,
            "rows_done": run.rows_done,
            "rows_total": self.rows_total,
            "rows_total_is_estimate": run.rows_total_estimated and run.status is not RunStatus.FINISHED,
            "rows_affected": run.rows_affected,
            "percent": None if self.fraction is None else round(100 * self.fraction, 2),
            "batches_done": run.batches_done,
            "batches_failed": run.batches_failed,
            "batches_pending": self.batches_pending,
            "batches_running": self.batches_running,
            "batch_size": run.tuning.batch_size,
            "parallelism": run.tuning.parallelism,
            "rate": round(self.rate, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "elapsed_seconds": None if self.elapsed_seconds is None else round(self.elapsed_seconds, 1),
            "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "last_error": run.last_error,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def measure(store: Store, run: Run, now: datetime | None = None) -> RunProgress:
    now = now or utcnow()
    counts = store.batch_counts(run.id)
    elapsed = None
    rate = 0.0
    if run.started_at is not None:
        end = run.finished_at or now
        elapsed = max(0.0, (end - run.started_at).total_seconds())
        if run.status.is_over or run.status is RunStatus.PAUSED:
            rate = run.rows_done / elapsed if elapsed > 0 else 0.0
        else:
            window = min(RATE_WINDOW, now - run.started_at)
            seconds = window.total_seconds()
            if seconds > 0:
                rate = store.recent_rows(run.id, now - window) / seconds
    return RunProgress(
        run=run,
        batches_pending=counts[BatchStatus.PENDING],
        batches_running=counts[BatchStatus.RUNNING],
        rate=rate,
        elapsed_seconds=elapsed,
    )
