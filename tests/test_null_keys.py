"""A key that may hold NULL: refused when the definition is checked, and named by the planner if
a NULL key turns up anyway. Rows with a NULL key can be neither ordered nor batched: a run over
them would plan ``[NULL, NULL]`` and then fail on every ``key > NULL``."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from backfill import App, Backfill, Registry, target
from backfill.errors import TargetError
from backfill.status import RunStatus
from tests.conftest import Database
from tests.helpers import one_error_line

TYPES = ["INTEGER", "INT", "BIGINT", "TEXT", "VARCHAR(20)", "integer"]


@settings(max_examples=60, deadline=None)
@given(
    declared=st.sampled_from(TYPES),
    not_null=st.booleans(),
    without_rowid=st.booleans(),
    composite=st.booleans(),
)
def test_sqlite_keys_are_refused_exactly_when_sqlite_lets_them_hold_null(
    declared: str, not_null: bool, without_rowid: bool, composite: bool
) -> None:
    """The database is the judge: a key is accepted if and only if SQLite refuses a row whose
    key is NULL (INTEGER PRIMARY KEY, the rowid, takes a number instead; other primary keys
    take NULL unless NOT NULL or WITHOUT ROWID)."""
    engine = create_engine("sqlite://")
    key = "k, j" if composite else "k"
    columns = f"k {declared}{' NOT NULL' if not_null else ''}, j INTEGER NOT NULL, v INTEGER"
    with engine.begin() as c:
        c.execute(text(f"CREATE TABLE t ({columns}, PRIMARY KEY ({key})){' WITHOUT ROWID' if without_rowid else ''}"))
    holds_null = False
    with contextlib.suppress(IntegrityError), engine.begin() as c:
        c.execute(text("INSERT INTO t (k, j) VALUES (NULL, 1)"))
        holds_null = c.execute(text("SELECT count(*) FROM t WHERE k IS NULL")).scalar() == 1
    definition = Backfill(name="t", table="t", key=("k", "j") if composite else "k", work="UPDATE t SET v = 1")
    with engine.connect() as c:
        try:
            target.resolve(c, definition)
            accepted = True
        except TargetError as exc:
            assert "allow NULL" in str(exc) and "make them NOT NULL" in str(exc)
            accepted = False
    assert accepted is not holds_null


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_a_nullable_key_is_one_line_and_changes_nothing(db: Database) -> None:
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE codes (code TEXT PRIMARY KEY, v INTEGER)"))
    result = db.cli("start", "codes_by_code", app="tests.apps.nullable_key")
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert "key column(s) code of table 'codes' allow NULL" in line and "make them NOT NULL" in line, line
    with db.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM backfill_runs")).scalar() == 0


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_a_null_key_found_while_planning_fails_the_run_by_name(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """NULL keys that got past the check (here: the check made to pass): the final pass, which
    looks for pending rows anywhere, would plan ``[NULL, NULL]``; the run fails, named."""
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE codes (code TEXT PRIMARY KEY, v INTEGER)"))
        c.execute(text("INSERT INTO codes (code) VALUES ('a'), ('b'), (NULL), ('c')"))
    monkeypatch.setattr(target, "_rowid_alias", lambda *args: True)  # as if checked before
    definition = Backfill(name="codes", table="codes", key="code", pending="v IS NULL", work="UPDATE codes "
                          "SET v = 1 WHERE code BETWEEN :first AND :last")  # fmt: skip
    app = App(db.engine, Registry.of(definition))
    run = app.run("codes")
    assert run.status is RunStatus.FAILED
    assert run.last_error is not None and "whose key (code) is NULL" in run.last_error, run.last_error


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_key_that_comes_to_allow_null_mid_run_is_refused_by_the_next_run(db: Database) -> None:
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE codes (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, v INTEGER)"))
        c.execute(text("INSERT INTO codes (id, code) VALUES (1, 'a'), (2, 'b')"))
    assert db.cli("start", "codes_by_code", app="tests.apps.nullable_key").returncode == 0
    with db.engine.begin() as c:
        c.execute(text("ALTER TABLE codes ALTER COLUMN code DROP NOT NULL"))
        c.execute(text("INSERT INTO codes (id, code) VALUES (3, NULL)"))
    result = db.cli("run", "codes_by_code", app="tests.apps.nullable_key")
    assert result.returncode == 2, result.stderr
    assert "key column(s) code of table 'codes' allow NULL" in one_error_line(result)
