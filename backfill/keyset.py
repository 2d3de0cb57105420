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


def next_span(
    connection: Connection,
    columns: Sequence[Column[Any]],
    *,
    cursor: Key | None,
    end: Key | None,
    size: int,
    where: ColumnElement[bool] | None = None,
) -> Span | None:
    """The next ``size`` keys after ``cursor``, up to ``end`` when there is one.

    One round trip: the inner query reads at most ``size`` index entries in key order; window
    functions over that small set give the first key, the last key and the count.
    """
    conditions = [after(columns, cursor), at_most(columns, end)]
    if where is not None:
        conditions.append(where)
    inner = select(*columns).where(and_(*conditions)).order_by(*columns).limit(size).subquery("batch_keys")
    keys = [inner.c[c.name] for c in columns]
    numbered = select(
        *keys,
        func.row_number().over(order_by=keys).label("backfill_rn"),
        func.count().over().label("backfill_n"),
    ).subquery("numbered")
    query = (
        select(*[numbered.c[c.name] for c in columns], numbered.c.backfill_n)
        .where(or_(numbered.c.backfill_rn == 1, numbered.c.backfill_rn == numbered.c.backfill_n))
        .order_by(numbered.c.backfill_rn)
    )
    rows = connection.execute(query).all()
    if not rows:
        return None
    width = len(columns)
    return Span(first=tuple(rows[0][:width]), last=tuple(rows[-1][:width]), rows=int(rows[0][width]))


def last_key(connection: Connection, columns: Sequence[Column[Any]]) -> Key | None:
    """The greatest key, read from the end of the index."""
    row = connection.execute(select(*columns).order_by(*[c.desc() for c in columns]).limit(1)).first()
    return tuple(row) if row is not None else None
