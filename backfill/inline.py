"""The embedded runner: a whole run in this process, batches on a pool of threads.

It holds no state of its own. Killed at any point and started again, it re-plans from the
checkpoint rows: committed batches are never redone, and batches its dead predecessor had
claimed are taken back at once rather than after their lease runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from backfill.executor import Executor, Outcome, worker_is_gone
from backfill.scheduler import Scheduler
from backfill.status import RunStatus
from backfill.store import Run, Store
from backfill.target import Targets

STALE_SWEEP_SECONDS = 5.0


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
        threads = self.threads or run.tuning.parallelism
        scheduler = Scheduler(self.store, self.targets, lookahead=threads)
        executor = Executor(self.store, self.targets)
        run = scheduler.activate(self.store.get_run(run.id))
        scheduler.release_stale(run, worker_is_gone)
        last_sweep = time.monotonic()
        in_flight: dict[Future[Outcome], int] = {}
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"backfill-{run.id}") as pool:
            try:
                while True:
                    plan = scheduler.tick(run)
                    run = plan.run
                    self._report(run)
                    if plan.over or run.status is RunStatus.PAUSED:
                        break
                    busy = set(in_flight.values())
                    for batch in plan.pending:
                        if len(in_flight) >= threads:
                            break
                        if batch.id not in busy:
                            in_flight[pool.submit(executor.execute, run, batch.id)] = batch.id
                    if not in_flight:
                        # Open batches belong to another live process: wait for it.
                        time.sleep(self.poll_interval)
                    else:
                        done, _ = wait(in_flight, timeout=self.poll_interval, return_when=FIRST_COMPLETED)
                        for future in done:
                            del in_flight[future]
                            outcome = future.result()
                            if self.on_outcome is not None:
                                self.on_outcome(outcome)
                    if time.monotonic() - last_sweep > STALE_SWEEP_SECONDS:
                        scheduler.release_stale(run, worker_is_gone)
                        last_sweep = time.monotonic()
            finally:
                for future in list(in_flight):
                    future.result()
        run = self.store.get_run(run.id)
        self._report(run)
        return run

    def _report(self, run: Run) -> None:
        if self.on_progress is not None:
            self.on_progress(run)
