"""The state machines of runs and batches, as data.

Every status the store writes is an edge of one of these tables, and the store writes it with a
guard in the same SQL statement (``WHERE status IN <the edge's sources>``), so two processes
racing for the same move cannot both make it. A ``Move`` names one step of the code: the sources
it may start from and the status it ends in; building one checks it against the table, so a
move the table does not allow fails when the module that declares it is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from backfill.status import BatchStatus, RunStatus

S = TypeVar("S", RunStatus, BatchStatus)

RUN_EDGES: Mapping[tuple[RunStatus | None, RunStatus], str] = {
    (None, RunStatus.PENDING): "recorded by `start` or a migration; its end is not fixed yet",
    (RunStatus.PENDING, RunStatus.RUNNING): "a planner fixed its end (the key's maximum then) and starts planning",
    (RunStatus.PENDING, RunStatus.PAUSED): "an operator paused it before it started",
    (RunStatus.PAUSED, RunStatus.PENDING): "resumed before it ever started",
    (RunStatus.RUNNING, RunStatus.PAUSED): "an operator paused it: nothing new is claimed, batches in flight finish",
    (RunStatus.PAUSED, RunStatus.RUNNING): "resumed",
    (RunStatus.RUNNING, RunStatus.FINISHED): (
        "the final pass is planned to its end and the database shows no open and no failed batch"
    ),
    (RunStatus.RUNNING, RunStatus.FAILED): (
        "too many failed batches; or a phase ended with failed batches; or planning hit an error that "
        "a retry of the same step would hit again; or a batch showed that the work does not clear `pending`"
    ),
    (RunStatus.FAILED, RunStatus.RUNNING): "an operator retried it",
    (RunStatus.PENDING, RunStatus.CANCELLED): "an operator cancelled it",
    (RunStatus.RUNNING, RunStatus.CANCELLED): "an operator cancelled it",
    (RunStatus.PAUSED, RunStatus.CANCELLED): "an operator cancelled it",
}

BATCH_EDGES: Mapping[tuple[BatchStatus | None, BatchStatus], str] = {
    (None, BatchStatus.PENDING): "planned; or one of the batches replacing a split one",
    (BatchStatus.PENDING, BatchStatus.RUNNING): "claimed by one worker, with a lease token, while its run runs",
    (BatchStatus.RUNNING, BatchStatus.SUCCEEDED): "its work and this change committed together, under its token",
    (BatchStatus.RUNNING, BatchStatus.FAILED): (
        "a permanent error; or its attempts ran out; or its worker was lost on its last attempt"
    ),
    (BatchStatus.RUNNING, BatchStatus.PENDING): (
        "released: its lease ran out or its worker is gone (an attempt is spent); or its run ended before it "
        "could commit"
    ),
    (BatchStatus.RUNNING, BatchStatus.SPLIT): "it overran its statement timeout: replaced by batches over its range",
    (BatchStatus.FAILED, BatchStatus.PENDING): "an operator retried it",
    (BatchStatus.FAILED, BatchStatus.SPLIT): "an operator retried it in halves (`retry --split`)",
}


@dataclass(frozen=True)
class Move(Generic[S]):
    """One step the code takes: from any of ``sources`` to ``target``."""

    sources: tuple[S, ...]
    target: S
    edges: Mapping[tuple[S | None, S], str]

    def __post_init__(self) -> None:
        for source in self.sources or (None,):
            if (source, self.target) not in self.edges:
                raise ValueError(f"{source or 'new'} -> {self.target} is not an edge of the state machine")

    @property
    def source_values(self) -> list[str]:
        return [s.value for s in self.sources]


def run_move(*sources: RunStatus, to: RunStatus) -> Move[RunStatus]:
    return Move(tuple(sources), to, RUN_EDGES)  # type: ignore[arg-type]


def batch_move(*sources: BatchStatus, to: BatchStatus) -> Move[BatchStatus]:
    return Move(tuple(sources), to, BATCH_EDGES)  # type: ignore[arg-type]


ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED)
"""Statuses in which batches still count: a batch finishing in a paused run counts."""
WORKING = (RunStatus.RUNNING, RunStatus.PAUSED)

__all__ = ["ACTIVE", "BATCH_EDGES", "RUN_EDGES", "WORKING", "Move", "batch_move", "run_move"]
