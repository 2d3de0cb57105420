"""The embedded runner: a whole run in this process, batches on a pool of threads.

It holds no state of its own. Killed at any point and started again, it re-plans from the
checkpoint rows: committed batches are never redone, and batches its dead predecessor had
claimed are taken back at once rather than after their lease runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from backfill.dialects import retried
from backfill.executor import Executor, Outcome, Result
from backfill.host import Host
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
        host: Host | None = None,
        pool: Callable[[int, Run], futures.Executor] | None = None,
    ) -> None:
        self.store = store
        self.targets = targets
        self.threads = threads
        self.on_progress = on_progress
        self.on_outcome = on_outcome
        self.poll_interval = poll_interval
        self.host = host or Host()
        self.pool = pool or self._pool

    def run(self, run: Run) -> Run:
        """Run until the run is over (finished, failed, cancelled) or paused; returns it then.

        On KeyboardInterrupt no new batch starts; the ones in flight finish (or roll back), and
        the interrupt propagates.
        """
        threads = 1 if self.store.borrowed else self.threads or run.tuning.parallelism
        clock = self.host.clock
        scheduler = Scheduler(self.store, self.targets, lookahead=LOOKAHEAD_PER_THREAD * threads, clock=clock)
        executor = Executor(self.store, self.targets, host=self.host)

        def tick(run: Run) -> Plan:
            return retried(lambda: scheduler.tick(run), clock.sleep)

        def sweep(run: Run) -> None:
            retried(lambda: scheduler.release_stale(run, self.host.is_gone), clock.sleep)

        sweep(run)  # the claims of a dead predecessor come back at once
        in_flight: dict[Future[Outcome], int] = {}
        started: set[int] = set()
        with self.pool(threads, run) as pool:

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
                last_tick = last_sweep = clock.monotonic()
                while True:
                    run = plan.run
                    self._report(run)
                    if plan.over or run.status is RunStatus.PAUSED:
                        break
                    left = start_planned(plan)
                    if not in_flight:
                        # Open batches belong to another live process: wait for it.
                        clock.sleep(self.poll_interval)
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
                    now = clock.monotonic()
                    if now - last_sweep > STALE_SWEEP_SECONDS:
                        sweep(run)
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
