"""What a user sees when something goes wrong: what an error keeps, and what it must not."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import make_url, select, text

from backfill import Backfill, Tuning, tables
from backfill.errors import TargetError
from backfill.status import BatchStatus, RunStatus
from tests.apps.counters import contacts
from tests.conftest import Database
from tests.helpers import one_error_line


def test_no_row_data_in_errors_unless_asked(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed batch keeps the error's class and constraint, not the customer's data the
    database adds to it (PostgreSQL's DETAIL, the value MySQL quotes): not on the batch row, not
    in the events, the log or status. BACKFILL_ERROR_DETAIL=full keeps everything."""
    with db.engine.begin() as connection:
        connection.execute(contacts.insert(), [{"id": i, "email": f"customer{i}@example.com"} for i in range(1, 11)])
    monkeypatch.setenv("BACKFILL_LOG_FORMAT", "json")
    ran = db.cli("run", "contacts_merged", "--no-progress")
    assert ran.returncode == 1
    shown = ran.stdout + ran.stderr + db.cli("status", "contacts_merged").stdout
    shown += db.cli("status", "contacts_merged", "--json").stdout
    with db.engine.connect() as connection:
        stored = [*connection.execute(select(tables.batches.c.error)).scalars()]
        stored += [*connection.execute(select(tables.events.c.error)).scalars()]
        stored += [*connection.execute(select(tables.events.c.note)).scalars()]
    errors = [e for e in stored if e]
    assert errors and any("contacts" in e or "email" in e for e in errors), errors
    assert "@example.com" not in shown + "".join(errors), shown

    assert db.cli("retry", "contacts_merged").returncode == 0
    monkeypatch.setenv("BACKFILL_ERROR_DETAIL", "full")
    full = db.cli("run", "contacts_merged", "--no-progress")
    assert full.returncode == 1
    detail = json.loads(db.cli("status", "contacts_merged", "--json").stdout)
    if db.dialect != "sqlite":  # SQLite names the column, never the value
        assert "merged.customer@example.com" in detail["last_error"], detail["last_error"]


def no_checkpoint_tables(db: Database) -> bool:
    return not any(sa_inspect(db.engine).has_table(t.name) for t in tables.metadata.sorted_tables)


def test_a_table_of_our_name_that_is_not_ours_is_refused(db: Database) -> None:
    """An unrelated ``backfill_runs`` is neither reported "ready" nor read as checkpoints."""
    db.app().store.drop_tables()
    with db.engine.begin() as connection:
        connection.execute(text("CREATE TABLE backfill_runs (id INTEGER PRIMARY KEY, note VARCHAR(20))"))
    for command in ("init-db", "status"):
        result = db.cli(command)
        assert result.returncode == 2, result.stderr
        assert "a table named 'backfill_runs' exists but is not one of backfill's checkpoint tables" in one_error_line(
            result
        )
    assert not sa_inspect(db.engine).has_table("backfill_batches")
    assert [c["name"] for c in sa_inspect(db.engine).get_columns("backfill_runs")] == ["id", "note"]


@contextlib.contextmanager
def a_role_with(db: Database, grants: str) -> Iterator[str]:
    """The URL of a login of its own for this test, granted ``grants`` on the test database."""
    name = f"bf_role_{secrets.token_hex(3)}"
    url = make_url(db.url)
    quoted = f'"{name}"' if db.dialect == "postgresql" else f"'{name}'@'%'"
    with db.engine.begin() as connection:
        connection.execute(text(f"CREATE USER {quoted}"))
        where = f"ON SCHEMA public TO {quoted}" if db.dialect == "postgresql" else f"ON `{url.database}`.* TO {quoted}"
        if grants:
            connection.execute(text(f"GRANT {grants} {where}"))
    try:
        yield url.set(username=name, password=None).render_as_string(hide_password=False)
    finally:
        with db.engine.begin() as connection:
            if db.dialect == "postgresql":
                connection.execute(text(f"DROP OWNED BY {quoted}"))
            connection.execute(text(f"DROP USER {quoted}"))


def as_role(db: Database, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return Database(url, db.engine).cli(*args)


def test_init_db_without_the_privileges_leaves_nothing_half_built(db: Database) -> None:
    """A role that may not create tables gets the database's refusal in one line, exit 1, and
    no checkpoint table is left behind."""
    if db.dialect == "sqlite":
        pytest.skip("SQLite has no roles")
    db.app().store.drop_tables()
    grants = "SELECT, INSERT, UPDATE, DELETE" if db.dialect == "mariadb" else ""
    with a_role_with(db, grants) as url:
        result = as_role(db, url, "init-db")
        assert result.returncode == 1, result.stderr
        line = one_error_line(result)
        assert "the database refused" in line and "grant" in line, line
        assert no_checkpoint_tables(db)
    assert db.cli("init-db").returncode == 0
    assert not no_checkpoint_tables(db)


@pytest.mark.parametrize("db", ["mariadb"], indirect=True)
def test_init_db_needs_create_but_neither_index_nor_drop_on_mariadb(db: Database) -> None:
    """Each table is created with its indexes in one CREATE TABLE: a role with CREATE alone gets
    complete tables, and no failure can leave a table behind that the role could not drop."""
    db.app().store.drop_tables()
    with a_role_with(db, "CREATE, SELECT, INSERT, UPDATE, DELETE, REFERENCES") as url:
        result = as_role(db, url, "init-db")
        assert result.returncode == 0, result.stderr
        inspector = sa_inspect(db.engine)
        for table in tables.metadata.sorted_tables:
            names = {index["name"] for index in inspector.get_indexes(table.name)}
            assert {str(index.name) for index in table.indexes} <= names, (table.name, names)
        assert as_role(db, url, "status").returncode == 0


def test_a_role_that_cannot_read_the_checkpoints_is_told_so(db: Database) -> None:
    if db.dialect == "sqlite":
        pytest.skip("SQLite has no roles")
    with a_role_with(db, "USAGE" if db.dialect == "postgresql" else "CREATE") as url:
        result = as_role(db, url, "status")
        assert result.returncode == 1, result.stderr
        assert "the database refused" in one_error_line(result)


def test_checkpoint_tables_of_an_older_backfill_are_brought_up_to_date(db: Database) -> None:
    """A column added to the checkpoint tables since they were created is named by every
    command, and ``init-db`` adds it in place, keeping the runs already recorded."""
    assert db.cli("start", "counter_int").returncode == 0
    with db.engine.begin() as connection:
        for column in ("started_by", "params"):
            connection.execute(text(f"ALTER TABLE backfill_runs DROP COLUMN {column}"))
    status = db.cli("status")
    assert status.returncode == 2
    assert (
        "created by an older backfill (backfill_runs lacks started_by, params): run `backfill init-db`"
        in one_error_line(status)
    )
    assert db.cli("init-db").returncode == 0
    shown = json.loads(db.cli("status", "--json").stdout)
    assert [r["name"] for r in shown] == ["counter_int"] and shown[0]["started_by"] is None
    assert db.cli("cancel", "counter_int").returncode == 0
    assert db.cli("start", "counter_int", "--by", "alice (deploy 42)").returncode == 0
    assert json.loads(db.cli("status", "counter_int", "--json").stdout)["started_by"] == "alice (deploy 42)"
    assert db.cli("cancel", "counter_int").returncode == 0
    assert db.cli("start", "counter_from", "--param", "low=3").returncode == 0
    assert json.loads(db.cli("status", "counter_from", "--json").stdout)["params"] == {"low": 3, "step": 1}


@pytest.mark.timeout(90)
def test_a_batch_whose_commit_fails_fails_alone_and_nothing_waits_for_it(db: Database) -> None:
    """A deferred foreign key the work breaks fails the batch at COMMIT (SQLite then keeps its
    transaction and write lock open; PostgreSQL rolls back): the batch is failed with the
    database's words, every other batch is done once, and a retry after the fix finishes."""
    if db.dialect == "mariadb":
        pytest.skip("MariaDB checks foreign keys at each statement, never at COMMIT")
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE owners (id INTEGER PRIMARY KEY)"))
        c.execute(text("INSERT INTO owners (id) VALUES (1)"))
        c.execute(
            text(
                "CREATE TABLE pets (id INTEGER PRIMARY KEY, owner INTEGER REFERENCES owners (id) "
                "DEFERRABLE INITIALLY DEFERRED, counter INTEGER NOT NULL DEFAULT 0)"
            )
        )
        c.execute(text("INSERT INTO pets (id, owner) VALUES " + ", ".join(f"({i}, 1)" for i in range(1, 31))))
    definition = Backfill(
        name="pets",
        table="pets",
        key="id",
        work="UPDATE pets SET counter = counter + 1, owner = CASE WHEN id = 7 THEN 2 ELSE owner END "
        "WHERE id BETWEEN :first AND :last",
        tuning=Tuning(batch_size=5, target_batch_seconds=0, max_attempts=2),
    )
    app = db.app(definition)
    run = app.run("pets")
    assert run.status is RunStatus.FAILED
    [failed] = app.store.batches_of(run.id, BatchStatus.FAILED)
    assert "foreign key" in (failed.error or "").lower() and failed.first_key == [6], failed
    with db.engine.connect() as c:
        counts = {int(k): int(v) for k, v in c.execute(text("SELECT id, counter FROM pets"))}
    assert {k for k, v in counts.items() if v == 0} == set(range(6, 11))
    assert set(counts.values()) == {0, 1}
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO owners (id) VALUES (2)"))
    app.retry("pets")
    assert app.run("pets").status is RunStatus.FINISHED
    with db.engine.connect() as c:
        assert set(c.execute(text("SELECT counter FROM pets")).scalars()) == {1}


def test_a_key_unique_only_in_part_of_the_table_is_refused(db: Database) -> None:
    """A partial unique index (``WHERE ...``) leaves the rest of the table free to repeat the
    key: batches over it could take a row twice or skip one. A full unique index is enough."""
    if db.dialect == "mariadb":
        pytest.skip("MariaDB has no partial indexes")
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE tickets (id INTEGER PRIMARY KEY, code INTEGER NOT NULL, open INTEGER)"))
        c.execute(text("CREATE UNIQUE INDEX tickets_open_code ON tickets (code) WHERE open = 1"))
    app = db.app(Backfill(name="tickets", table="tickets", key="code", work="UPDATE tickets SET open = 0"))
    with pytest.raises(TargetError, match=r"key \(code\) of table 'tickets' is not unique"):
        app.start("tickets")
    assert app.store.latest_run("tickets") is None
    with db.engine.begin() as c:
        c.execute(text("CREATE UNIQUE INDEX tickets_code ON tickets (code)"))
    app = db.app(Backfill(name="tickets", table="tickets", key="code", work="UPDATE tickets SET open = 0"))
    assert app.start("tickets").status is RunStatus.RUNNING
