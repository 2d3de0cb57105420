"""Time, from the two places it can come from.

Times that two processes compare — leases, heartbeats, "sent a while ago", rate windows, holds —
are the database's: written and compared in SQL (``server_now()``), never by a process's own
clock, which may be off by minutes on another host. Durations and sleeps within one process come
from its ``Clock``. Both are seams: a simulation substitutes its own clock for each.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import DateTime, Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


class Clock:
    """The local clock of this process: for durations, deadlines and sleeps only."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK = Clock()


class DatabaseTime(Protocol):
    """Where the store's timestamps come from: ``now()`` is a SQL expression."""

    def now(self) -> ColumnElement[datetime]: ...


class ServerTime:
    """The database server's clock, in UTC, read by the statement that uses it."""

    def now(self) -> ColumnElement[datetime]:
        return server_now()


SERVER_TIME = ServerTime()


class server_now(FunctionElement[datetime]):
    """The database server's current time in UTC, as a naive timestamp (as the store keeps it)."""

    type = DateTime()
    inherit_cache = True
    name = "backfill_server_now"


@compiles(server_now)
def _now_default(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(server_now, "postgresql")
def _now_postgresql(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "timezone('UTC', statement_timestamp())"


@compiles(server_now, "mysql", "mariadb")
def _now_mysql(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


@compiles(server_now, "sqlite")
def _now_sqlite(element: server_now, compiler: SQLCompiler, **kw: Any) -> str:
    # The text form SQLAlchemy stores for a DateTime on SQLite: microseconds, six digits
    # (strftime's %f has milliseconds; three zeros make six), so stored times compare as text.
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


class plus_seconds(FunctionElement[datetime]):
    """``timestamp + seconds``, both SQL expressions, in each database's own arithmetic."""

    type = DateTime()
    inherit_cache = True
    name = "backfill_plus_seconds"

    def __init__(self, timestamp: Any, seconds: Any) -> None:
        seconds = seconds if isinstance(seconds, ColumnElement) else literal(float(seconds), Float())
        super().__init__(timestamp, seconds)


def _arguments(element: plus_seconds, compiler: SQLCompiler, **kw: Any) -> tuple[str, str]:
    timestamp, seconds = element.clauses
    return compiler.process(timestamp, **kw), compiler.process(seconds, **kw)


@compiles(plus_seconds)
def _plus_default(element: plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    timestamp, seconds = _arguments(element, compiler, **kw)
    return f"({timestamp} + ({seconds}) * INTERVAL '1' SECOND)"


@compiles(plus_seconds, "postgresql")
def _plus_postgresql(element: plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    timestamp, seconds = _arguments(element, compiler, **kw)
    return f"(CAST({timestamp} AS TIMESTAMP) + make_interval(secs => CAST({seconds} AS DOUBLE PRECISION)))"


@compiles(plus_seconds, "mysql", "mariadb")
def _plus_mysql(element: plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    timestamp, seconds = _arguments(element, compiler, **kw)
    return f"(CAST({timestamp} AS DATETIME(6)) + INTERVAL ROUND(({seconds}) * 1000000) MICROSECOND)"


@compiles(plus_seconds, "sqlite")
def _plus_sqlite(element: plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    timestamp, seconds = _arguments(element, compiler, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', {timestamp}, printf('%+.6f seconds', {seconds}))"


__all__ = ["SERVER_TIME", "SYSTEM_CLOCK", "Clock", "DatabaseTime", "ServerTime", "plus_seconds", "server_now"]
