"""A run's progress, rate and ETA, read from the checkpoint store alone.

Nothing here touches the user's table: the counters on the run row and the finished batches'
timestamps say everything, so status stays instant on a table of any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from backfill import sizing
from backfill.status import BatchStatus, Phase, RunStatus
from backfill.store import BatchStats, FinalPass, Run, Store

RATE_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class RunProgress:
    run: Run
    batches_pending: int
    batches_running: int
    rate: float
    """Rows per second over the last minute (over the whole run once it is over)."""
    elapsed_seconds: float | None
    refined_total: int | None = None
    """The total re-estimated from how far the sweep has gone, when that beats the catalog's."""
    rate_wait_seconds: float = 0.0
    """How long the rate cap holds the run's next batch back (0: not at all)."""
    stalled: str | None = None
    """Why an active run is not moving and what starts it again, when it is not (see ``stall``)."""

    @property
    def final_pass_covers(self) -> str:
        """What the run's final pass promises, in words (the README's promise, per run)."""
        if self.run.final_pass is FinalPass.PENDING:
            return "every row still pending, anywhere in the key range"
        return "only keys added past the end: rows added below it during the run are not processed"

    @property
    def rows_total(self) -> int | None:
        """The estimate (or the exact total), raised to the rows done when they passed it."""
        total = self._estimated_total
        return None if total is None else max(total, self.run.rows_done)

    @property
    def rows_total_raised(self) -> bool:
        """Rows done have passed the estimate: ``rows_total`` shows them, not the estimate."""
        total = self._estimated_total
        return total is not None and self.run.rows_done > total

    @property
    def _estimated_total(self) -> int | None:
        return self.refined_total if self.refined_total is not None else self.run.rows_total

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
        if self.run.status is not RunStatus.RUNNING or total is None or self.rate <= 0 or self.stalled:
            return None
        return max(0.0, (total - self.run.rows_done) / self.rate)

    @property
    def batch_size(self) -> int:
        """The rows the batches planned from now on hold: the batch size, or less under a rate
        cap (``sizing.planned_size``), which the setting alone would not tell."""
        return sizing.planned_size(self.run.tuning)

    @property
    def throttle_json(self) -> dict[str, Any] | None:
        """An operator's throttle in force (its time may have run out: ``until`` says when)."""
        run = self.run
        if not run.status.is_active or (run.throttled_until is None and not run.throttle_query):
            return None
        return {"until": _iso(run.throttled_until), "query": run.throttle_query, "reason": run.throttle_reason}

    @property
    def impact_json(self) -> dict[str, Any] | None:
        """The impact budget and what its controller last decided, while it has one."""
        run = self.run
        if not run.tuning.impact_budget:
            return None
        return {
            "budget": run.tuning.impact_budget,
            "pace": round(run.pace_in_force, 3),
            "decision": run.impact_note,
        }

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
            "rows_total_raised": self.rows_total_raised,
            "rows_affected": run.rows_affected,
            "percent": None if self.fraction is None else round(100 * self.fraction, 2),
            "batches_done": run.batches_done,
            "batches_failed": run.batches_failed,
            "batches_pending": self.batches_pending,
            "batches_running": self.batches_running,
            "batches_in_flight": self.batches_running,
            "batch_size": self.batch_size,
            "batch_size_setting": run.tuning.batch_size,
            "parallelism": run.tuning.parallelism,
            "rate": round(self.rate, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "elapsed_seconds": None if self.elapsed_seconds is None else round(self.elapsed_seconds, 1),
            "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "last_error": run.last_error,
            # A paused run keeps the reason it paused itself for (a critical load) until resumed.
            "held_reason": run.held_reason if run.status in (RunStatus.RUNNING, RunStatus.PAUSED) else None,
            "held_since": _iso(run.held_since) if run.status in (RunStatus.RUNNING, RunStatus.PAUSED) else None,
            "throttle": self.throttle_json,
            "impact": self.impact_json,
            "rate_cap": run.tuning.max_rows_per_second or None,
            "rate_cap_wait_seconds": round(self.rate_wait_seconds, 2) if run.status is RunStatus.RUNNING else 0.0,
            "final_pass": run.final_pass.value,
            "final_pass_covers": self.final_pass_covers,
            "stalled": self.stalled,
            "started_by": run.started_by,
            "params": run.params,
        }


def duration(seconds: float | None) -> str:
    """Seconds as an operator reads them at a glance: 42s, 3m07s, 2h05m."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def refine_total(run: Run, planned_rows: int, first_key: list[Any] | None) -> int | None:
    """Re-estimate the rows of a run from the share of its key range already planned.

    For a one-column integer key the keys are numbers, so the cursor says how far through
    the range the sweep is; rows planned so far over that share is a better total than the
    catalog's estimate, and improves as the run goes. Once the main sweep is fully planned,
    its planned rows are the exact total.
    """
    if not run.rows_total_estimated:
        return None
    if run.planned_all or run.phase is not Phase.MAIN:
        return planned_rows
    if len(run.key_columns) != 1 or not run.cursor or not run.end_key or not first_key:
        return None
    start, cursor, end = first_key[0], run.cursor[0], run.end_key[0]
    if not all(isinstance(v, int) for v in (start, cursor, end)) or end <= start:
        return None
    share = (cursor - start + 1) / (end - start + 1)
    if share < 0.001:
        return None
    return round(planned_rows / float(share))


def measure(store: Store, run: Run, now: datetime | None = None) -> RunProgress:
    now = now or store.db_time()
    stats = store.batch_stats(run.id)
    counts = stats.counts
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
                rate = store.recent_rows(run.id, seconds) / seconds
    wait = 0.0
    if run.tuning.max_rows_per_second and run.rate_next_at is not None and run.rate_next_at > now:
        wait = (run.rate_next_at - now).total_seconds()
    return RunProgress(
        run=run,
        batches_pending=counts[BatchStatus.PENDING],
        batches_running=counts[BatchStatus.RUNNING],
        rate=rate,
        elapsed_seconds=elapsed,
        refined_total=refine_total(run, stats.planned_main_rows, stats.first_key),
        rate_wait_seconds=wait,
        stalled=None if wait else stall(run, stats, now),
    )


STILL_FOR = timedelta(seconds=30)
"""How long an active run may go without a batch starting or ending before status calls it
stalled: longer than a tick, a redispatch or a chain's hand-over, far shorter than an operator's
patience."""
UNTAKEN_FOR = timedelta(seconds=10)


def stall(run: Run, stats: BatchStats, now: datetime) -> str | None:
    """Why an active run is not moving, with what gets it going, or None while it moves (or is
    held, paused or rate-capped: those say so themselves)."""
    name = run.name
    start_it = f"start `backfill run {name}`, or a worker and the scheduler"
    if run.status is RunStatus.PENDING:
        queued = now - run.created_at
        return (
            f"queued for {duration(queued.total_seconds())}: nothing has started it; {start_it}"
            if queued > STILL_FOR
            else None
        )
    if run.status is not RunStatus.RUNNING or run.held_reason:
        return None
    if stats.first_lease_end is not None and stats.first_lease_end < now:
        gone = duration((now - stats.first_lease_end).total_seconds())
        return (
            f"a runner stopped answering {gone} ago holding {stats.counts[BatchStatus.RUNNING]} batch(es): "
            f"the scheduler's next tick or `backfill run {name}` takes them back"
        )
    if stats.counts[BatchStatus.RUNNING]:
        return None
    if stats.oldest_dispatch_at is not None and now - stats.oldest_dispatch_at > UNTAKEN_FOR:
        waited = duration((now - stats.oldest_dispatch_at).total_seconds())
        return f"batches sent {waited} ago wait for a worker (sent again if lost): start `backfill worker`"
    last = max((t for t in (stats.last_moved_at, run.started_at) if t is not None), default=run.created_at)
    if now - last > STILL_FOR:
        return f"no runner for {duration((now - last).total_seconds())}: {start_it}"
    return None
