"""A run's settings are checked before anything is recorded: a value the run cannot work with
(NaN, an infinity, a time limit of years, a count past its 32-bit column) is one clear error,
whether it comes from a definition, ``start --option`` or ``tune``."""

from __future__ import annotations

import math

import pytest

from backfill.definition import _SECONDS_AND_RATES, MAX_COUNT, Tuning
from backfill.errors import DefinitionError

COUNTS = ("batch_size", "parallelism", "max_attempts", "min_batches_for_ratio", "min_batch_size", "max_batch_size")
NUMBERS = tuple(name for name, _, _ in _SECONDS_AND_RATES)


@pytest.mark.parametrize("name", (*NUMBERS, "max_failed_ratio"))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1, True, "5"])
def test_a_number_that_is_not_a_finite_number_is_refused(name: str, value: object) -> None:
    with pytest.raises(DefinitionError, match=f"^{name} must be"):
        Tuning(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", COUNTS)
@pytest.mark.parametrize("value", [0, -1, MAX_COUNT + 1, 2.5, True, "10"])
def test_a_count_must_fit_its_column(name: str, value: object) -> None:
    bounds = {"min_batch_size": 1, "max_batch_size": MAX_COUNT}
    with pytest.raises(DefinitionError, match=f"^{name} must be a whole number from 1 to 2,147,483,647"):
        Tuning(**{**bounds, name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "zero_refused", "most"), _SECONDS_AND_RATES)
def test_each_limit_takes_its_whole_range_and_nothing_past_it(name: str, zero_refused: bool, most: float) -> None:
    assert getattr(Tuning(**{name: most}), name) == most
    with pytest.raises(DefinitionError, match=f"^{name} must be a number"):
        Tuning(**{name: most * 2})
    if zero_refused:
        with pytest.raises(DefinitionError, match="above 0"):
            Tuning(**{name: 0})
    else:
        assert getattr(Tuning(**{name: 0}), name) == 0
