"""Handing planned batches to a message broker, for runners whose workers live elsewhere.

The broker only carries "run batch N". What is planned, running or done lives in the store,
so a dispatcher can be stopped, duplicated or lose every message it ever sent: each tick
compares the store with what should be in flight and sends what is missing. A batch message
delivered twice is harmless (the claim admits one worker).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from backfill.executor import Executor, Outcome, Result
from backfill.failures import retried
from backfill.host import Host
from backfill.planner import Plan, Planner
from backfill.status import RunStatus
from backfill.store import Run, Store
from backfill.target import Targets

Send = Callable[[int], None]
T = TypeVar("T")


LOOKAHEAD = 8
"""Batches planned beyond the run's parallelism, for chains to carry on to."""


class Dispatcher:
    def __init__(
        self,
        store: Store,
        targets: Targets,
        send: Send,
        *,
        redispatch_after: float = 60.0,
        chain_seconds: float = 30.0,
        host: Host | None = None,
    ) -> None:
        """``send(batch_id)`` puts one message on the broker. A pending batch whose message
        went out more than ``redispatch_after`` seconds ago (by the database's clock) is sent
        again: its message may be lost (broker flushed or restarted). Keep it above the time a
        message waits in a busy queue, or workers will be handed batches they then skip."""
        self.store = store
        self.host = host or Host()
        self.planner = Planner(store, targets, lookahead=LOOKAHEAD, clock=self.host.clock)
        self.executor = Executor(store, targets, host=self.host)
        self.send = send
        self.redispatch_after = redispatch_after
        self.chain_seconds = chain_seconds

    def tick(self) -> int:
        """The periodic pass over every queued or running run; returns the messages sent.

        It alone is enough to carry every run to its end: it starts queued runs, takes back
        batches whose worker died or whose lease ran out, plans ahead, and sends a message for
        each chain the run is short of — or again, for a batch whose message was lost.
        """
        sent = 0
        for run in self._retried(self.store.runnable_runs):
            self._retried(lambda: self.planner.release_stale(run, self.host.is_gone))  # noqa: B023
            sent += self.dispatch(self._retried(lambda: self.planner.tick(run)))  # noqa: B023
        return sent

    def execute(self, batch_id: int) -> list[Outcome]:
        """Run one batch, then keep going: each batch's commit claims the run's next free one,
        until ``chain_seconds`` have passed; then send messages for what is left.

        A message starts a chain rather than a single batch: between two batches of a chain
        there is no broker round trip and no separate claim, so a run's batches follow each
        other as closely as in the inline runner. The number of chains is what ``parallelism``
        bounds, since each starts from a message the tick sent; the time budget hands the worker
        back to the broker now and then, so other runs and ticks get their share.
        """
        batch = self._retried(lambda: self.store.get_batch(batch_id))
        if batch is None:
            return [Outcome(batch_id, Result.SKIPPED)]
        clock = self.host.clock
        deadline = clock.monotonic() + self.chain_seconds
        run = self._retried(lambda: self.store.get_run(batch.run_id))
        outcomes = self.executor.run_chain(
            run,
            first=batch_id,
            keep_going=lambda: clock.monotonic() < deadline,
            redispatch_after=self.redispatch_after,
            refill=self._refill,
            plan_ahead=lambda run, count: self._retried(lambda: self.planner.plan_ahead(run, count)),
            watch=lambda run: self._retried(lambda: self.planner.watch(run)),
        )
        if outcomes and not (len(outcomes) == 1 and outcomes[0].result is Result.SKIPPED):
            self.dispatch(self._retried(lambda: self.planner.tick(run)))  # what the chain leaves
        return outcomes

    def _refill(self, run: Run) -> Run:
        return self._retried(lambda: self.planner.tick(run)).run

    def dispatch(self, plan: Plan) -> int:
        """Send a message for each chain the run is short of (see ``Store.dispatch_chains``)."""
        if plan.run.status is not RunStatus.RUNNING or not plan.pending:
            return 0
        marked = self._retried(lambda: self.store.dispatch_chains(plan.run, redispatch_after=self.redispatch_after))
        for sent, batch_id in enumerate(marked):
            try:
                self.send(batch_id)
            except BaseException:
                for unsent in marked[sent:]:
                    self.store.unmark_dispatched(unsent)
                raise
        return len(marked)

    def _retried(self, call: Callable[[], T]) -> T:
        return retried(call, self.host.clock.sleep)


__all__ = ["Dispatcher", "Send"]
