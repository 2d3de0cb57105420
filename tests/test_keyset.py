"""Batch boundaries read from the key index, checked against the keys themselves."""

from __future__ import annotations

import pytest
from sqlalchemy import MetaData, Table

from backfill import keyset
from tests.apps import counters
from tests.conftest import Database


def spans_of(db: Database, name: str, **kwargs: object) -> list[keyset.Span]:
    table = Table(name, MetaData(), autoload_with=db.engine)
    columns = [c for c in table.primary_key.columns]
    with db.engine.connect() as connection:
        return keyset.next_spans(connection, columns, **kwargs)  # type: ignore[arg-type]


def expected(keys: list, size: int, count: int) -> list[keyset.Span]:  # type: ignore[type-arg]
    chunks = [keys[i : i + size] for i in range(0, len(keys), size)][:count]
    return [keyset.Span(first=c[0], last=c[-1], rows=len(c)) for c in chunks]


@pytest.mark.parametrize(("size", "count"), [(1, 5), (2, 3), (7, 4), (10, 1), (1000, 2)])
def test_spans_match_the_sorted_keys(db: Database, size: int, count: int) -> None:
    ids = [3, 4, 9, 10, 11, 40, 41, 42, 100, 1000, 1001, 5000, 5002, 9999, 10_000]
    counters.fill(db.engine, counters.items, ids)
    keys = [(i,) for i in ids]
    assert spans_of(db, "items", cursor=None, end=None, size=size, count=count) == expected(keys, size, count)
    after_11 = [k for k in keys if k > (11,)]
    assert spans_of(db, "items", cursor=(11,), end=None, size=size, count=count) == expected(after_11, size, count)
    up_to_1000 = [k for k in after_11 if k <= (1000,)]
    assert spans_of(db, "items", cursor=(11,), end=(1000,), size=size, count=count) == expected(up_to_1000, size, count)


def test_composite_spans_compare_as_rows(db: Database) -> None:
    keys = sorted((tenant, seq) for tenant in ("a", "b", "c") for seq in (1, 2, 10, 20))
    counters.fill(db.engine, counters.items_composite, keys)
    spans = spans_of(db, "items_composite", cursor=("a", 10), end=("c", 1), size=3, count=10)
    remaining = [k for k in keys if ("a", 10) < k <= ("c", 1)]
    assert remaining[0] == ("a", 20) and remaining[-1] == ("c", 1)
    assert spans == expected(remaining, 3, 10)


def test_no_keys_left(db: Database) -> None:
    assert spans_of(db, "items", cursor=None, end=None, size=10, count=3) == []
    counters.fill(db.engine, counters.items, [1, 2, 3])
    assert spans_of(db, "items", cursor=(3,), end=None, size=10, count=3) == []
    assert spans_of(db, "items", cursor=None, end=(0,), size=10, count=3) == []


@pytest.mark.parametrize("db", ["postgresql", "mariadb", "sqlite"], indirect=True)
def test_spans_partition_any_keys_in_the_databases_order(db: Database) -> None:
    """Whatever the keys (text in the database's collation, composite), cursor, end, size and
    count: the spans are the sorted keys after the cursor and up to the end, cut every ``size``
    keys, the first ``count`` of them. PostgreSQL finds whole batches by stepping along the
    index and numbers only the last one; this checks both agree with the keys themselves."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from sqlalchemy import text

    # Distinct whatever the collation (MariaDB's ignores case and accents), yet ordered differently
    # by each: "B" before or after "a", "é" among the letters or past "Z".
    tenants = st.sampled_from(["a", "B", "c", "Z", "é", "ab", "b2"])
    keys_of = st.sets(st.tuples(tenants, st.integers(0, 30)), min_size=0, max_size=40)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(keys=keys_of, size=st.integers(1, 9), count=st.integers(1, 6), data=st.data())
    def check(keys: set[tuple[str, int]], size: int, count: int, data: st.DataObject) -> None:
        with db.engine.begin() as connection:
            connection.execute(counters.items_composite.delete())
        counters.fill(db.engine, counters.items_composite, sorted(keys))
        with db.engine.connect() as connection:
            ordered = [
                tuple(r)
                for r in connection.execute(text("SELECT tenant, seq FROM items_composite ORDER BY tenant, seq"))
            ]
        cursor_at = data.draw(st.none() | st.integers(0, max(0, len(ordered) - 1)))
        end_at = data.draw(st.none() | st.integers(0, max(0, len(ordered) - 1)))
        cursor = ordered[cursor_at] if cursor_at is not None and ordered else None
        end = ordered[end_at] if end_at is not None and ordered else None
        start = ordered.index(cursor) + 1 if cursor is not None else 0
        stop = ordered.index(end) + 1 if end is not None else len(ordered)
        remaining = ordered[start:stop]
        assert spans_of(db, "items_composite", cursor=cursor, end=end, size=size, count=count) == expected(
            remaining, size, count
        )
        single = sorted({seq for _, seq in keys})
        with db.engine.begin() as connection:
            connection.execute(counters.items.delete())
        counters.fill(db.engine, counters.items, single)
        ints = [(k,) for k in single]
        at = data.draw(st.none() | st.integers(0, 31))
        bound = data.draw(st.none() | st.integers(0, 31))
        after_cursor = [k for k in ints if at is None or k > (at,)]
        up_to = [k for k in after_cursor if bound is None or k <= (bound,)]
        got = spans_of(
            db,
            "items",
            cursor=None if at is None else (at,),
            end=None if bound is None else (bound,),
            size=size,
            count=count,
        )
        assert got == expected(up_to, size, count)

    check()
