"""When a run stops for its failed batches: past ``max_failed_ratio`` of its finished batches,
once at least ``min_batches_for_ratio`` have finished — a systematic bug stops a run within a
few batches, a handful of bad rows does not stop a night's work."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.definition import Tuning
from backfill.planner import failure_stop, too_many_failures
from backfill.status import RunStatus
from tests.unit.runs import a_run


def stops(done: int, failed: int, *, ratio: float = 0.2, minimum: int = 10) -> bool:
    tuning = Tuning(max_failed_ratio=ratio, min_batches_for_ratio=minimum)
    return too_many_failures(a_run(status=RunStatus.RUNNING, batches_done=done, batches_failed=failed, tuning=tuning))


@pytest.mark.parametrize(
    ("done", "failed", "expected"),
    [
        (0, 9, False),  # every batch failed, but only nine have finished: too few to judge
        (0, 10, True),
        (7, 3, True),  # 30% of 10
        (8, 2, False),  # exactly 20% is not more than 20%
        (1000, 200, False),
        (1000, 251, True),
        (10_000, 0, False),
    ],
)
def test_the_defaults_stop_past_a_fifth_of_ten_or_more(done: int, failed: int, expected: bool) -> None:
    assert stops(done, failed) is expected


def test_a_ratio_of_zero_stops_at_the_first_failure_once_enough_finished() -> None:
    assert not stops(8, 1, ratio=0, minimum=10)
    assert stops(9, 1, ratio=0, minimum=10)
    assert not stops(50, 0, ratio=0, minimum=1)


def test_a_ratio_of_one_never_stops() -> None:
    assert not stops(0, 500, ratio=1.0)


counts = st.integers(0, 5000)
tunings = st.builds(
    Tuning, max_failed_ratio=st.floats(0, 1, allow_nan=False), min_batches_for_ratio=st.integers(1, 200)
)


@given(done=counts, failed=counts, more=st.integers(1, 5000), tuning=tunings)
def test_more_failures_never_undo_a_stop_and_more_successes_never_cause_one_once_judged(
    done: int, failed: int, more: int, tuning: Tuning
) -> None:
    def decide(done: int, failed: int) -> bool:
        return too_many_failures(
            a_run(status=RunStatus.RUNNING, batches_done=done, batches_failed=failed, tuning=tuning)
        )

    if decide(done, failed):
        assert decide(done, failed + more)
    elif done + failed >= tuning.min_batches_for_ratio:  # judged, and under the ratio
        assert not decide(done + more, failed)
    assert not decide(done, 0)  # no failure, no stop
    assert not decide(0, min(failed, tuning.min_batches_for_ratio - 1))  # too few finished to judge


def test_the_stop_says_how_many_failed_of_how_many_and_the_last_error() -> None:
    run = a_run(status=RunStatus.RUNNING, batches_done=6, batches_failed=4, last_error="ValueError: row 77 is poisoned")
    assert failure_stop(run) == "stopped: 4 of 10 batches failed, more than 20%; last: ValueError: row 77 is poisoned"
    assert failure_stop(a_run(status=RunStatus.RUNNING, batches_done=9, batches_failed=1)) is None
