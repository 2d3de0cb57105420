"""What an error at an entry point tells its user: a mistake to fix, a fault of the environment to
wait out or repair, or a bug to report.

The command line, the workers' and the scheduler's start-up, the dashboard and the Alembic
operations all meet the same three kinds, and each says them the same way: one line for the
first two (the database's own words kept, never a password or a row's values), the traceback for
the third. A batch's own errors never get here: the executor records, retries or splits them.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from backfill.errors import BackfillError
from backfill.failures import error_text

T = TypeVar("T")
logger = logging.getLogger("backfill.worker")


class Cause(enum.Enum):
    MISTAKE = "mistake"
    ENVIRONMENT = "environment"
    BUG = "bug"


@dataclass(frozen=True)
class Verdict:
    cause: Cause
    message: str
    """One line, without the ``error:`` prefix (empty for a bug: its traceback says it)."""
    exit_code: int


UNCHANGED = "nothing was left half-done: every batch commits whole or not at all"

# PostgreSQL SQLSTATEs and MySQL/MariaDB error numbers of faults no code change fixes.
_PG_PRIVILEGE = {"42501"}  # insufficient_privilege
_PG_TIMEOUT = {"57014", "55P03", "25P03"}  # statement timeout, lock timeout, idle in transaction
_PG_RESOURCES = ("53",)  # insufficient resources: disk full, out of memory, too many connections
_MYSQL_PRIVILEGE = {1044, 1045, 1142, 1143, 1227, 1370, 1410}
_MYSQL_TIMEOUT = {1205, 1969, 3024}
_MYSQL_RESOURCES = {1021, 1037, 1040, 1041, 1114, 1203}
_PG_LOST = ("08", "57P01", "57P02", "57P03")  # connection exceptions, the server shutting down
_MYSQL_LOST = {1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031}


def judge(exc: BaseException) -> Verdict:
    """Sort ``exc`` into the three kinds, with the line to print and the exit code to leave by."""
    if isinstance(exc, BackfillError):
        return Verdict(Cause.MISTAKE if exc.exit_code == 2 else Cause.ENVIRONMENT, one_line(str(exc)), exc.exit_code)
    if isinstance(exc, DBAPIError):
        if _missing_table(exc):
            said = error_text(exc, 300).splitlines()[0]
            return Verdict(Cause.MISTAKE, one_line(f"{said}: {MISSING_TABLES_FIX}"), 2)
        fault = _database_fault(exc)
        if fault is not None:
            return Verdict(Cause.ENVIRONMENT, one_line(fault), 1)
    elif isinstance(exc, OSError | TimeoutError):
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        return Verdict(Cause.ENVIRONMENT, one_line(f"{what}: check the network and the servers, then run it again"), 1)
    return Verdict(Cause.BUG, "", 1)


def contained(what: str, call: Callable[[], T], default: T) -> T:
    """``call()`` in a process that must live on (a worker's task, the scheduler's tick): a
    mistake or a fault of the environment is one warning line and ``default`` — the next tick
    tries again — where a bug raises, traceback and all. A line said once is not repeated for
    a minute, so a worker does not flood its log while the database is away."""
    try:
        return call()
    except Exception as exc:
        verdict = judge(exc)
        if verdict.cause is Cause.BUG:
            raise
        now = time.monotonic()
        key = (what, verdict.message)
        if now - _said.get(key, -math.inf) >= REPEAT_SECONDS:
            _said[key] = now
            logger.warning("%s: %s", what, verdict.message)
        return default


REPEAT_SECONDS = 60.0
_said: dict[tuple[str, str], float] = {}


def bug_report_line(exc: BaseException) -> str:
    return one_line(
        f"unexpected {type(exc).__name__}: this is a bug in backfill, not in your setup: "
        "please report it with the traceback above"
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


MISSING_TABLES_FIX = (
    "a table went away under backfill: if it is a checkpoint table, run `backfill init-db` or the migration "
    "that creates them (a downgrade dropped them?); if it is the backfill's own table, cancel its run"
)


def _missing_table(exc: DBAPIError) -> bool:
    number, sqlstate = _codes(exc.orig)
    return sqlstate == "42P01" or number == 1146 or str(exc.orig).startswith("no such table")


def _database_fault(exc: DBAPIError) -> str | None:
    """The line for a database error no change to the code would fix, or None (then it is a bug)."""
    said = error_text(exc, 300).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
    number, sqlstate = _codes(exc.orig)
    if sqlstate in _PG_PRIVILEGE or number in _MYSQL_PRIVILEGE:
        return (
            f"the database refused: {said}: grant the role backfill connects as SELECT, INSERT, UPDATE and DELETE "
            "on the checkpoint tables (and the backfill's own table), or CREATE for init-db"
        )
    if sqlstate in _PG_TIMEOUT or number in _MYSQL_TIMEOUT or "database is locked" in said:  # SQLite's busy timeout
        return f"the database timed out: {said}: {UNCHANGED}; run it again when the database is less busy"
    if (sqlstate or "").startswith(_PG_RESOURCES) or number in _MYSQL_RESOURCES:
        return f"the database is out of resources: {said}: {UNCHANGED}; free them and run it again"
    again = f"{UNCHANGED}; run the same command again to continue where it stopped"
    if exc.connection_invalidated or (sqlstate or "").startswith(_PG_LOST) or number in _MYSQL_LOST:
        return f"lost the connection to the database: {said}: {again}"
    if number is None and sqlstate is None and isinstance(exc, OperationalError | InterfaceError):
        return f"the database failed: {said}: {again}"  # a driver's own fault, with no code to tell
    return None


def _codes(orig: Any) -> tuple[int | None, str | None]:
    args = getattr(orig, "args", ())
    number = args[0] if args and isinstance(args[0], int) and not isinstance(args[0], bool) else None
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return number, sqlstate if isinstance(sqlstate, str) else None
