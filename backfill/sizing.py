"""How big the next batches are: the size that would take ``target_batch_seconds`` at the time
per row the recent batches took, reached in bounded steps.

Pure arithmetic on numbers the planner reads from the store, kept apart from it so the policy
can be checked on its own (``tests/unit/test_sizing.py``) without a database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from backfill.definition import Tuning

GROW_AT_MOST = 4.0
SHRINK_AT_MOST = 2.0
"""How far one adjustment moves the batch size: up by at most x4 (a batch far below its target
duration holds nobody up, and a run spends less of itself on small batches), down by at most
half (a batch over its target holds locks longer than meant: the size comes down at once, but
one slow batch does not halve it twice)."""
EMA_ALPHA = 0.3
"""Each newer batch moves the time per row by this share of its distance from it: one outlier
moves it by less than a third, and over a full window the newest batch weighs most."""
SETTLED = 0.1
"""A change of at most this share of the size is not made: one slow batch does not whipsaw it."""
RATE_BURST_SECONDS = 0.5
"""Under a rate cap a batch holds at most this many seconds' worth of rows: the cap then holds
over any window within a fraction of a second's worth."""
PACED_AT_LEAST = 0.05
"""A run the impact budget slows to a pace aims its batches at the target duration times that
pace, but never under this share of it. A batch is the longest an application transaction can
wait on the run's locks, and the application's tail latency follows the batch's duration, not
the run's share of time: beside pgbench, resting between batches of the same size left the
application's p99 where it was, while batches of a twentieth of the target brought it within
1.5x of the application alone. Below that, each batch's fixed cost would dominate."""


def target_seconds(tuning: Tuning, pace: float | None = None) -> float:
    """The batch duration the size aims at: the run's target, shortened while it is paced."""
    if pace is None or not tuning.impact_budget or pace >= 1:
        return tuning.target_batch_seconds
    return tuning.target_batch_seconds * max(PACED_AT_LEAST, pace)


def ms_per_row(recent: Iterable[tuple[int, float]]) -> float | None:
    """The exponential moving average of milliseconds per row over ``(rows, duration_ms)`` of
    recent batches, oldest first; None when none of them did rows in a measurable time."""
    average: float | None = None
    for rows, duration_ms in recent:
        if rows <= 0 or duration_ms <= 0:
            continue
        per_row = duration_ms / rows
        average = per_row if average is None else EMA_ALPHA * per_row + (1 - EMA_ALPHA) * average
    return average


def next_batch_size(size: int, ms_per_row: float, tuning: Tuning, pace: float | None = None) -> int:
    """The batch size after ``size`` for batches taking ``ms_per_row`` milliseconds a row.

    It moves towards the size that would take ``tuning.target_batch_seconds``, by at most x4 up
    and half down, never past that size, and always ends within [min_batch_size,
    max_batch_size] (the bounds win over the step limits for a size an operator set outside
    them). A move of at most a tenth of the size is not made. Without a target the size is
    kept. ``pace``: the impact budget's, which shortens the target (``target_seconds``).
    """
    if not tuning.target_batch_seconds:
        return size
    ideal = target_seconds(tuning, pace) * 1000 / max(ms_per_row, 1e-6)
    stepped = round(min(max(ideal, math.ceil(size / SHRINK_AT_MOST)), size * GROW_AT_MOST))
    proposed = min(max(stepped, tuning.min_batch_size), tuning.max_batch_size)
    in_bounds = tuning.min_batch_size <= size <= tuning.max_batch_size
    if in_bounds and abs(proposed - size) <= size * SETTLED:
        return size
    return proposed


def planned_size(tuning: Tuning) -> int:
    """The rows a batch planned now holds: the batch size, or under a rate cap at most
    ``RATE_BURST_SECONDS`` of the cap's rows. What the planner plans, and what status shows."""
    if not tuning.max_rows_per_second:
        return tuning.batch_size
    return min(tuning.batch_size, max(1, int(tuning.max_rows_per_second * RATE_BURST_SECONDS)))
