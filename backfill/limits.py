"""Time limits on a connection that runs batches: no statement runs, and no lock is waited for,
past the run's budget.

On PostgreSQL a batch's commit does not wait for its WAL to reach the disk
(``synchronous_commit = off``): its locks go as soon as it commits, rather than after an fsync
while the application waits on its rows. Nothing is at risk — a batch's work and its checkpoint
are one transaction, so a crash in the next few hundred milliseconds loses both together, and
the batch runs again; whatever commits after it in the WAL (the run's conclusion, an operator's
action) waits for it to be flushed first.

The limits are set once for a stretch of batches on one connection (a chain), not per batch:
a ``SET LOCAL`` per batch is one more round trip on the hot path. They are session settings for
as long as the ``Bounded`` block lasts, and the session gets its own back when it ends — the
connection goes back to the pool, to bookkeeping or to another run's batches, with them.
"""

from __future__ import annotations

import time
from types import TracebackType

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from backfill.database import SQLITE_BUSY_KEY

_IN_FORCE = "backfill_limits"
"""``connection.info`` key: the limits set on this DBAPI connection (gone with a reconnect)."""

_MYSQL_SESSION = "backfill_mysql_session_limits"
"""``connection.info`` key: the session's own limits, read before its first batch. ``info``
lives as long as the DBAPI connection and is emptied with it, so one read per connection."""


class Bounded:
    """``with Bounded(connection, statement_timeout, lock_timeout) as limits:`` — then
    ``limits.batch()`` at the start of each batch's transaction."""

    def __init__(self, connection: Connection, statement_timeout: float, lock_timeout: float) -> None:
        self.connection = connection
        self.name = connection.dialect.name
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self._set = False
        self._active = True

    @classmethod
    def unbounded(cls, connection: Connection) -> Bounded:
        """Limits that are not set: the connection keeps its owner's (a migration's)."""
        limits = cls(connection, 0.0, 0.0)
        limits._active = False
        return limits

    def __enter__(self) -> Bounded:
        self._apply()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._restore()

    def change(self, statement_timeout: float, lock_timeout: float) -> None:
        """New limits (a ``tune`` mid-chain), from the next batch on."""
        if self._active and (statement_timeout, lock_timeout) != (self.statement_timeout, self.lock_timeout):
            self.statement_timeout, self.lock_timeout = statement_timeout, lock_timeout
            self._apply()

    def batch(self) -> None:
        """A batch's transaction is about to begin. The limits are set again if the connection
        was replaced (a reconnect after a lost connection), and on SQLite the statement timeout
        starts counting."""
        if not self._active:
            return
        if self.connection.info.get(_IN_FORCE) != (self.statement_timeout, self.lock_timeout):
            self._apply()
        if self.name != "sqlite":
            return
        deadline = time.monotonic() + self.statement_timeout

        def interrupt() -> int:
            return 1 if time.monotonic() > deadline else 0

        self.connection.connection.driver_connection.set_progress_handler(interrupt, 10_000)  # type: ignore[union-attr]

    def _apply(self) -> None:
        if not self._active:
            return
        connection = self.connection
        if self.name == "sqlite":
            # SQLite takes its write lock at BEGIN: its busy timeout, the nearest thing it has to
            # a lock timeout, has to be known by then.
            connection.info[SQLITE_BUSY_KEY] = max(1, int(self.lock_timeout * 1000))
        elif self.name == "postgresql":
            if connection.in_transaction():
                connection.commit()
            with connection.begin():  # set_config(..., false) is SET: it outlives the transaction
                connection.execute(
                    text(
                        "SELECT set_config('statement_timeout', :st, false), set_config('lock_timeout', :lt, false), "
                        "set_config('synchronous_commit', 'off', false)"
                    ),
                    {"st": f"{int(self.statement_timeout * 1000)}ms", "lt": f"{int(self.lock_timeout * 1000)}ms"},
                )
        elif self.name in ("mysql", "mariadb"):
            # InnoDB counts lock waits in whole seconds, at least one; MySQL's limit is in ms.
            if connection.in_transaction():
                connection.commit()
            mariadb = connection.dialect.is_mariadb  # type: ignore[attr-defined]
            limit = self.statement_timeout if mariadb else max(1, int(self.statement_timeout * 1000))
            with connection.begin():  # session variables: the transaction only frames the statements
                _mysql_session_limits(connection)
                connection.exec_driver_sql(_mysql_set_limits(connection, max(1, round(self.lock_timeout)), limit))
        connection.info[_IN_FORCE] = (self.statement_timeout, self.lock_timeout)
        self._set = True

    def _restore(self) -> None:
        if not self._set:
            return
        self._set = False
        connection = self.connection
        connection.info.pop(_IN_FORCE, None)
        if self.name == "sqlite":
            connection.info.pop(SQLITE_BUSY_KEY, None)
            if not connection.closed and not connection.invalidated:
                connection.connection.driver_connection.set_progress_handler(None, 0)  # type: ignore[union-attr]
            return
        if connection.closed or connection.invalidated:
            return
        try:
            if connection.in_transaction():
                connection.rollback()
            if self.name == "postgresql":
                with connection.begin():  # RESET both, in one round trip
                    connection.exec_driver_sql(
                        "SELECT set_config(name, reset_val, false) FROM pg_settings "
                        "WHERE name IN ('statement_timeout', 'lock_timeout', 'synchronous_commit')"
                    )
            elif self.name in ("mysql", "mariadb"):
                with connection.begin():
                    connection.exec_driver_sql(_mysql_set_limits(connection, *connection.info[_MYSQL_SESSION]))
        except DBAPIError:
            connection.invalidate()  # never handed on with a batch's short limits


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


__all__ = ["Bounded"]
