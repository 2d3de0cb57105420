"""Handing planned batches to a message broker, for runners whose workers live elsewhere.

The broker only carries "run batch N". What is planned, running or done lives in the store,
so a dispatcher can be stopped, duplicated or lose every message it ever sent: each tick
compares the store with what should be in flight and sends what is missing. A batch message
delivered twice is harmless (the claim admits one worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from backfill.executor import Executor, Outcome, Result, worker_is_gone
from backfill.scheduler import Plan, Scheduler
from backfill.store import Store, utcnow
from backfill.target import Targets

Send = Callable[[int], None]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        targets: Targets,
        send: Send,
        *,
        redispatch_after: float = 60.0,
        chain_seconds: float = 30.0,
    ) -> None:
        """``send(batch_id)`` puts one message on the broker. A pending batch whose message
        went out more than ``redispatch_after`` seconds ago is sent again: its message may be
        lost (broker flushed or restarted). Keep it above the time a message waits in a busy
        queue, or workers will be handed batches they then skip."""
        self.store = store
        self.scheduler = Scheduler(store, targets, lookahead=0)
        self.executor = Executor(store, targets)
        self.send = send
        self.redispatch_after = timedelta(seconds=redispatch_after)
        self.chain_seconds = chain_seconds

    def tick(self) -> int:
        """The periodic pass over every queued or running run; returns the messages sent.

        It alone is enough to carry every run to its end: it starts queued runs, takes back
        batches whose worker died or whose lease ran out, plans up to each run's parallelism,
        and re-sends batches whose message was lost.
        """
        sent = 0
        for run in self.store.runnable_runs():
            self.scheduler.release_stale(run, worker_is_gone)
            sent += self.dispatch(self.scheduler.tick(run))
        return sent

    def execute(self, batch_id: int) -> list[Outcome]:
        """Run one batch, then keep going: take the run's next planned batch and run it here
        too, until ``chain_seconds`` have passed; then send messages for what is left.

        A message starts a chain rather than a single batch: between two batches of a chain
        there is no broker round trip, so a run's batches follow each other as closely as in
        the inline runner. The number of chains is what ``parallelism`` bounds, since each
        starts from a message the tick sent; the time budget hands the worker back to the
        broker now and then, so other runs and ticks get their share.
        """
        batch = self.store.get_batch(batch_id)
        if batch is None:
            return [Outcome(batch_id, Result.SKIPPED)]
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + self.chain_seconds
        run = self.store.get_run(batch.run_id)
        next_id: int | None = batch_id
        while next_id is not None:
            outcome = self.executor.execute(run, next_id)
            outcomes.append(outcome)
            if outcome.result is Result.SKIPPED:
                return outcomes
            plan = self.scheduler.tick(run)  # the run as it is now: its tuning for the next batch
            run = plan.run
            next_id = self._take_next(plan) if time.monotonic() < deadline else None
        self.dispatch(plan)  # what the chain leaves goes to the broker
        return outcomes

    def _take_next(self, plan: Plan) -> int | None:
        """A planned batch no message is on its way for, marked so that none will be."""
        stale_before = utcnow() - self.redispatch_after
        for batch in plan.pending:
            if batch.dispatched_at is not None and batch.dispatched_at >= stale_before:
                continue
            if self.store.mark_dispatched(batch.id, unless_since=stale_before):
                return batch.id
        return None

    def dispatch(self, plan: Plan) -> int:
        stale_before = utcnow() - self.redispatch_after
        sent = 0
        for batch in plan.pending:
            if batch.dispatched_at is not None and batch.dispatched_at >= stale_before:
                continue
            if not self.store.mark_dispatched(batch.id, unless_since=stale_before):
                continue
            try:
                self.send(batch.id)
            except BaseException:
                self.store.unmark_dispatched(batch.id)
                raise
            sent += 1
        return sent


__all__ = ["Dispatcher", "Send"]
