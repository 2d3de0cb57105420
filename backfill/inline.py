"""The embedded runner: a whole run in this process, batches on a pool of threads.

It holds no state of its own. Killed at any point and started again, it re-plans from the
checkpoint rows: committed batches are never redone, and batches its dead predecessor had
claimed are taken back at once rather than after their lease runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from backfill.dialects import retry_transient
from backfill.executor import Executor, Outcome, Result, worker_is_gone
from backfill.scheduler import Plan, Scheduler
from backfill.status import RunStatus
from backfill.store import Run, Store
from backfill.target import Targets

T = TypeVar("T")

STALE_SWEEP_SECONDS = 5.0
TICK_SECONDS = 0.5
LOOKAHEAD_PER_THREAD = 4


class InlineRunner:
    def __init__(
        self,
        store: Store,
        targets: Targets,
        *,
        threads: int | None = None,
        on_progress: Callable[[Run], None] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        poll_interval: float = 0.25,
    ) -> None:
        self.store = store
        self.targets = targets
        self.threads = threads
        self.on_progress = on_progress
        self.on_outcome = on_outcome
        self.poll_interval = poll_interval

    def run(self, run: Run) -> Run:
        """Run until the run is over (finished, failed, cancelled) or paused; returns it then.

        On KeyboardInterrupt no new batch starts; the ones in flight finish (or roll back), and
        the interrupt propagates.
        """
        threads = 1 if self.store.borrowed else self.threads or run.tuning.parallelism
        scheduler = Scheduler(self.store, self.targets, lookahead=LOOKAHEAD_PER_THREAD * threads)
        executor = Executor(self.store, self.targets)

        def tick(run: Run) -> Plan:
            for attempt in retry_transient():
                with attempt:
                    return scheduler.tick(run)
            raise AssertionError("unreachable")

        for attempt in retry_transient():
            with attempt:
                run = scheduler.activate(self.store.get_run(run.id))
                scheduler.release_stale(run, worker_is_gone)
        in_flight: dict[Future[Outcome], int] = {}
        started: set[int] = set()
        with self._pool(threads, run) as pool:

            def start_planned(plan: Plan) -> int:
                """Start planned batches on free threads; returns how many planned are left."""
                waiting = [b for b in plan.pending if b.id not in started]
                free = max(0, threads - len(in_flight))
                for batch in waiting[:free]:
                    started.add(batch.id)
                    in_flight[pool.submit(executor.execute, plan.run, batch.id)] = batch.id
                return max(0, len(waiting) - free)

            try:
                plan = tick(run)
                last_tick = last_sweep = time.monotonic()
                while True:
                    run = plan.run
                    self._report(run)
                    if plan.over or run.status is RunStatus.PAUSED:
                        break
                    left = start_planned(plan)
                    if not in_flight:
                        # Open batches belong to another live process: wait for it.
                        time.sleep(self.poll_interval)
                    else:
                        done, _ = wait(in_flight, timeout=self.poll_interval, return_when=FIRST_COMPLETED)
                        for future in done:
                            del in_flight[future]
                            outcome = future.result()
                            if outcome.result is not Result.SUCCEEDED:
                                started.discard(outcome.batch_id)  # it may come back pending
                                left = 0
                            if self.on_outcome is not None:
                                self.on_outcome(outcome)
                        left = min(left, start_planned(plan))
                    now = time.monotonic()
                    if now - last_sweep > STALE_SWEEP_SECONDS:
                        scheduler.release_stale(run, worker_is_gone)
                        last_sweep = now
                    # Re-plan when the planned batches run low, and at least every
                    # TICK_SECONDS so a pause or cancel from elsewhere is seen promptly.
                    if left <= threads or now - last_tick > TICK_SECONDS or not in_flight:
                        plan = tick(run)
                        last_tick = now
            finally:
                for future in list(in_flight):
                    future.result()
        run = self.store.get_run(run.id)
        self._report(run)
        return run

    def _pool(self, threads: int, run: Run) -> futures.Executor:
        if self.store.borrowed:
            # One borrowed connection cannot serve two threads: run each batch in this one.
            return _InThisThread()
        return ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"backfill-{run.id}")

    def _report(self, run: Run) -> None:
        if self.on_progress is not None:
            self.on_progress(run)


class _InThisThread(futures.Executor):
    """Runs each submitted call at once, in the caller's thread."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future
