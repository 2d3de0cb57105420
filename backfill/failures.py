"""What a database error means for a batch: worth a retry (a deadlock, a lock timeout, a lost
connection), a statement timeout (split the batch), or a failure to report. Each database says
it differently, in codes of its own; tenacity retries what is transient."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from backfill.status import ErrorKind

T = TypeVar("T")

# PostgreSQL SQLSTATEs (Appendix A of its manual).
_PG_TRANSIENT = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available: lock_timeout
    "57P01",  # admin_shutdown: pg_terminate_backend
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
}
_PG_TIMEOUT = {"57014"}  # query_canceled: statement_timeout

# MySQL / MariaDB error numbers (server errors below 2000, client errors from 2000 on).
_MYSQL_TRANSIENT = {
    1205,  # ER_LOCK_WAIT_TIMEOUT: innodb_lock_wait_timeout
    1213,  # ER_LOCK_DEADLOCK: InnoDB rolled the whole transaction back
    1412,  # ER_TABLE_DEF_CHANGED: a concurrent DDL changed the table under the transaction
    1040,  # ER_CON_COUNT_ERROR: too many connections
    1053,  # ER_SERVER_SHUTDOWN
    1927,  # ER_CONNECTION_KILLED (MariaDB): KILL of the connection while it ran a statement
    2003,  # CR_CONN_HOST_ERROR: cannot connect
    2006,  # CR_SERVER_GONE_ERROR
    2013,  # CR_SERVER_LOST: KILL of the connection, a restart, a network cut
    2055,  # CR_SERVER_LOST_EXTENDED
    4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24+): disconnected after wait_timeout
}
_MYSQL_TIMEOUT = {
    1969,  # ER_STATEMENT_TIMEOUT (MariaDB): max_statement_time
    3024,  # ER_QUERY_TIMEOUT (MySQL): max_execution_time
    1317,  # ER_QUERY_INTERRUPTED: KILL QUERY (pt-kill, an operator), as good as a time limit
}

_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database schema has changed")
_LOST = ("closed", "connection failed", "connection refused", "the connection is lost", "consuming input failed")
"""A driver's own words (no SQLSTATE: the server never answered) for a connection lost or refused,
as psycopg says them when the server is down or restarting."""


def classify(exc: BaseException) -> ErrorKind:
    """Sort an error raised by a batch into retry-as-is, timed-out, or give-up."""
    if not isinstance(exc, DBAPIError):
        return ErrorKind.PERMANENT
    if exc.connection_invalidated:
        return ErrorKind.TRANSIENT
    orig: Any = exc.orig
    # MySQL drivers (PyMySQL, mysqlclient) put the error number first. PyMySQL also sets a
    # ``sqlstate``, mostly the catch-all HY000, so the number is read before any SQLSTATE.
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        if args[0] in _MYSQL_TRANSIENT:
            return ErrorKind.TRANSIENT
        if args[0] in _MYSQL_TIMEOUT:
            return ErrorKind.TIMEOUT
        return ErrorKind.PERMANENT
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:
        if sqlstate in _PG_TRANSIENT or sqlstate.startswith("08"):
            return ErrorKind.TRANSIENT
        if sqlstate in _PG_TIMEOUT:
            return ErrorKind.TIMEOUT
        return ErrorKind.PERMANENT
    message = str(orig).lower()
    if any(part in message for part in _SQLITE_TRANSIENT):
        return ErrorKind.TRANSIENT
    if message == "interrupted":
        return ErrorKind.TIMEOUT
    if type(orig).__name__ == "OperationalError" and any(part in message for part in _LOST):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is ErrorKind.TRANSIENT


def retry_transient(attempts: int = 8, sleep: Callable[[float], None] = time.sleep) -> Retrying:
    """Retry a piece of bookkeeping through a lock conflict or a reconnect.

    Safe for every store call: each is a guarded transaction, so an attempt whose commit did in
    fact land makes the next one a no-op (at worst a claim nobody holds, which its lease ends).
    """
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.05, max=5.0),
        retry=retry_if_exception(is_transient),
        reraise=True,
        sleep=sleep,
    )


def retried(call: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried through transient errors (see ``retry_transient``)."""
    for attempt in retry_transient(sleep=sleep):
        with attempt:
            return call()
    raise AssertionError("unreachable: the last attempt re-raises")


ERROR_DETAIL_ENV = "BACKFILL_ERROR_DETAIL"
"""``full`` keeps the database's whole message on batch rows, events, logs and status — row
values included. By default they are left out: a failing row is customer data."""

_MYSQL_VALUES = (
    re.compile(r"(entry )'.*'( for key )", re.DOTALL),
    re.compile(r"(value: )'.*'( for column )", re.DOTALL),
)
"""MySQL and MariaDB quote the offending value inside the message itself (1062 ``Duplicate
entry 'a@b.c' for key 'email'``, 1366 ``Incorrect integer value: 'abc' for column ...``)."""


def error_text(exc: BaseException, limit: int = 2000, *, full: bool | None = None) -> str:
    """The part of an error worth keeping on a batch row: the driver's message, not SQLAlchemy's
    wrapping with the whole statement and its parameters — and, unless ``full`` (default:
    ``BACKFILL_ERROR_DETAIL=full``), not the row values the database adds to it: PostgreSQL's
    ``DETAIL`` (``Failing row contains (...)``, ``Key (email)=(...)``) and the values MySQL
    quotes. The class, the message and the constraint stay: enough to find the rule a batch broke,
    and the batch's own key bounds say where."""
    orig = getattr(exc, "orig", None) if isinstance(exc, DBAPIError) else None
    source = orig if orig is not None else exc
    name = type(source).__name__
    if full is None:
        full = os.environ.get(ERROR_DETAIL_ENV, "").strip().lower() == "full"
    message = str(source).strip()
    if not full:
        message = _without_row_values(source, message)
    return f"{name}: {message or name}"[:limit]


def _without_row_values(source: BaseException, message: str) -> str:
    diag = getattr(source, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:  # psycopg: the primary message alone, without DETAIL, CONTEXT or the statement
        hidden = bool(getattr(diag, "message_detail", None)) or primary.strip() != message
        return str(primary).strip() + (" (details hidden)" if hidden else "")
    args: tuple[Any, ...] = tuple(getattr(source, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):  # PyMySQL, mysqlclient
        for pattern in _MYSQL_VALUES:
            message = pattern.sub(r"\1(value hidden)\2", message)
    return message
