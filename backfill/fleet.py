"""A fleet: the databases (and, on PostgreSQL, the tenant schemas) one set of backfills runs on.

A sharded application runs the same schema on many servers; a SaaS keeps one schema per tenant.
Each is a *member* with a short name (``shard03``, ``tenant_acme``) that every command shows, its
own database URL, and on PostgreSQL optionally its own schema. A member keeps its own checkpoint
tables beside its data (in its database, or in its tenant's schema), so every batch still
commits its work and its checkpoint together and each member's NOT NULL revision is gated by
its own run.

The fleet is declared once, in ``BACKFILL_FLEET`` (or ``--fleet``), as one of:

- a TOML file (``fleet.toml``)::

      url = "postgresql+psycopg://app@db/app"     # the members' default URL (tenants share it)

      [members.shard01]
      url = "postgresql+psycopg://app@shard01/app"

      [members.tenant_acme]
      schema = "tenant_acme"

- a callable in the definitions module, ``:tenants`` (or ``package.module:tenants``),
  returning members (``Member``, or ``(name, url)`` / ``(name, url, schema)``) — read at each
  command's start, since tenants come and go;
- the members inline: ``shard01=postgresql+psycopg://...  shard02=postgresql+psycopg://...``.

Without it a backfill has one database (``BACKFILL_DATABASE_URL``) and nothing changes.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import threading
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from backfill.database import display_url, in_default_schema, in_schema, make_engine, parse_url
from backfill.errors import ConfigurationError

FLEET_ENV = "BACKFILL_FLEET"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
"""A member's name: short, and safe in a log line, a metric label and a shell glob."""


@dataclass(frozen=True)
class Member:
    """One database of the fleet, or one tenant's schema in one."""

    name: str
    url: str
    schema: str | None = None
    """PostgreSQL: the tenant's schema. Its tables (the backfill's and the checkpoint tables)
    are found there through the connection's ``search_path`` and SQLAlchemy's
    ``schema_translate_map``, never by pasting the name into SQL."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"fleet member name {self.name!r} is not a short name: use letters, digits, '_', '.' and '-' "
                "(at most 63), starting with a letter or digit"
            )
        if not self.url:
            raise ConfigurationError(f"fleet member '{self.name}' has no database URL: give it `url`")
        url = parse_url(self.url)
        if self.schema is not None:
            if not isinstance(self.schema, str) or not self.schema.strip():
                raise ConfigurationError(f"fleet member '{self.name}': schema must be a schema's name")
            if url.get_backend_name() != "postgresql":
                raise ConfigurationError(
                    f"fleet member '{self.name}': a tenant schema needs PostgreSQL, and {display_url(url)} is "
                    f"{url.get_backend_name()}: on MySQL/MariaDB a schema is a database, name it in the URL"
                )

    def describe(self) -> str:
        """The member as a person reads it: never with its password."""
        where = display_url(parse_url(self.url))
        return f"{self.name} ({where}{', schema ' + self.schema if self.schema else ''})"


def configured(spec: str | None = None) -> str | None:
    """The fleet's declaration: ``--fleet``, else ``BACKFILL_FLEET``; None for one database."""
    found = spec if spec is not None else os.environ.get(FLEET_ENV)
    return found.strip() or None if found else None


def load(spec: str | None, app_module: str | None = None) -> tuple[Member, ...] | None:
    """The members ``spec`` declares (see the module's note), in their declared order; None
    without a fleet. ``app_module``: the definitions module, where ``:callable`` is looked up."""
    spec = configured(spec)
    if spec is None:
        return None
    if re.fullmatch(r"[\w.]*:\w+", spec):
        members = _from_callable(spec, app_module)
    elif "=" not in spec:
        members = _from_file(Path(spec))
    else:
        members = _from_inline(spec)
    return _checked(members, spec)


_pools: dict[tuple[str, int | None], Engine] = {}
_engines: dict[tuple[str, int | None, str | None], Engine] = {}
_lock = threading.Lock()


def engine_for(member: Member, time_limit: int | None = None) -> Engine:
    """The member's engine, in this process: one pool per database URL (and time limit), shared
    by every member of that database — two hundred tenants of one server are one pool, not two
    hundred — each member seeing its own schema through it (``in_schema``, or
    ``in_default_schema`` for a member without one). Made once per member and kept."""
    key = (member.url, time_limit, member.schema)
    with _lock:
        found = _engines.get(key)
        if found is None:
            pool = _pools.get(key[:2])
            if pool is None:
                pool = _pools[key[:2]] = make_engine(member.url, time_limit=time_limit)
            if member.schema is not None:
                found = in_schema(pool, member.schema)
            else:
                found = in_default_schema(pool) if pool.dialect.name == "postgresql" else pool
            _engines[key] = found
        return found


def select(members: Sequence[Member], patterns: Sequence[str]) -> tuple[Member, ...]:
    """The members whose names match any of ``patterns`` (shell globs: ``shard0*``), in the
    fleet's order; all of them without a pattern. A pattern that matches none is a mistake."""
    if not patterns:
        return tuple(members)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(m.name, pattern) for m in members):
            names = ", ".join(m.name for m in members[:8]) + (", ..." if len(members) > 8 else "")
            raise ConfigurationError(
                f"no fleet member matches --member {pattern!r}; the fleet has {len(members)}: {names}"
            )
    return tuple(m for m in members if any(fnmatch.fnmatchcase(m.name, p) for p in patterns))


def _checked(members: Iterable[Member], spec: str) -> tuple[Member, ...]:
    found = tuple(members)
    if not found:
        raise ConfigurationError(f"the fleet {spec!r} has no members: declare at least one, or unset {FLEET_ENV}")
    seen: set[str] = set()
    for member in found:
        if member.name in seen:
            raise ConfigurationError(f"the fleet names member '{member.name}' twice: each name must be unique")
        seen.add(member.name)
    return found


def _from_file(path: Path) -> list[Member]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(
            f"fleet file {str(path)!r} does not exist: give {FLEET_ENV} a TOML file, ':callable' in the "
            "definitions module, or name=URL pairs"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read fleet file {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"fleet file {str(path)!r} is not valid TOML: {exc}") from None
    default_url = raw.get("url")
    table = raw.get("members")
    if not isinstance(table, dict):
        raise ConfigurationError(f"fleet file {str(path)!r} has no [members.NAME] tables: declare the members there")
    members = []
    for name, fields in table.items():
        if not isinstance(fields, dict):
            raise ConfigurationError(f"fleet file {str(path)!r}: members.{name} must be a table (url, schema)")
        unknown = sorted(set(fields) - {"url", "schema"})
        if unknown:
            raise ConfigurationError(
                f"fleet file {str(path)!r}: members.{name} has unknown key(s) {', '.join(unknown)}: "
                "a member has url and schema"
            )
        members.append(Member(name, fields.get("url") or default_url or "", fields.get("schema")))
    return members


def _from_inline(spec: str) -> list[Member]:
    members = []
    for entry in spec.split():
        name, sep, url = entry.partition("=")
        if not sep or not url:
            raise ConfigurationError(
                f"fleet entry {entry.split('://')[0]!r} is not NAME=URL: write the members as "
                "shard01=postgresql+psycopg://... shard02=..."
            )
        members.append(Member(name, url))
    return members


def _from_callable(spec: str, app_module: str | None) -> list[Member]:
    module_name, _, attribute = spec.rpartition(":")
    module_name = module_name or app_module or ""
    if not module_name:
        raise ConfigurationError(
            f"fleet {spec!r} names a callable in the definitions module, and there is none: pass --app or "
            "write module:callable"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import fleet module '{module_name}': {exc}") from None
    source = getattr(module, attribute, None)
    if not callable(source):
        raise ConfigurationError(f"'{module_name}' has no callable '{attribute}' returning the fleet's members")
    try:
        returned = source()
        return [_member(item, spec) for item in returned]
    except ConfigurationError:
        raise
    except Exception as exc:  # the user's own code: its words, one line
        raise ConfigurationError(f"the fleet's callable {spec!r} failed: {type(exc).__name__}: {exc}") from None


def _member(item: Any, spec: str) -> Member:
    if isinstance(item, Member):
        return item
    if isinstance(item, tuple | list) and len(item) in (2, 3):
        return Member(*item)
    raise ConfigurationError(
        f"the fleet's callable {spec!r} returned {type(item).__name__}: return Member(name, url, schema) "
        "or (name, url[, schema]) for each member"
    )
