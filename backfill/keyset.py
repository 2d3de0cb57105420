"""Batch boundaries read from the key's index.

A batch is the next ``size`` keys after a cursor, found by an ordered scan of the key index that
stops after ``size`` entries: its cost depends on the batch size, never on how far into the table
the cursor is (no OFFSET over the table). Composite keys compare as row values, written out
column by column where the database would not use the index for a row value (``RowComparison``).
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Boolean, Column, ColumnElement, Connection, and_, func, literal, or_, select, true, tuple_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

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


Comparison = Literal[">", ">=", "<", "<="]

_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

EXPANDED_ROW_DIALECTS = ("mysql", "mariadb")
"""Databases whose optimizer reads a row-value inequality as a filter, not as an index range.

On MariaDB 10.11, ``(tenant, seq) > (:t, :s) ORDER BY tenant, seq LIMIT 1000`` walks the
primary key from its very first entry (``type: index``: 151,501 index entries read for 1,000
returned, deep into a 200,000-row table), and an ``UPDATE`` bounded by row values reads, and
locks, the whole index. The same bound written column by column is a ``range`` access that
reads 1,000 entries. PostgreSQL and SQLite use the index for row values as they are.
"""


class RowComparison(ColumnElement[bool]):
    """``(c1, c2, ...) <op> (v1, v2, ...)``, rendered as a row value where the database uses
    an index for it, and as its column-by-column expansion on MySQL and MariaDB:
    ``c1 > v1 OR (c1 = v1 AND c2 > v2) OR ...`` — the same rows, but a range the optimizer
    can read from the index. Rendering is chosen when the statement is compiled, so one Core
    expression serves every database (and the statement cache keeps one entry per dialect).
    """

    __visit_name__ = "backfill_row_comparison"
    inherit_cache = True
    _traverse_internals = [
        ("row_form", InternalTraversal.dp_clauseelement),
        ("expanded", InternalTraversal.dp_clauseelement),
    ]
    type = Boolean()
    # A comparison, not a boolean column: without this, databases with no boolean type get
    # ``(...) = 1``, which hides the range from the optimizer.
    _is_implicitly_boolean = True

    def __init__(self, columns: Sequence[ColumnElement[Any]], op: Comparison, values: Sequence[Any]) -> None:
        if len(columns) != len(values) or not columns:
            raise ValueError(f"row comparison of {len(columns)} column(s) with {len(values)} value(s)")
        compare = _OPERATORS[op]
        strict = operator.gt if op in (">", ">=") else operator.lt
        # One bound parameter per value, shared by both forms and by every mention in the
        # expansion, so the statement carries each value once.
        bound = [literal(v, c.type) for c, v in zip(columns, values, strict=True)]
        self.row_form: ColumnElement[bool] = (
            compare(columns[0], bound[0]) if len(columns) == 1 else compare(tuple_(*columns), tuple_(*bound))
        )
        terms: list[ColumnElement[bool]] = []
        for i, column in enumerate(columns):
            equal_prefix = [columns[j] == bound[j] for j in range(i)]
            last = i == len(columns) - 1
            terms.append(and_(*equal_prefix, (compare if last else strict)(column, bound[i])))
        self.expanded: ColumnElement[bool] = or_(*terms)


@compiles(RowComparison)
def _render_row_value(element: RowComparison, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.row_form, **kw)


@compiles(RowComparison, *EXPANDED_ROW_DIALECTS)
def _render_expanded(element: RowComparison, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.expanded, **kw)})"


def row_compare(columns: Sequence[ColumnElement[Any]], op: Comparison, values: Sequence[Any]) -> ColumnElement[bool]:
    """Keys compared with a key value in key order, in the form each database can index."""
    if len(columns) == 1:
        condition: ColumnElement[bool] = _OPERATORS[op](columns[0], values[0])
        return condition
    return RowComparison(columns, op, values)


def after(columns: Sequence[ColumnElement[Any]], cursor: Key | None) -> ColumnElement[bool]:
    """Keys strictly after ``cursor`` (every key when there is no cursor yet)."""
    return true() if cursor is None else row_compare(columns, ">", cursor)


def at_least(columns: Sequence[ColumnElement[Any]], start: Key) -> ColumnElement[bool]:
    return row_compare(columns, ">=", start)


def at_most(columns: Sequence[ColumnElement[Any]], end: Key | None) -> ColumnElement[bool]:
    return true() if end is None else row_compare(columns, "<=", end)


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
    """The next ``count`` batches of ``size`` keys after ``cursor``, up to ``end`` if given (and,
    with ``where``, only keys of rows matching it).

    One round trip, reading the key index from the cursor. On PostgreSQL the batches are found
    by stepping: each batch's last key is ``OFFSET size - 1`` along the index from its first,
    which skips over index entries instead of handing each one up (about a sixth of the cost of
    numbering them); elsewhere, and for the last batch before ``end``, the keys are numbered.
    """
    if where is None and connection.dialect.name == "postgresql":
        stepped = _stepped_spans(connection, columns, cursor, end, size, count)
        if len(stepped) == count or (stepped and stepped[-1].rows < size):
            return stepped
        after_stepped = stepped[-1].last if stepped else cursor
        rest = _numbered_spans(connection, columns, after_stepped, end, size, count - len(stepped), None)
        return stepped + rest
    return _numbered_spans(connection, columns, cursor, end, size, count, where)


def _numbered_spans(
    connection: Connection,
    columns: Sequence[Column[Any]],
    cursor: Key | None,
    end: Key | None,
    size: int,
    count: int,
    where: ColumnElement[bool] | None,
) -> list[Span]:
    """The inner query walks the key index for at most ``size * count`` entries; window
    functions number them, and only each batch's first and last key come back."""
    # The end bound stays out of the ordered scan: with a bound on both sides PostgreSQL may
    # estimate the range as small and sort all of it instead of walking the index for a fixed
    # number of entries. Past the end, at most one lookahead's worth of keys is read and dropped.
    conditions = [after(columns, cursor)]
    if where is not None:
        conditions.append(where)
    matching = select(*columns).where(and_(*conditions))
    if where is not None and connection.dialect.name == "postgresql":
        # Rows still pending (the final pass) are found by one scan of the rest of the table,
        # then ordered: walking the key index with the predicate as a filter fetches every row
        # through the index, several times slower, and the planner picks that walk whenever
        # its statistics still count the rows the run has filled as pending.
        found = matching.cte("backfill_pending").prefix_with("MATERIALIZED")
        inner = select(*found.c).order_by(*found.c).limit(size * count).subquery("batch_keys")
    else:
        inner = matching.order_by(*columns).limit(size * count).subquery("batch_keys")
    keys = [inner.c[c.name] for c in columns]
    # The last key is the one with no next: ``lead`` sees one row ahead, where a count over the
    # whole window would hold every key read before returning the first.
    numbered = (
        select(
            *keys,
            func.row_number().over(order_by=keys).label("backfill_rn"),
            func.lead(keys[0]).over(order_by=keys).label("backfill_next"),
        )
        .where(at_most(keys, end))
        .subquery("numbered")
    )
    rn, following = numbered.c.backfill_rn, numbered.c.backfill_next
    position = rn % size  # 1 on a batch's first key, 0 on its last
    query = (
        select(*[numbered.c[c.name] for c in columns], rn, following.is_(None))
        .where(or_(position == 1 % size, position == 0, following.is_(None)))
        .order_by(rn)
    )
    width = len(columns)
    spans: list[Span] = []
    first: Key | None = None
    for row in connection.execute(query):
        key, number, last = tuple(row[:width]), int(row[width]), bool(row[width + 1])
        if (number - 1) % size == 0:
            first = key
        if number % size == 0 or last:
            assert first is not None
            spans.append(Span(first=first, last=key, rows=number - (len(spans) * size)))
    return spans


def _stepped_spans(
    connection: Connection,
    columns: Sequence[Column[Any]],
    cursor: Key | None,
    end: Key | None,
    size: int,
    count: int,
) -> list[Span]:
    """Whole batches of ``size`` keys after ``cursor`` ending at or before ``end``, up to
    ``count``, found by a recursive walk (PostgreSQL): a batch's first key is the next key after
    the previous batch's last, and its last key ``OFFSET size - 1`` from its first. The walk
    stops at the first batch that would not be whole or would pass ``end``: what remains up to
    ``end`` is numbered key by key (``_numbered_spans``)."""
    width = len(columns)

    def compare(op: Comparison, other: Sequence[Any]) -> ColumnElement[bool]:
        """The key against other columns or values, as a row value (PostgreSQL indexes it)."""
        if width == 1:
            condition: ColumnElement[bool] = _OPERATORS[op](columns[0], other[0])
            return condition
        return _OPERATORS[op](tuple_(*columns), tuple_(*other))  # type: ignore[no-any-return]

    def key_after(bound: Sequence[Any] | None) -> Any:
        found = select(*columns).where(true() if bound is None else compare(">", bound))
        return found.order_by(*columns).limit(1)

    def last_from(first: Sequence[Any]) -> Any:
        return select(*columns).where(compare(">=", first)).order_by(*columns).offset(size - 1).limit(1)

    firsts = key_after(cursor).subquery("first_keys")
    lasts = last_from(list(firsts.c)).lateral("last_keys")
    first_names = [f"f{i}" for i in range(width)]
    last_names = [f"l{i}" for i in range(width)]
    anchor = select(
        literal(1).label("n"),
        *[firsts.c[c.name].label(name) for c, name in zip(columns, first_names, strict=True)],
        *[lasts.c[c.name].label(name) for c, name in zip(columns, last_names, strict=True)],
    ).select_from(firsts.join(lasts, true(), isouter=True))
    steps = anchor.cte("backfill_steps", recursive=True)
    previous_last = [steps.c[name] for name in last_names]
    next_first = key_after(previous_last).lateral("next_first")
    next_last = last_from(list(next_first.c)).lateral("next_last")
    more = [steps.c.n < count, previous_last[0].is_not(None)]
    if end is not None:
        more.append(_OPERATORS["<"](tuple_(*previous_last), tuple_(*end)) if width > 1 else previous_last[0] < end[0])
    recursive = (
        select(
            (steps.c.n + 1).label("n"),
            *[next_first.c[c.name] for c in columns],
            *[next_last.c[c.name] for c in columns],
        )
        .select_from(steps.join(next_first, true()).join(next_last, true(), isouter=True))
        .where(*more)
    )
    steps = steps.union_all(recursive)
    last_keys = [steps.c[name] for name in last_names]
    # Compared by the database, in its own collation: a text key's order is not Python's.
    within = true() if end is None else (tuple_(*last_keys) <= tuple_(*end) if width > 1 else last_keys[0] <= end[0])
    whole = and_(last_keys[0].is_not(None), within)
    query = select(*[steps.c[name] for name in first_names], *last_keys, whole).order_by(steps.c.n)
    spans: list[Span] = []
    for row in connection.execute(query):
        if not row[-1]:
            break
        spans.append(Span(first=tuple(row[:width]), last=tuple(row[width : 2 * width]), rows=size))
    return spans


def halves(
    connection: Connection,
    columns: Sequence[Column[Any]],
    first: Key,
    last: Key,
    rows: int,
    where: ColumnElement[bool] | None = None,
) -> list[Span]:
    """Cut the range ``first``..``last`` (both included) in two that partition it exactly.

    The cut falls after the key holding about half of the range's ``rows`` — counted among the
    keys matching ``where`` (a final-pass batch counts only its pending rows) — and the second
    half starts at the range's next key, whatever it holds. So every key of the range lies in
    exactly one half, however many more keys the range holds than ``rows`` says, and none lies
    outside it. Reads at most about rows / 2 + 1 index entries. One span back: it cannot be cut.
    """
    whole = [Span(first, last, rows)]
    if rows < 2:
        return whole  # one row counted: nothing to narrow down
    inside = [at_least(columns, first), at_most(columns, last)]
    take = max(1, -(-rows // 2))
    counted = select(*columns).where(*inside, *([where] if where is not None else []))
    keys = [tuple(r) for r in connection.execute(counted.order_by(*columns).limit(take))]
    if not keys:
        return whole
    middle = keys[-1]
    following = connection.execute(
        select(*columns).where(after(columns, middle), at_most(columns, last)).order_by(*columns).limit(1)
    ).first()
    if following is None:
        return whole
    return [Span(first, middle, len(keys)), Span(tuple(following), last, rows - len(keys))]


def last_key(connection: Connection, columns: Sequence[Column[Any]]) -> Key | None:
    """The greatest key, read from the end of the index."""
    row = connection.execute(select(*columns).order_by(*[c.desc() for c in columns]).limit(1)).first()
    return tuple(row) if row is not None else None
