"""What differs between databases: per-batch time limits, which errors are worth a retry, and
how many rows a table holds when counting would be slow."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, func, literal_column, select, text
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
    if type(orig).__name__ == "OperationalError" and "closed" in message:
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


def error_text(exc: BaseException, limit: int = 2000) -> str:
    """The part of an error worth keeping on a batch row: the driver's message, not SQLAlchemy's
    wrapping with the whole statement and its parameters."""
    orig = getattr(exc, "orig", None) if isinstance(exc, DBAPIError) else None
    message = str(orig if orig is not None else exc).strip() or type(exc).__name__
    name = type(orig if orig is not None else exc).__name__
    return f"{name}: {message}"[:limit]


def before_begin(connection: Connection, lock_timeout: float) -> None:
    """Settings that must be in place before the batch's transaction begins.

    SQLite takes its write lock at BEGIN (see ``database``), so its busy timeout, the nearest
    thing it has to a lock timeout, has to be known by then.
    """
    if connection.dialect.name == "sqlite":
        connection.info["sqlite_busy_timeout_ms"] = max(1, int(lock_timeout * 1000))


def after_end(connection: Connection) -> None:
    """Undo what ``before_begin`` and ``apply_timeouts`` left on the connection.

    MySQL has no ``SET LOCAL``: a batch's limits are session settings, and the connection goes
    back to the pool — to the store's bookkeeping, to the next batch of another run — with
    them. They are put back to what the session had before its first batch. A connection that
    cannot be reset is invalidated rather than handed on with a batch's short limits.
    """
    name = connection.dialect.name
    if name == "sqlite":
        connection.info.pop("sqlite_busy_timeout_ms", None)
        connection.connection.driver_connection.set_progress_handler(None, 0)  # type: ignore[union-attr]
    elif name in ("mysql", "mariadb"):
        if not connection.info.pop(_MYSQL_BOUNDED, False) or connection.invalidated or connection.closed:
            return
        try:
            connection.exec_driver_sql(_mysql_set_limits(connection, *connection.info[_MYSQL_SESSION]))
        except DBAPIError:
            connection.invalidate()


_MYSQL_BOUNDED = "backfill_mysql_bounded"
"""``connection.info`` key: true while a batch's limits are in force on the session."""

_MYSQL_SESSION = "backfill_mysql_session_limits"
"""``connection.info`` key: the session's own limits, read before its first batch. ``info``
lives as long as the DBAPI connection and is emptied with it, so one read per connection."""


def _mysql_time_variable(connection: Connection) -> str:
    """MariaDB's ``max_statement_time`` (seconds, every statement) or MySQL's
    ``max_execution_time`` (milliseconds, read-only SELECTs only)."""
    return "max_statement_time" if connection.dialect.is_mariadb else "max_execution_time"  # type: ignore[attr-defined]


def _mysql_set_limits(connection: Connection, lock_wait: int, statement_time: float) -> str:
    """One ``SET`` for both limits, built from numbers only: nothing user-given reaches it."""
    variable = _mysql_time_variable(connection)
    value = f"{float(statement_time):.6f}" if variable == "max_statement_time" else str(int(statement_time))
    return f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait)}, {variable} = {value}"


def _mysql_session_limits(connection: Connection) -> tuple[int, float]:
    saved: tuple[int, float] | None = connection.info.get(_MYSQL_SESSION)
    if saved is None:
        variable = _mysql_time_variable(connection)
        row = connection.exec_driver_sql(f"SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.{variable}").one()
        saved = (int(row[0]), float(row[1]))
        connection.info[_MYSQL_SESSION] = saved
    return saved


def apply_timeouts(connection: Connection, statement_timeout: float, lock_timeout: float) -> None:
    """Bound the batch's transaction: it holds no lock, and runs no statement, past its budget."""
    name = connection.dialect.name
    if name == "postgresql":
        # set_config(..., true) is SET LOCAL: it ends with the transaction, in one round trip.
        connection.execute(
            text("SELECT set_config('statement_timeout', :st, true), set_config('lock_timeout', :lt, true)"),
            {"st": f"{int(statement_timeout * 1000)}ms", "lt": f"{int(lock_timeout * 1000)}ms"},
        )
    elif name in ("mysql", "mariadb"):
        # Session settings (MySQL has no SET LOCAL), put back by ``after_end``. InnoDB counts
        # lock waits in whole seconds, at least one; MySQL's limit is in milliseconds.
        _mysql_session_limits(connection)
        mariadb = connection.dialect.is_mariadb  # type: ignore[attr-defined]
        limit = statement_timeout if mariadb else max(1, int(statement_timeout * 1000))
        connection.info[_MYSQL_BOUNDED] = True
        connection.exec_driver_sql(_mysql_set_limits(connection, max(1, round(lock_timeout)), limit))
    elif name == "sqlite":
        deadline = time.monotonic() + statement_timeout

        def interrupt() -> int:
            return 1 if time.monotonic() > deadline else 0

        connection.connection.driver_connection.set_progress_handler(interrupt, 10_000)  # type: ignore[union-attr]


EXACT_COUNT_BELOW = 200_000
"""Below this many estimated rows an exact count is cheap, and worth having."""


def estimate_rows(connection: Connection, table: Table) -> tuple[int, bool]:
    """Rows in the table and whether that figure is an estimate.

    PostgreSQL's planner and MySQL's catalog give a row estimate that costs nothing to read;
    counting a table of hundreds of millions of rows would take minutes. A small table, or one
    with no estimate (SQLite), is counted.
    """
    estimate: int | None = None
    name = connection.dialect.name
    if name == "postgresql":
        # The planner scales the last ANALYZE by the table's current size: better than reltuples.
        query = select(literal_column("1")).select_from(table).compile(dialect=connection.dialect)
        plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {query}").scalar_one()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        estimate = int(plan[0]["Plan"]["Plan Rows"])
    elif name in ("mysql", "mariadb"):
        found = connection.execute(
            text(
                "SELECT table_rows FROM information_schema.tables "
                "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name"
            ),
            {"schema": table.schema, "name": table.name},
        ).scalar()
        estimate = int(found) if found is not None else None
    if estimate is not None and estimate >= EXACT_COUNT_BELOW:
        return estimate, True
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one()), False
