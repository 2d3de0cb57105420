"""The embedded runner: a whole run in this process, batches on a pool of threads.

It holds no state of its own. Killed at any point and started again, it re-plans from the
checkpoint rows: committed batches are never redone, and batches its dead predecessor had
claimed are taken back at once rather than after their lease runs out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from backfill.executor import Executor, Outcome
from backfill.failures import retried
from backfill.host import Host
from backfill.outage import Outage, is_outage
from backfill.planner import Plan, Planner
from backfill.status import RunStatus
from backfill.store import Run, Store
from backfill.target import Targets

T = TypeVar("T")

STALE_SWEEP_SECONDS = 5.0
TICK_SECONDS = 0.5
LOOKAHEAD_PER_THREAD = 8
"""Batches planned ahead per thread: a chain plans again only when they run out."""


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
        on_wait: Callable[[str | None], None] | None = None,
        outage_seconds: float | None = None,
    ) -> None:
        self.store = store
        self.targets = targets
        self.threads = threads
        self.on_progress = on_progress
        self.on_outcome = on_outcome
        self.poll_interval = poll_interval
        self.host = host or Host()
        self.pool = pool or self._pool
        self.on_wait = on_wait
        """Told "waiting for the database: ..." during an outage, and None once it is over."""
        self.outage_seconds = outage_seconds
        """How long a database outage is waited out (None: ``BACKFILL_OUTAGE_SECONDS``)."""

    def run(self, run: Run) -> Run:
        """Run until the run is over (finished, failed, cancelled) or paused; returns it then.

        Each thread runs a chain: batch after batch on one connection, each commit claiming the
        next, planning more when the planned ones run out. This thread starts the chains, sweeps
        claims whose worker is gone, re-plans now and then (so a hold, pause or cancel is seen),
        and reports progress. On KeyboardInterrupt no chain starts another batch; the batches in
        flight finish (or roll back), and the interrupt propagates.
        """
        threads = 1 if self.store.borrowed else self.threads or run.tuning.parallelism
        clock = self.host.clock
        planner = Planner(self.store, self.targets, lookahead=LOOKAHEAD_PER_THREAD * threads, clock=clock)
        executor = Executor(self.store, self.targets, host=self.host)
        planning = threading.Lock()  # one planner, shared by the chains and this thread
        stopping = threading.Event()

        def tick(run: Run, plan: bool = True) -> Plan:
            with planning:
                return retried(lambda: planner.tick(run, plan=plan), clock.sleep)

        def sweep(run: Run, mine: bool = False) -> None:
            gone = _or_mine(self.host) if mine else self.host.is_gone
            retried(lambda: planner.release_stale(run, gone), clock.sleep)

        def chain(run: Run) -> list[Outcome]:
            def plan_ahead(run: Run, count: int) -> Run:
                with planning:
                    return retried(lambda: planner.plan_ahead(run, count), clock.sleep)

            def watch(run: Run) -> Run:
                if not planner.watch_due(run):
                    return run
                with planning:
                    return retried(lambda: planner.watch(run), clock.sleep)

            return executor.run_chain(
                run,
                refill=lambda run: tick(run).run,
                plan_ahead=plan_ahead,
                watch=watch,
                keep_going=lambda: not stopping.is_set(),
                on_outcome=self.on_outcome,
            )

        outage = (
            None
            if self.store.borrowed
            else Outage(self.store.engine, clock, f"backfill run {run.name}", self.outage_seconds)
        )
        chains: set[Future[list[Outcome]]] = set()
        with self.pool(threads, run) as pool:
            try:
                plan: Plan | None = None
                while True:
                    try:
                        if plan is None:  # at the start, and once the database is back
                            # The claims of a dead predecessor come back at once; after an
                            # outage, those of this process's own chains too (all have ended).
                            sweep(run, mine=outage is not None and outage.since is not None)
                            plan = tick(run)
                            last_tick = last_sweep = clock.monotonic()
                            if outage is not None:
                                outage.over(self.on_wait)
                        run = plan.run
                        self._report(run)
                        if plan.over or run.status is RunStatus.PAUSED:
                            break
                        for _ in range(min(threads - len(chains), len(plan.pending))):
                            chains.add(pool.submit(chain, run))
                        ended = False
                        if chains:
                            done, _ = wait(chains, timeout=self.poll_interval, return_when=FIRST_COMPLETED)
                            for future in done:
                                chains.discard(future)
                                future.result()
                                ended = True
                        else:
                            clock.sleep(self.poll_interval)  # open batches belong to another live process
                        now = clock.monotonic()
                        if now - last_sweep > STALE_SWEEP_SECONDS:
                            sweep(run)
                            last_sweep = now
                        if ended or not chains or now - last_tick > TICK_SECONDS:
                            plan = tick(run, plan=not chains)  # running chains plan their own batches
                            last_tick = now
                    except Exception as exc:
                        if outage is None or not is_outage(exc):
                            raise
                        _end_all(chains)
                        outage.wait(exc, self.on_wait)
                        plan = None
            finally:
                stopping.set()
                for future in list(chains):
                    future.result()
        run = retried(lambda: self.store.get_run(run.id), clock.sleep)
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


def _end_all(chains: set[Future[list[Outcome]]]) -> None:
    """Let every chain end (in an outage each does soon: its next statement fails), and raise
    what is not the outage's own doing."""
    wait(chains)
    errors = [error for future in chains if (error := future.exception()) is not None]
    chains.clear()
    for error in errors:
        if not is_outage(error):
            raise error


def _or_mine(host: Host) -> Callable[[str], bool]:
    """Whether a claim's worker is gone, or is one of this process's own chains: after an
    outage, all of them have ended, and their claims are to be taken back now rather than once
    their leases run out. (A claim this process did not make is left to its lease.)"""
    own = host.worker_name().rpartition(":")[0] + ":"
    return lambda worker: host.is_gone(worker) or worker.startswith(own)


class _InThisThread(futures.Executor):
    """Runs each submitted call at once, in the caller's thread."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future
