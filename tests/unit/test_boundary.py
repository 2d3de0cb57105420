"""What an entry point tells its user about an error: a mistake (exit 2) and a fault of the
environment (exit 1) in one line, the database's own words kept but no password and no row;
anything else is a bug, shown with its traceback."""

from __future__ import annotations

import sqlite3

import psycopg.errors
import pymysql.err  # type: ignore[import-untyped]
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InternalError, OperationalError, ProgrammingError

from backfill.boundary import Cause, contained, judge
from backfill.errors import ConfigurationError, DatabaseUnavailableError, RunFailedError, TargetError

pg, my = psycopg.errors, pymysql.err


def wrapped(kind: type[DBAPIError], orig: BaseException, *, invalidated: bool = False) -> DBAPIError:
    return kind("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("exc", "cause", "code"),
    [
        (TargetError("table 'x' does not exist: create it"), Cause.MISTAKE, 2),
        (ConfigurationError("BACKFILL_X must be a number"), Cause.MISTAKE, 2),
        (RunFailedError("run 3 failed"), Cause.ENVIRONMENT, 1),
        (DatabaseUnavailableError("cannot connect"), Cause.ENVIRONMENT, 1),
        (ConnectionRefusedError(111, "Connection refused"), Cause.ENVIRONMENT, 1),
        (TimeoutError("timed out"), Cause.ENVIRONMENT, 1),
        (KeyError("a bug"), Cause.BUG, 1),
        (wrapped(ProgrammingError, pg.UndefinedColumn("column x does not exist")), Cause.BUG, 1),
        (wrapped(OperationalError, my.OperationalError(1054, "Unknown column 'x'")), Cause.BUG, 1),
    ],
)
def test_each_error_has_one_cause(exc: BaseException, cause: Cause, code: int) -> None:
    verdict = judge(exc)
    assert (verdict.cause, verdict.exit_code) == (cause, code)
    assert "\n" not in verdict.message


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (wrapped(ProgrammingError, pg.InsufficientPrivilege("permission denied for table backfill_runs")), "refused"),
        (wrapped(OperationalError, my.OperationalError(1142, "INDEX command denied to user")), "refused"),
        (wrapped(ProgrammingError, my.ProgrammingError(1044, "Access denied for user")), "refused"),
        (wrapped(OperationalError, pg.QueryCanceled("canceling statement due to statement timeout")), "timed out"),
        (wrapped(OperationalError, my.OperationalError(1205, "Lock wait timeout exceeded")), "timed out"),
        (wrapped(OperationalError, sqlite3.OperationalError("database is locked")), "timed out"),
        (wrapped(OperationalError, pg.DiskFull("could not extend file")), "out of resources"),
        (wrapped(OperationalError, my.OperationalError(1040, "Too many connections")), "out of resources"),
        (wrapped(OperationalError, pg.AdminShutdown("terminating connection due to administrator command")), "lost"),
        (wrapped(OperationalError, my.OperationalError(2013, "Lost connection to MySQL server")), "lost"),
        (wrapped(OperationalError, psycopg.OperationalError("server closed the connection"), invalidated=True), "lost"),
        (wrapped(OperationalError, sqlite3.OperationalError("disk I/O error")), "the database failed"),
    ],
)
def test_faults_of_the_environment_say_what_failed_and_what_to_do(exc: DBAPIError, says: str) -> None:
    verdict = judge(exc)
    assert verdict.cause is Cause.ENVIRONMENT and verdict.exit_code == 1
    assert says in verdict.message
    assert str(exc.orig).split("\n")[0] in verdict.message  # the database's own words


def test_row_values_stay_out_of_the_line() -> None:
    orig = my.OperationalError(1205, "Lock wait timeout exceeded")
    verdict = judge(wrapped(OperationalError, orig))
    assert "SELECT 1" not in verdict.message  # not SQLAlchemy's statement and parameters
    duplicate = wrapped(IntegrityError, my.IntegrityError(1062, "Duplicate entry 'a@b.c' for key 'email'"))
    assert judge(duplicate).cause is Cause.BUG  # a constraint outside a batch is not the environment's
    internal = wrapped(InternalError, pg.InsufficientPrivilege("permission denied"))
    assert judge(internal).cause is Cause.ENVIRONMENT


def test_a_worker_lives_on_through_faults_and_says_each_once(caplog: pytest.LogCaptureFixture) -> None:
    lost = wrapped(OperationalError, my.OperationalError(2006, "MySQL server has gone away"))
    gone = wrapped(ProgrammingError, pg.UndefinedTable('relation "backfill_runs" does not exist'))

    def failing(exc: BaseException) -> int:
        raise exc

    with caplog.at_level("WARNING", logger="backfill.worker"):
        assert contained("tick", lambda: failing(lost), 0) == 0
        assert contained("tick", lambda: failing(lost), 0) == 0  # said once a minute, not once a tick
        assert contained("tick", lambda: failing(gone), -1) == -1
        assert contained("tick", lambda: 7, 0) == 7
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "lost the connection to the database" in lines[0]
    assert "backfill init-db" in lines[1] and not any("Traceback" in line for line in lines)
    with pytest.raises(KeyError):
        contained("tick", lambda: failing(KeyError("a bug")), 0)


def test_a_missing_table_names_init_db() -> None:
    for orig in (
        pg.UndefinedTable('relation "backfill_runs" does not exist'),
        my.ProgrammingError(1146, "Table 'app.backfill_runs' doesn't exist"),
        sqlite3.OperationalError("no such table: backfill_runs"),
    ):
        verdict = judge(wrapped(ProgrammingError, orig))
        assert (verdict.cause, verdict.exit_code) == (Cause.MISTAKE, 2)
        assert "backfill_runs" in verdict.message and "backfill init-db" in verdict.message
