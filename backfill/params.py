"""Run parameters: typed values a run is started with, bound as ``:name`` in the SQL.

One definition can then serve many runs — a tenant at a time, rows since a date — without a
definition per value. The values are checked against the declared types before a run is
recorded (a typo'd name or a ``--param since=yesterday`` is one line, and nothing changes), and
stored on the run in a JSON form every dialect keeps, so workers and status read them back as
the values the run was started with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from backfill.errors import DefinitionError

TYPES: dict[type, str] = {int: "integer", float: "number", str: "text", bool: "true/false", date: "date",
                          datetime: "timestamp"}  # fmt: skip
"""The types a parameter may have: what ``--param k=v`` can be written as on a command line and
what a JSON column keeps exactly (dates as ISO 8601 text)."""

MAX_INTEGER = 2**63 - 1
"""The widest integer column the databases have: a larger value could not be compared with one."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_REQUIRED: Any = object()


def reserved(name: str) -> bool:
    """The batch's own bind parameters: a run parameter of such a name would shadow them."""
    return name in ("first", "last") or name.startswith(("first_", "last_"))


@dataclass(frozen=True)
class Param:
    """A declared parameter: its name, its type, and its default (none: it must be given)."""

    name: str
    type: type = str
    default: Any = _REQUIRED
    help: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name) or reserved(self.name):
            raise DefinitionError(
                f"parameter name {self.name!r} is not valid: use letters, digits and '_' "
                "(not 'first', 'last' or first_*/last_*, which name the batch's bounds)"
            )
        if self.type not in TYPES:
            known = ", ".join(t.__name__ for t in TYPES)
            raise DefinitionError(f"parameter {self.name!r}: type {self.type!r} is not one of {known}")
        if self.required is False and self.default is not None:
            object.__setattr__(self, "default", self.coerce(self.default))

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def coerce(self, value: Any) -> Any:
        """The value in the parameter's type: text is parsed (the command line, an Alembic
        ``-x``), anything else must already be of the type. None stays None (SQL NULL)."""
        if value is None:
            return None
        if isinstance(value, str) and self.type is not str:
            return self._parse(value)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is date and isinstance(value, datetime):
            raise self._wrong(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise self._wrong(value)
        return self._checked(value)

    def _parse(self, text: str) -> Any:
        raw = text.strip()
        try:
            if self.type is bool:
                if raw.lower() in _TRUE | _FALSE:
                    return raw.lower() in _TRUE
                raise ValueError(raw)
            if self.type is int:
                return self._checked(int(raw))
            if self.type is float:
                return self._checked(float(raw))
            if self.type is date:
                return date.fromisoformat(raw)
            return datetime.fromisoformat(raw)
        except (ValueError, OverflowError):
            raise self._wrong(text) from None

    def _checked(self, value: Any) -> Any:
        if self.type is int and not -MAX_INTEGER - 1 <= value <= MAX_INTEGER:
            raise self._wrong(value)
        if self.type is float and not math.isfinite(value):
            raise self._wrong(value)
        if self.type is str and "\x00" in value:
            raise self._wrong(value)
        return value

    def _wrong(self, value: Any) -> DefinitionError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        example = {int: "42", float: "0.5", str: "text", bool: "true", date: "2026-01-31",
                   datetime: "2026-01-31T12:00:00"}[self.type]  # fmt: skip
        return DefinitionError(
            f"parameter '{self.name}' must be {TYPES[self.type]} (for example {self.name}={example}), got {shown}"
        )

    def encode(self, value: Any) -> Any:
        """The value as the run's JSON column keeps it."""
        return value.isoformat() if isinstance(value, date) else value

    def describe(self) -> str:
        default = "" if self.required else f" = {self.default!r}"
        return f"{self.name}: {self.type.__name__}{default}"


def declared(params: Mapping[str, Any] | Iterable[Param] | None, owner: str) -> tuple[Param, ...]:
    """A definition's ``params`` as given — ``{"tenant_id": int}``, ``{"since": Param(...)}`` or
    ``[Param("tenant_id", int)]`` — as Params, each name once."""
    if not params:
        return ()
    found: list[Param] = []
    if isinstance(params, Mapping):
        for name, spec in params.items():
            if isinstance(spec, Param):
                if spec.name != name:
                    raise DefinitionError(f"backfill {owner!r}: parameter {name!r} is declared as {spec.name!r}")
                found.append(spec)
            else:
                found.append(Param(name, spec))
    else:
        for spec in params:
            if not isinstance(spec, Param):
                raise DefinitionError(f"backfill {owner!r}: params must be a mapping of names to types, or Params")
            found.append(spec)
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise DefinitionError(f"backfill {owner!r}: a parameter is declared twice")
    return tuple(found)


def bind(params: tuple[Param, ...], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The run's values for every declared parameter: given ones checked and converted, the
    others their defaults; raises naming an unknown or a missing one and what is declared."""
    by_name = {p.name: p for p in params}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(p.describe() for p in params) or "none"
        raise DefinitionError(f"backfill '{owner}' has no parameter {', '.join(unknown)} (its parameters: {known})")
    missing = [p for p in params if p.required and p.name not in given]
    if missing:
        raise DefinitionError(
            f"backfill '{owner}' needs parameter {', '.join(p.describe() for p in missing)}: "
            f"give it with --param {missing[0].name}=VALUE (or params={{...}} in op.queue_backfill)"
        )
    return {p.name: p.coerce(given[p.name]) if p.name in given else p.default for p in params}


def encode(params: tuple[Param, ...], values: Mapping[str, Any]) -> dict[str, Any] | None:
    if not params:
        return None
    return {p.name: p.encode(values.get(p.name)) for p in params}


def decode(params: tuple[Param, ...], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's stored values in their types. A parameter the run predates takes its default; one
    without a default, or a value the declared type no longer takes (the definition changed
    after the run was recorded), raises: running on with NULL in its place could let the run
    finish having done nothing."""
    stored = stored or {}
    values: dict[str, Any] = {}
    for p in params:
        if p.name in stored:
            values[p.name] = p.coerce(stored[p.name])
        elif p.required:
            raise DefinitionError(f"has no value for parameter {p.describe()}, which the definition declares now")
        else:
            values[p.name] = p.default
    return values


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """``k=v`` strings from the command line, each name once."""
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise DefinitionError(f"--param {pair!r} is not NAME=VALUE: write it as --param tenant_id=42")
        if name in values:
            raise DefinitionError(f"--param {name} is given twice: give each parameter once")
        values[name] = value
    return values


def shown(values: Mapping[str, Any] | None) -> str:
    """A run's parameters in one line, as status prints them."""
    if not values:
        return ""
    return ", ".join(f"{k}={v}" for k, v in values.items())
