"""The batch-size policy as properties: whatever the batches took, the next size stays within
the run's bounds, moves in bounded steps, and only ever towards the target duration."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.definition import Tuning
from backfill.sizing import ms_per_row, next_batch_size, target_seconds


@dataclass(frozen=True)
class Case:
    """A size within the run's bounds, the batches' time per row, and the run's tuning."""

    size: int
    ms_per_row: float
    tuning: Tuning
    pace: float | None = None
    """The impact budget's pace, when the run has a budget."""

    @property
    def target_ms(self) -> float:
        return target_seconds(self.tuning, self.pace) * 1000

    @property
    def ideal(self) -> float:
        """The size that would take exactly the target duration."""
        return self.target_ms / self.ms_per_row

    def next(self) -> int:
        return next_batch_size(self.size, self.ms_per_row, self.tuning, self.pace)

    def duration_ms(self, size: int) -> float:
        return size * self.ms_per_row


@st.composite
def cases(draw: st.DrawFn) -> Case:
    low = draw(st.integers(1, 10_000), label="min_batch_size")
    high = draw(st.integers(low, 200_000), label="max_batch_size")
    tuning = Tuning(
        min_batch_size=low,
        max_batch_size=high,
        target_batch_seconds=draw(st.floats(0.001, 60, allow_nan=False), label="target_batch_seconds"),
        impact_budget=draw(st.sampled_from([0.0, 0.1]), label="impact_budget"),
    )
    size = draw(st.integers(low, high), label="size")
    per_row = draw(st.floats(1e-4, 1e4, allow_nan=False, allow_infinity=False), label="ms_per_row")
    pace = draw(st.none() | st.floats(0.02, 1.0), label="pace")
    return Case(size, per_row, tuning, pace)


@given(cases())
def test_the_size_stays_within_the_bounds(case: Case) -> None:
    new = case.next()
    assert case.tuning.min_batch_size <= new <= case.tuning.max_batch_size


@given(cases())
def test_one_step_grows_at_most_four_times_and_shrinks_at_most_by_half(case: Case) -> None:
    new = case.next()
    assert new <= case.size * 4
    assert new * 2 >= case.size


@given(cases())
def test_the_size_moves_towards_the_target_duration_and_never_past_it(case: Case) -> None:
    new = case.next()
    if case.ideal > case.size:
        assert case.size <= new <= max(case.size, round(case.ideal))
    elif case.ideal < case.size:
        assert min(case.size, round(case.ideal)) <= new <= case.size
    target_ms = case.target_ms
    assert abs(case.duration_ms(new) - target_ms) <= abs(case.duration_ms(case.size) - target_ms) + case.ms_per_row


@given(cases())
def test_a_change_of_a_tenth_or_less_is_not_made(case: Case) -> None:
    new = case.next()
    assert new == case.size or abs(new - case.size) > case.size / 10


def test_it_settles_on_the_target_from_below_and_from_above() -> None:
    tuning = Tuning(target_batch_seconds=0.05, min_batch_size=5, max_batch_size=1000)
    assert next_batch_size(10, 0.5, tuning) == 40  # 100 rows would take 50 ms: x4 at most
    assert next_batch_size(40, 0.5, tuning) == 100
    assert next_batch_size(100, 0.5, tuning) == 100
    assert next_batch_size(400, 0.5, tuning) == 200  # half at most
    assert next_batch_size(105, 0.5, tuning) == 105  # within a tenth: left alone


def test_without_a_target_the_size_is_kept() -> None:
    assert next_batch_size(500, 1000.0, Tuning(target_batch_seconds=0)) == 500


@pytest.mark.parametrize(("size", "expected"), [(20, 100), (90_000, 50_000)])
def test_a_size_set_outside_the_bounds_comes_back_inside(size: int, expected: int) -> None:
    tuning = Tuning(target_batch_seconds=0.05, min_batch_size=100, max_batch_size=50_000)
    per_row = tuning.target_batch_seconds * 1000 / size  # the size is already on target
    assert next_batch_size(size, per_row, tuning) == expected


def test_each_newer_batch_moves_the_time_per_row_by_three_tenths_of_its_distance() -> None:
    assert ms_per_row([]) is None
    assert ms_per_row([(0, 5.0), (10, 0.0)]) is None  # nothing measured
    assert ms_per_row([(100, 50.0)]) == pytest.approx(0.5)
    assert ms_per_row([(100, 50.0), (100, 150.0)]) == pytest.approx(0.5 + 0.3 * (1.5 - 0.5))
    assert ms_per_row([(100, 50.0), (0, 0.0), (100, 150.0)]) == pytest.approx(0.8)  # unmeasured: skipped
    # Over a full window of eight, the newest outweighs the oldest: a slow batch just now
    # raises the average more than the same slow batch seven batches ago.
    slow_now = ms_per_row([(100, 50.0)] * 7 + [(100, 150.0)])
    slow_then = ms_per_row([(100, 150.0)] + [(100, 50.0)] * 7)
    assert slow_now is not None and slow_then is not None
    assert 0.5 < slow_then < slow_now < 1.5


def test_a_paced_run_aims_at_shorter_batches_down_to_a_twentieth_of_the_target() -> None:
    tuning = Tuning(target_batch_seconds=0.05, min_batch_size=1, impact_budget=0.1)
    assert next_batch_size(100, 0.5, tuning, pace=1.0) == 100  # full speed: the target itself
    assert next_batch_size(100, 0.5, tuning, pace=0.5) == 50  # half the time in batches: 25 ms
    assert next_batch_size(100, 0.5, tuning, pace=0.1) == 50  # a tenth: 5 ms, but halving at most
    assert next_batch_size(20, 0.5, tuning, pace=0.1) == 10  # then 5 ms
    assert next_batch_size(10, 0.5, tuning, pace=0.01) == 5  # a hundredth: no, a twentieth, 2.5 ms
    assert next_batch_size(5, 0.5, tuning, pace=0.01) == 5
    assert next_batch_size(100, 0.5, Tuning(target_batch_seconds=0.05, min_batch_size=10), pace=0.1) == 100  # no budget
