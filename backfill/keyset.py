"""Batch boundaries read from the key's index.

A batch is the next ``size`` keys after a cursor, found by an ordered scan of the key index that
stops after ``size`` entries: its cost depends on the batch size, never on how far into the table
the cursor is (no OFFSET over the table). Composite keys compare as row values.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, and_, func, or_, select, true, tuple_

from backfill.definition import Key

KEY_TYPES: tuple[type, ...] = (int, str, uuid.UUID)
"""Python types a key column may have: integers, text and UUIDs."""


@dataclass(frozen=True)
class Span:
    """The keys the next batch would hold: its first and last key and how many there are."""

    first: Key
    last: Key
    rows: int


def encode_key(key: Key | None) -> list[Any] | None:
    """A key as JSON-ready values, for the checkpoint rows."""
    if key is None:
        return None
    return [str(v) if isinstance(v, uuid.UUID) else v for v in key]


def decode_key(raw: Sequence[Any] | None, types: Sequence[type]) -> Key | None:
    if raw is None:
        return None
    return tuple(uuid.UUID(v) if t is uuid.UUID and isinstance(v, str) else v for v, t in zip(raw, types, strict=True))


def after(columns: Sequence[Column[Any]], cursor: Key | None) -> ColumnElement[bool]:
    """Keys strictly after ``cursor`` (every key when there is no cursor yet)."""
    if cursor is None:
        return true()
    condition: ColumnElement[bool] = columns[0] > cursor[0] if len(columns) == 1 else tuple_(*columns) > tuple_(*cursor)
    return condition


def at_most(columns: Sequence[Column[Any]], end: Key | None) -> ColumnElement[bool]:
    if end is None:
        return true()
    condition: ColumnElement[bool] = columns[0] <= end[0] if len(columns) == 1 else tuple_(*columns) <= tuple_(*end)
    return condition


def next_spans(
    connection: Connection,
    columns: Sequence[Column[Any]],
    *,
    cursor: Key | None,
    end: Key | None,
    size: int,
    count: int = 1,
    where: ColumnElement[bool] | None = None,
) -> list[Span]:
    """The next ``count`` batches of ``size`` keys after ``cursor``, up to ``end`` if given.

    One round trip: the inner query walks the key index for at most ``size * count`` entries;
    window functions number them, and only each batch's first and last key come back.
    """
    # The end bound stays out of the ordered scan: with a bound on both sides PostgreSQL may
    # estimate the range as small and sort all of it instead of walking the index for a fixed
    # number of entries. Past the end, at most one lookahead's worth of keys is read and dropped.
    conditions = [after(columns, cursor)]
    if where is not None:
        conditions.append(where)
    inner = select(*columns).where(and_(*conditions)).order_by(*columns).limit(size * count).subquery("batch_keys")
    keys = [inner.c[c.name] for c in columns]
    numbered = (
        select(
            *keys,
            func.row_number().over(order_by=keys).label("backfill_rn"),
            func.count().over().label("backfill_n"),
        )
        .where(at_most(keys, end))  # type: ignore[arg-type]
        .subquery("numbered")
    )
    rn, n = numbered.c.backfill_rn, numbered.c.backfill_n
    position = rn % size  # 1 on a batch's first key, 0 on its last
    query = (
        select(*[numbered.c[c.name] for c in columns], rn, n)
        .where(or_(position == 1 % size, position == 0, rn == n))
        .order_by(rn)
    )
    width = len(columns)
    spans: list[Span] = []
    first: Key | None = None
    for row in connection.execute(query):
        key, number, total = tuple(row[:width]), int(row[width]), int(row[width + 1])
        if (number - 1) % size == 0:
            first = key
        if number % size == 0 or number == total:
            assert first is not None
            spans.append(Span(first=first, last=key, rows=number - (len(spans) * size)))
    return spans


def last_key(connection: Connection, columns: Sequence[Column[Any]]) -> Key | None:
    """The greatest key, read from the end of the index."""
    row = connection.execute(select(*columns).order_by(*[c.desc() for c in columns]).limit(1)).first()
    return tuple(row) if row is not None else None
