"""A run that does not move always says why on screen, and what gets it going again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backfill.progress import stall
from backfill.status import BatchStatus, RunStatus
from backfill.store import BatchStats
from tests.unit.runs import CREATED, a_run

NOW = CREATED + timedelta(hours=1)


def stats(*, running: int = 0, pending: int = 0, **times: object) -> BatchStats:
    counts = dict.fromkeys(BatchStatus, 0)
    counts[BatchStatus.RUNNING], counts[BatchStatus.PENDING] = running, pending
    return BatchStats(counts, 0, None, **times)  # type: ignore[arg-type]


def ago(seconds: float) -> object:
    return NOW - timedelta(seconds=seconds)


RUNNING = {"status": RunStatus.RUNNING, "started_at": CREATED}


@pytest.mark.parametrize(
    ("run", "batches", "says"),
    [
        (a_run(), stats(), "queued for 1h00m: nothing has started it; start `backfill run items_counter`"),
        (a_run(**RUNNING), stats(running=2, first_lease_end=ago(75)), "a runner stopped answering 1m15s ago"),
        (a_run(**RUNNING), stats(pending=3, oldest_dispatch_at=ago(42), last_moved_at=ago(42)), "sent 42s ago wait"),
        (a_run(**RUNNING), stats(pending=3, last_moved_at=ago(180)), "no runner for 3m00s: start `backfill run"),
        (a_run(status=RunStatus.RUNNING, started_at=ago(45)), stats(pending=1), "no runner for 45s"),
    ],
)
def test_a_still_run_says_why(run: object, batches: BatchStats, says: str) -> None:
    reason = stall(run, batches, NOW)  # type: ignore[arg-type]
    assert reason is not None and says in reason, reason


@pytest.mark.parametrize(
    ("run", "batches"),
    [
        (a_run(created_at=ago(5)), stats()),  # just queued: the next tick starts it
        (a_run(**RUNNING), stats(running=1, first_lease_end=NOW + timedelta(seconds=20))),  # a long batch, alive
        (a_run(**RUNNING), stats(pending=2, oldest_dispatch_at=ago(3), last_moved_at=ago(3))),
        (a_run(**RUNNING), stats(pending=2, last_moved_at=ago(10))),
        (a_run(**RUNNING, held_reason="replica lag 40s"), stats(pending=2, last_moved_at=ago(600))),  # says so itself
        (a_run(status=RunStatus.PAUSED, started_at=CREATED), stats(pending=2, last_moved_at=ago(600))),
        (a_run(status=RunStatus.FINISHED, started_at=CREATED), stats(last_moved_at=ago(600))),
    ],
)
def test_a_moving_held_or_ended_run_is_not_stalled(run: object, batches: BatchStats) -> None:
    assert stall(run, batches, NOW) is None  # type: ignore[arg-type]
