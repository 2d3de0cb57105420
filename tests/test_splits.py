"""Splitting a batch, as a property: for any key range on any key shape, any row count the batch
claims, and any filter (a final-pass batch counts only its pending rows), the halves partition
the range exactly — every key of it in exactly one half, no key outside it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Table, and_, delete, select, update

from backfill import keyset
from tests.apps import counters
from tests.conftest import Database

SHAPES: dict[str, tuple[Table, st.SearchStrategy[Any]]] = {
    "integer with gaps": (counters.items, st.integers(-(2**31), 2**31 - 1)),
    "text": (
        counters.items_text,
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6),
    ),
    "composite": (
        counters.items_composite,
        st.tuples(st.sampled_from(["a", "b", "ß", "Z", "a b"]), st.integers(-50, 50)),
    ),
    "uuid": (counters.items_uuid, st.uuids()),
}


def _key(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def _keys_between(conn: Connection, table: Table, first: tuple[Any, ...], last: tuple[Any, ...]) -> list[Any]:
    columns = list(table.primary_key.columns)
    inside = and_(keyset.at_least(columns, first), keyset.at_most(columns, last))
    return [tuple(r) for r in conn.execute(select(*columns).where(inside).order_by(*columns))]


@pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("shape", list(SHAPES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_halves_partition_the_range(db: Database, shape: str, data: st.DataObject) -> None:
    table, values = SHAPES[shape]
    keys = data.draw(st.lists(values, min_size=1, max_size=30, unique_by=lambda v: _key(v)), label="keys")
    columns = list(table.primary_key.columns)
    with db.engine.begin() as conn:
        conn.execute(delete(table))
        names = [c.name for c in columns]
        conn.execute(table.insert(), [dict(zip(names, _key(k), strict=True)) for k in keys])
        ordered = [tuple(r) for r in conn.execute(select(*columns).order_by(*columns))]  # the database's order
        i = data.draw(st.integers(0, len(ordered) - 1), label="first")
        j = data.draw(st.integers(i, len(ordered) - 1), label="last")
        first, last = ordered[i], ordered[j]
        # The range may have lost keys (its bounds too) since the batch was planned.
        gone = data.draw(st.lists(st.sampled_from(ordered), max_size=5), label="deleted")
        for key in gone:
            conn.execute(delete(table).where(*(c == v for c, v in zip(columns, key, strict=True))))
        pending = data.draw(st.lists(st.sampled_from(ordered), max_size=10), label="pending")
        for key in pending:
            conn.execute(update(table).where(*(c == v for c, v in zip(columns, key, strict=True))).values(done=1))
        rows = data.draw(st.integers(1, 80), label="rows")
        where = data.draw(st.sampled_from([None, table.c.done == 1]), label="filter")
        spans = keyset.halves(conn, columns, first, last, rows, where)
        whole = _keys_between(conn, table, first, last)
        parts = [_keys_between(conn, table, s.first, s.last) for s in spans]
        assert 1 <= len(spans) <= 2
        assert sorted(k for part in parts for k in part) == sorted(whole), (spans, whole)
        assert sum(len(p) for p in parts) == len(whole)  # no key in two halves
        if len(spans) == 2:
            # The cut is between two neighbouring keys of the range; the outer bounds are the range's.
            assert spans[0].first == first and spans[1].last == last
            cut = whole.index(spans[0].last)
            assert whole[cut + 1] == spans[1].first
            assert spans[0].rows + spans[1].rows == rows and min(s.rows for s in spans) >= 1
        else:
            assert spans == [keyset.Span(first, last, rows)]


def test_a_uuid_bound_is_kept_as_a_uuid() -> None:
    span = keyset.Span((uuid.UUID(int=1),), (uuid.UUID(int=2),), 2)
    assert keyset.encode_key(span.first) == [str(uuid.UUID(int=1))]
