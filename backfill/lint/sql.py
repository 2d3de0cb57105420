"""What a SQL string in a revision does, read without a SQL parser.

A revision's SQL is short and written by hand, so a few regular expressions over its top level
(string literals and parenthesised subqueries blanked out) tell an ``UPDATE`` from a seed row,
and find the table and the column a backfill definition would need. Whatever is not understood
is not data work: a linter that guesses wrong should stay quiet, not cry wolf.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Kind(enum.Enum):
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    INSERT_SELECT = "INSERT ... SELECT"
    MERGE = "MERGE"
    NOT_NULL = "SET NOT NULL"
    OTHER = "other"

    @property
    def is_data_work(self) -> bool:
        return self in (Kind.UPDATE, Kind.DELETE, Kind.INSERT_SELECT, Kind.MERGE)


@dataclass(frozen=True)
class Statement:
    """One statement of a SQL string, understood as far as a backfill needs it.

    ``table`` is the table a backfill would walk in key order: the target of an ``UPDATE`` or
    ``DELETE``, the table an ``INSERT ... SELECT`` reads. ``where`` is the statement's own
    top-level condition; ``joins`` says whether it reads other tables too, and then that
    condition cannot serve as a ``pending`` predicate, which sees the walked table alone."""

    text: str
    kind: Kind
    table: str | None = None
    alias: str | None = None
    columns: tuple[str, ...] = ()
    where: str | None = None
    joins: bool = False
    has_parameters: bool = False
    fills: bool = False
    """An UPDATE whose first column gets a value that does not come from itself and is not NULL:
    it fills the column, so ``column IS NULL`` tells the rows still to do."""
    target: str | None = None
    """The table an INSERT writes to."""


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_IDENT = r'(?:"[^"]+"|`[^`]+`|\[[^\]]+\]|[A-Za-z_][\w$]*)'
_QUALIFIED = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"
_UPDATE = re.compile(rf"^\s*UPDATE\s+(?:ONLY\s+)?(?P<table>{_QUALIFIED})(?:\s+(?:AS\s+)?(?P<alias>{_IDENT}))?\s", re.I)
_DELETE = re.compile(rf"^\s*DELETE\s+(?:FROM\s+)?(?:ONLY\s+)?(?P<table>{_QUALIFIED})", re.I)
_INSERT = re.compile(rf"^\s*(?:INSERT|REPLACE)\s+(?:IGNORE\s+)?(?:INTO\s+)?(?P<table>{_QUALIFIED})", re.I)
_FROM = re.compile(rf"\bFROM\s+(?:ONLY\s+)?(?P<table>{_QUALIFIED})", re.I)
_MERGE = re.compile(rf"^\s*MERGE\s+INTO\s+(?P<table>{_QUALIFIED})", re.I)
_ALTER_TABLE = re.compile(rf"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{_QUALIFIED})", re.I)
_SET_NOT_NULL = re.compile(rf"\bALTER\s+(?:COLUMN\s+)?(?P<column>{_IDENT})\s+SET\s+NOT\s+NULL\b", re.I)
_MODIFY_NOT_NULL = re.compile(
    rf"\b(?:MODIFY(?:\s+COLUMN)?\s+(?P<column>{_IDENT})|CHANGE(?:\s+COLUMN)?\s+{_IDENT}\s+(?P<renamed>{_IDENT}))"
    r"[^,]*?\bNOT\s+NULL\b",
    re.I,
)
_NOT_ALIASES = {"SET", "JOIN", "INNER", "LEFT", "RIGHT", "CROSS", "STRAIGHT_JOIN", "NATURAL"}
_PARAMETER = re.compile(r"(?<![:\w]):[A-Za-z_]\w*|%\(\w+\)s|\?|\{")
_CLAUSE_END = re.compile(
    r"\b(?:RETURNING|ORDER\s+BY|LIMIT|GROUP\s+BY|HAVING|ON\s+CONFLICT|ON\s+DUPLICATE|UNION|WINDOW)\b", re.I
)


def strip_comments(sql: str) -> str:
    return _COMMENTS.sub(" ", sql)


def top_level(sql: str) -> str:
    """``sql`` with string literals and everything inside parentheses replaced by spaces, so
    that a keyword found in it belongs to the statement itself, at the original's positions.
    Quoted identifiers stay: they are names, not data."""
    out = list(sql)
    depth = 0
    in_string = False
    for i, ch in enumerate(sql):
        if in_string:
            out[i] = " "
            in_string = ch != "'"
        elif ch == "'":
            in_string = True
            out[i] = " "
        elif ch == "(":
            depth += 1
            if depth > 1:
                out[i] = " "
        elif ch == ")":
            depth = max(depth - 1, 0)
            if depth > 0:
                out[i] = " "
        elif depth > 0:
            out[i] = " "
    return "".join(out)


def statements(sql: str) -> list[str]:
    """The statements of ``sql``, split on its top-level semicolons, comments removed."""
    text = strip_comments(sql)
    flat = top_level(text)
    parts: list[str] = []
    start = 0
    for i, ch in enumerate(flat):
        if ch == ";":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def read(sql: str) -> list[Statement]:
    return [_statement(s) for s in statements(sql)]


def source_table(sql: str) -> str | None:
    """The first table a query reads (``SELECT id FROM players`` -> ``players``)."""
    for text in statements(sql):
        found = _FROM.search(top_level(text))
        if found is not None:
            return _name(found["table"])
    return None


def _name(identifier: str) -> str:
    last = re.split(r"\s*\.\s*", identifier.strip())[-1]
    return last.strip('"`[]')


def _statement(text: str) -> Statement:
    flat = top_level(text)
    head = flat.lstrip()[:10].upper()
    has_parameters = bool(_PARAMETER.search(text))
    if head.startswith("WITH"):
        inner = re.search(r"\b(UPDATE|DELETE|INSERT|MERGE)\b", flat, re.I)
        if inner is None:
            return Statement(text, Kind.OTHER)
        body = _statement(text[inner.start() :])
        return Statement(text, body.kind, body.table, body.alias, body.columns, body.where, True, has_parameters)
    if head.startswith("UPDATE"):
        return _update(text, flat, has_parameters)
    if head.startswith("DELETE"):
        match = _DELETE.match(flat)
        where = _clause(text, flat)
        joins = bool(re.search(r"\b(?:USING|JOIN)\b", flat, re.I))
        return Statement(
            text, Kind.DELETE, _name(match["table"]) if match else None, None, (), where, joins, has_parameters
        )
    if head.startswith(("INSERT", "REPLACE")):
        return _insert(text, flat, has_parameters)
    if head.startswith("MERGE"):
        match = _MERGE.match(flat)
        return Statement(text, Kind.MERGE, _name(match["table"]) if match else None, joins=True)
    if head.startswith("ALTER"):
        return _alter(text)
    return Statement(text, Kind.OTHER)


def _update(text: str, flat: str, has_parameters: bool) -> Statement:
    match = _UPDATE.match(flat)
    table = _name(match["table"]) if match else None
    alias = match["alias"] if match and match["alias"] and match["alias"].upper() not in _NOT_ALIASES else None
    set_at = re.search(r"\bSET\b", flat, re.I)
    columns: list[str] = []
    fills = False
    if set_at is not None:
        end = re.compile(rf"\b(?:FROM|WHERE)\b|{_CLAUSE_END.pattern}", re.I).search(flat, set_at.end())
        start = set_at.end()
        for item in flat[start : end.start() if end else len(flat)].split(","):
            target, _, _ = item.partition("=")
            value = text[start + len(target) + 1 : start + len(item)]
            start += len(item) + 1
            target = target.strip()
            if not target or target.startswith("("):
                continue
            columns.append(_name(target))
            if len(columns) == 1:
                uses_itself = re.search(rf"\b{re.escape(columns[0])}\b", value, re.I)
                fills = not uses_itself and not re.fullmatch(r"\s*NULL\s*", value, re.I)
    before_set = flat[match.end("table") if match else 0 : set_at.start() if set_at else len(flat)]
    after_set = flat[set_at.end() if set_at else len(flat) :]
    joins = "," in before_set or bool(
        re.search(r"\bJOIN\b", before_set, re.I) or re.search(r"\bFROM\b", after_set, re.I)
    )
    where = _clause(text, flat)
    return Statement(text, Kind.UPDATE, table, alias, tuple(columns), where, joins, has_parameters, fills)


def _insert(text: str, flat: str, has_parameters: bool) -> Statement:
    """``INSERT ... SELECT ... FROM`` copies rows and is data work; ``INSERT ... VALUES`` (or a
    ``SELECT`` of constants) writes seed rows and is not."""
    if re.search(r"\bVALUES\b", flat, re.I):
        return Statement(text, Kind.OTHER)
    select = re.search(r"\bSELECT\b", flat, re.I)
    source = _FROM.search(flat, select.end()) if select else None
    if source is None:
        return Statement(text, Kind.OTHER)
    return Statement(
        text, Kind.INSERT_SELECT, _name(source["table"]), None, (), _clause(text, flat), True, has_parameters
    )


def _alter(text: str) -> Statement:
    """``SET NOT NULL`` (PostgreSQL) or ``MODIFY``/``CHANGE ... NOT NULL`` (MySQL, MariaDB) on a
    column that exists; ``ADD COLUMN ... NOT NULL DEFAULT`` makes a new one and is not this."""
    match = _ALTER_TABLE.match(text)
    if match is None:
        return Statement(text, Kind.OTHER)
    table = _name(match["table"])
    found = _SET_NOT_NULL.search(text)
    if found is not None:
        return Statement(text, Kind.NOT_NULL, table, None, (_name(found["column"]),))
    found = _MODIFY_NOT_NULL.search(text)
    if found is not None:
        return Statement(text, Kind.NOT_NULL, table, None, (_name(found["column"] or found["renamed"]),))
    return Statement(text, Kind.OTHER)


def _clause(text: str, flat: str) -> str | None:
    start = re.search(r"\bWHERE\b", flat, re.I)
    if start is None:
        return None
    end = _CLAUSE_END.search(flat, start.end())
    body = text[start.end() : end.start() if end else len(text)].strip()
    return " ".join(body.split()) or None


def with_condition(text: str, condition: str) -> str:
    """``text`` with ``condition`` added to its top-level ``WHERE`` (or given one), before any
    ``RETURNING``, ``ORDER BY``, ``LIMIT`` or ``GROUP BY``: how a whole-table statement becomes
    one batch's statement."""
    text = " ".join(text.split())
    flat = top_level(text)
    where = re.search(r"\bWHERE\b", flat, re.I)
    end = _CLAUSE_END.search(flat, where.end() if where else 0)
    stop = end.start() if end else len(text)
    tail = f" {text[stop:].strip()}" if end else ""
    if where is None:
        return f"{text[:stop].rstrip()} WHERE {condition}{tail}"
    existing = text[where.end() : stop].strip()
    return f"{text[: where.start()].rstrip()} WHERE ({existing}) AND {condition}{tail}"
