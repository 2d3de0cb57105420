"""Run parameters as a command line or a revision gives them: parsed into their declared type or
refused with one line, and kept exactly through the run's JSON column."""

from __future__ import annotations

import json
import math
from datetime import date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill import Backfill, Param
from backfill.errors import DefinitionError
from backfill.params import MAX_INTEGER, bind, decode, encode, parse_assignments

WIDE = st.integers(min_value=-MAX_INTEGER - 1, max_value=MAX_INTEGER)


@given(WIDE)
def test_an_integer_is_read_back_as_written(value: int) -> None:
    assert Param("n", int).coerce(str(value)) == value
    assert Param("n", int).coerce(value) == value


@given(st.one_of(st.integers(min_value=MAX_INTEGER + 1), st.integers(max_value=-MAX_INTEGER - 2)))
def test_an_integer_no_column_can_hold_is_refused(value: int) -> None:
    with pytest.raises(DefinitionError, match="parameter 'n' must be integer"):
        Param("n", int).coerce(str(value))


@given(st.text())
def test_any_text_is_a_value_or_one_clear_refusal(raw: str) -> None:
    for kind in (int, float, bool, date, datetime):
        try:
            value = Param("p", kind).coerce(raw)
        except DefinitionError as exc:
            assert str(exc).startswith("parameter 'p' must be ")
        else:
            assert isinstance(value, kind) and not (kind is float and not math.isfinite(value))


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e400", "NaN"])
def test_a_number_that_is_not_finite_is_refused(raw: str) -> None:
    with pytest.raises(DefinitionError, match="parameter 'ratio' must be number"):
        Param("ratio", float).coerce(raw)


@given(
    st.fixed_dictionaries(
        {
            "tenant": WIDE,
            "ratio": st.floats(allow_nan=False, allow_infinity=False),
            "label": st.text().filter(lambda t: "\x00" not in t),
            "dry": st.booleans(),
            "day": st.dates(),
            "since": st.datetimes(),
        }
    )
)
def test_values_survive_the_runs_json_column(values: dict[str, object]) -> None:
    declared = (
        Param("tenant", int),
        Param("ratio", float),
        Param("label", str),
        Param("dry", bool),
        Param("day", date),
        Param("since", datetime),
    )
    bound = bind(declared, values, "b")
    stored = json.loads(json.dumps(encode(declared, bound)))
    assert decode(declared, stored) == values


def test_a_run_recorded_before_its_definition_changed_is_not_read_with_null() -> None:
    assert decode((Param("step", int, default=1),), {}) == {"step": 1}
    with pytest.raises(DefinitionError, match="has no value for parameter low: int"):
        decode((Param("low", int),), {"other": 3})
    with pytest.raises(DefinitionError, match="parameter 'low' must be integer"):
        decode((Param("low", int),), {"low": "2024-06-01T00:00"})


def test_declarations_that_cannot_work_are_refused_when_definitions_load() -> None:
    work = "UPDATE t SET x = 1 WHERE id BETWEEN :first AND :last"
    for params, message in [
        (lambda: {"first": int}, "parameter name 'first' is not valid"),
        (lambda: {"last_id": int}, "parameter name 'last_id' is not valid"),
        (lambda: {"tenant id": int}, "parameter name 'tenant id' is not valid"),
        (lambda: {"when": list}, "parameter 'when': type <class 'list'> is not one of int, float, str, bool, date"),
        (lambda: {"n": Param("n", int, default="x")}, "parameter 'n' must be integer"),
        (lambda: {"n": Param("m", int)}, "parameter 'n' is declared as 'm'"),
    ]:
        with pytest.raises(DefinitionError, match=message):
            Backfill(name="b", table="t", key="id", work=work, params=params())


def test_assignments_from_the_command_line() -> None:
    assert parse_assignments(["a=1", "b = x=y", "c="]) == {"a": "1", "b": " x=y", "c": ""}
    for wrong in (["a"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(DefinitionError, match="--param"):
            parse_assignments(wrong)
