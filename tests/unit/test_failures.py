"""What a database error means for a batch, from the exceptions the drivers raise: a retry as it
is, a split (a statement timeout), or a failure to report; and what of it a batch row keeps."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from types import SimpleNamespace

import psycopg.errors
import pymysql.err  # type: ignore[import-untyped]
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from backfill.failures import classify, error_text, is_transient, retried
from backfill.status import ErrorKind

STATEMENT = "UPDATE items SET counter = counter + 1 WHERE id BETWEEN %(first)s AND %(last)s"
PARAMS = {"first": 1, "last": 1000}


def wrapped(orig: BaseException, *, invalidated: bool = False) -> DBAPIError:
    """The driver's exception as SQLAlchemy hands it to a batch."""
    return OperationalError(STATEMENT, PARAMS, orig, connection_invalidated=invalidated)


@dataclass(frozen=True)
class Case:
    driver: str
    orig: BaseException
    kind: ErrorKind


TRANSIENT, TIMEOUT, PERMANENT = ErrorKind.TRANSIENT, ErrorKind.TIMEOUT, ErrorKind.PERMANENT
pg, my = psycopg.errors, pymysql.err

CASES = [
    # PostgreSQL (psycopg): the SQLSTATE.
    Case("postgresql deadlock", pg.DeadlockDetected("deadlock detected"), TRANSIENT),
    Case("postgresql serialization", pg.SerializationFailure("could not serialize"), TRANSIENT),
    Case("postgresql lock_timeout", pg.LockNotAvailable("canceling statement: lock"), TRANSIENT),
    Case("postgresql terminated", pg.AdminShutdown("terminating connection"), TRANSIENT),
    Case("postgresql connection class 08", pg.ConnectionFailure("connection failure"), TRANSIENT),
    Case("postgresql statement_timeout", pg.QueryCanceled("canceling statement"), TIMEOUT),
    Case("postgresql not null", pg.NotNullViolation("null value in column"), PERMANENT),
    Case("postgresql syntax", pg.SyntaxError("syntax error at or near"), PERMANENT),
    # MySQL and MariaDB (PyMySQL): the error number, first of the args.
    Case("mysql lock wait", my.OperationalError(1205, "Lock wait timeout exceeded"), TRANSIENT),
    Case("mysql deadlock", my.OperationalError(1213, "Deadlock found"), TRANSIENT),
    Case("mysql server gone", my.OperationalError(2006, "MySQL server has gone away"), TRANSIENT),
    Case("mysql connection lost", my.OperationalError(2013, "Lost connection"), TRANSIENT),
    Case("mariadb killed", my.OperationalError(1927, "Connection was killed"), TRANSIENT),
    Case("mariadb max_statement_time", my.OperationalError(1969, "max_statement_time exceeded"), TIMEOUT),
    Case("mysql max_execution_time", my.OperationalError(3024, "max_execution_time exceeded"), TIMEOUT),
    Case("mysql kill query", my.OperationalError(1317, "Query execution was interrupted"), TIMEOUT),
    Case("mysql duplicate", my.IntegrityError(1062, "Duplicate entry 'x'"), PERMANENT),
    # SQLite: the message.
    Case("sqlite locked", sqlite3.OperationalError("database is locked"), TRANSIENT),
    Case("sqlite table locked", sqlite3.OperationalError("database table is locked: items"), TRANSIENT),
    Case("sqlite schema changed", sqlite3.OperationalError("database schema has changed"), TRANSIENT),
    Case("sqlite interrupted", sqlite3.OperationalError("interrupted"), TIMEOUT),
    Case("sqlite closed", sqlite3.OperationalError("Cannot operate on a closed database."), TRANSIENT),
    Case("sqlite no such column", sqlite3.OperationalError("no such column: countr"), PERMANENT),
    Case("sqlite constraint", sqlite3.IntegrityError("NOT NULL constraint failed: items.counter"), PERMANENT),
]


@pytest.mark.parametrize("case", CASES, ids=[c.driver for c in CASES])
def test_each_database_error_is_sorted_by_what_it_means(case: Case) -> None:
    assert classify(wrapped(case.orig)) is case.kind
    assert is_transient(wrapped(case.orig)) is (case.kind is ErrorKind.TRANSIENT)


def test_the_mysql_error_number_wins_over_pymysqls_catch_all_sqlstate() -> None:
    orig = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
    orig.sqlstate = "HY000"  # type: ignore[attr-defined]  # what PyMySQL sets on most errors
    assert classify(wrapped(orig)) is ErrorKind.TRANSIENT


def test_a_first_argument_that_is_a_bool_is_no_mysql_error_number() -> None:
    """True == 1 in Python: read as an error number it would hide the message that says more."""
    assert classify(wrapped(sqlite3.OperationalError(True, "database is locked"))) is ErrorKind.TRANSIENT


def test_a_connection_sqlalchemy_invalidated_is_worth_a_retry_whatever_the_driver_said() -> None:
    orig = psycopg.errors.SyntaxError("server closed the connection unexpectedly")
    assert classify(wrapped(orig)) is ErrorKind.PERMANENT
    assert classify(wrapped(orig, invalidated=True)) is ErrorKind.TRANSIENT


def test_an_error_that_is_not_the_databases_is_the_definitions_to_fix() -> None:
    assert classify(ValueError("row 77 is poisoned")) is ErrorKind.PERMANENT
    assert classify(TimeoutError("timed out")) is ErrorKind.PERMANENT
    assert not is_transient(KeyError("team_id"))


def test_a_batch_keeps_the_drivers_message_not_the_statement() -> None:
    text = error_text(wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")))
    assert text == "QueryCanceled: canceling statement due to statement timeout"
    assert "UPDATE items" not in text and "1000" not in text
    assert error_text(ValueError("row 77 is poisoned")) == "ValueError: row 77 is poisoned"
    assert error_text(RuntimeError()) == "RuntimeError: RuntimeError"  # no message: the class says it
    assert error_text(ValueError("x" * 5000), limit=40) == "ValueError: " + "x" * 28


def test_row_values_are_left_out_unless_asked_for() -> None:
    duplicate = pymysql.err.IntegrityError(1062, "Duplicate entry 'ann@example.com' for key 'email'")
    assert error_text(IntegrityError(STATEMENT, PARAMS, duplicate), full=False) == (
        "IntegrityError: (1062, \"Duplicate entry (value hidden) for key 'email'\")"
    )
    assert "ann@example.com" in error_text(IntegrityError(STATEMENT, PARAMS, duplicate), full=True)

    class UniqueViolation(Exception):
        """A psycopg error as the server sends it: the primary message and a DETAIL apart."""

        sqlstate = "23505"
        diag = SimpleNamespace(
            message_primary='duplicate key value violates unique constraint "contacts_email_key"',
            message_detail="Key (email)=(ann@example.com) already exists.",
        )

        def __str__(self) -> str:
            return f"{self.diag.message_primary}\nDETAIL:  {self.diag.message_detail}"

    hidden = error_text(IntegrityError(STATEMENT, PARAMS, UniqueViolation()), full=False)
    assert hidden == (
        'UniqueViolation: duplicate key value violates unique constraint "contacts_email_key" (details hidden)'
    )
    assert "ann@example.com" in error_text(IntegrityError(STATEMENT, PARAMS, UniqueViolation()), full=True)


def test_bookkeeping_is_retried_through_transient_errors_only() -> None:
    slept: list[float] = []
    outcomes: list[BaseException | str] = [
        wrapped(psycopg.errors.DeadlockDetected("deadlock detected")),
        wrapped(pymysql.err.OperationalError(2013, "Lost connection")),
        "claimed",
    ]

    def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert retried(call, sleep=slept.append) == "claimed"
    assert len(slept) == 2 and all(0 <= s <= 5.0 for s in slept)

    permanent = wrapped(psycopg.errors.UndefinedTable('relation "items" does not exist'))
    attempts: list[int] = []

    def fails() -> str:
        attempts.append(1)
        raise permanent

    with pytest.raises(OperationalError) as raised:
        retried(fails, sleep=slept.append)
    assert raised.value is permanent and len(attempts) == 1
