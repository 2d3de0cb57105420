"""Handing planned batches to a message broker, for runners whose workers live elsewhere.

The broker only carries "run batch N". What is planned, running or done lives in the store,
so a dispatcher can be stopped, duplicated or lose every message it ever sent: each tick
compares the store with what should be in flight and sends what is missing. A batch message
delivered twice is harmless (the claim admits one worker).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
K = TypeVar("K")


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
        top_up: bool = True,
    ) -> None:
        """``send(batch_id)`` puts one message on the broker. A pending batch whose message
        went out more than ``redispatch_after`` seconds ago (by the database's clock) is sent
        again: its message may be lost (broker flushed or restarted). Keep it above the time a
        message waits in a busy queue, or workers will be handed batches they then skip.
        Without ``top_up`` a chain that ends sends no message: under a fleet's cap only the
        tick starts chains (one tick at a time), so the cap holds between ticks too."""
        self.store = store
        self.host = host or Host()
        self.planner = Planner(store, targets, lookahead=LOOKAHEAD, clock=self.host.clock)
        self.executor = Executor(store, targets, host=self.host)
        self.send = send
        self.redispatch_after = redispatch_after
        self.chain_seconds = chain_seconds
        self.top_up = top_up

    def tick(self) -> int:
        """The periodic pass over every queued or running run; returns the messages sent.

        It alone is enough to carry every run to its end: it starts queued runs, takes back
        batches whose worker died or whose lease ran out, plans ahead, and sends a message for
        each chain the run is short of — or again, for a batch whose message was lost.
        """
        return sum(self.dispatch(plan) for plan in self.plans())

    def plans(self) -> list[Plan]:
        """The tick without its messages: every queued or running run started, its stale
        claims taken back, its batches planned ahead; what is left is to send (``dispatch``)."""
        found = []
        for run in self._retried(self.store.runnable_runs):
            self._retried(lambda: self.planner.release_stale(run, self.host.is_gone))  # noqa: B023
            found.append(self._retried(lambda: self.planner.tick(run)))  # noqa: B023
        return found

    def in_flight(self) -> int:
        return self._retried(lambda: self.store.chains_in_flight(redispatch_after=self.redispatch_after))

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
            left = self._retried(lambda: self.planner.tick(run))  # what the chain leaves
            if self.top_up:
                self.dispatch(left)
        return outcomes

    def _refill(self, run: Run) -> Run:
        return self._retried(lambda: self.planner.tick(run)).run

    def dispatch(self, plan: Plan, limit: int | None = None) -> int:
        """Send a message for each chain the run is short of, ``limit`` at most (see
        ``Store.dispatch_chains``)."""
        if plan.run.status is not RunStatus.RUNNING or not plan.pending:
            return 0
        marked = self._retried(
            lambda: self.store.dispatch_chains(plan.run, redispatch_after=self.redispatch_after, limit=limit)
        )
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


def share(members: Sequence[K], send_one: Callable[[K], bool], budget: int, start: int = 0) -> int:
    """Start up to ``budget`` chains over ``members``, one per member per round, beginning at
    ``start`` (the caller turns it from tick to tick), until the budget is spent or a round
    starts none: a fleet's cap shared fairly, so a member with many runs or a high parallelism
    does not starve the others. ``send_one(member)`` starts one chain of that member if it wants
    one. Returns the chains started."""
    if not members or budget <= 0:
        return 0
    order = [members[(start + i) % len(members)] for i in range(len(members))]
    wanting = list(order)
    started = 0
    while wanting and started < budget:
        still = []
        for member in wanting:
            if started >= budget:
                break
            if send_one(member):
                started += 1
                still.append(member)
        wanting = still
    return started


__all__ = ["Dispatcher", "Send", "share"]
