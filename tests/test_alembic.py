"""The Alembic operations and the example migration chain, driven through Alembic's own API on
SQLite, PostgreSQL and MariaDB, checked on the data and on the schema."""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.util import CommandError
from sqlalchemy import Integer, inspect, text

from backfill import App, Registry, RunStatus
from backfill.alembic_ops import NullValuesError, OfflineModeError, UnfinishedBackfillError
from backfill.store import Store
from example_app import backfills
from tests.conftest import Database

ROOT = Path(__file__).resolve().parent.parent
TEAM_NAMES = [f"{city} {mascot}" for city in ("Austin", "Boston", "Denver", "Miami") for mascot in ("Bears", "Owls")]
ROWS = 2500  # two batches of players_team_id, with a remainder


def alembic(db: Database, *, x: list[str] | None = None, buffer: io.StringIO | None = None) -> Config:
    config = Config(str(ROOT / "alembic.ini"), output_buffer=buffer, cmd_opts=Namespace(x=x) if x else None)
    config.attributes["database_url"] = db.url
    config.attributes["configure_logger"] = False
    return config


def seed_players(db: Database) -> dict[int, str]:
    """Players at revision 1, each with a team name; returns the name by player id."""
    rng = random.Random(11)
    rows = [
        {"name": f"player {i}", "position": rng.choice(["forward", "defender"]), "team": rng.choice(TEAM_NAMES)}
        for i in range(ROWS)
    ]
    with db.engine.begin() as connection:
        connection.execute(text("INSERT INTO players (name, position, team) VALUES (:name, :position, :team)"), rows)
        return dict(connection.execute(text("SELECT id, team FROM players")).all())


def revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def columns(db: Database, table: str) -> dict[str, bool]:
    """Column name -> nullable."""
    return {c["name"]: c["nullable"] for c in inspect(db.engine).get_columns(table)}


def check_constraints(db: Database) -> list[str]:
    return [c["name"] for c in inspect(db.engine).get_check_constraints("players")]


def test_the_chain_up_and_down_on_an_empty_database(empty: Database) -> None:
    db = empty
    command.upgrade(alembic(db), "head")
    assert revision(db) == "0005_drop_players_team"
    assert {"players", "teams", "backfill_runs", "backfill_batches"} <= set(inspect(db.engine).get_table_names())
    assert columns(db, "players") == {"id": False, "name": False, "position": False, "team_id": False}
    assert Store(db.engine).latest_run("players_team_id").status is RunStatus.FINISHED  # type: ignore[union-attr]

    command.downgrade(alembic(db), "base")
    assert revision(db) is None
    assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}


def test_the_chain_with_rows_moves_every_team_name_and_back(empty: Database) -> None:
    db = empty
    command.upgrade(alembic(db), "0001_players")
    team_of = seed_players(db)
    command.upgrade(alembic(db), "0003_teams")
    validated = "SELECT convalidated FROM pg_constraint WHERE conname = 'fk_players_team_id_teams'"
    if db.dialect == "postgresql":  # added NOT VALID at deploy N, validated at N+1
        assert db.scalar(validated) is False
    command.upgrade(alembic(db), "head")
    if db.dialect == "postgresql":
        assert db.scalar(validated) is True

    with db.engine.connect() as connection:
        linked = dict(
            connection.execute(text("SELECT p.id, t.name FROM players p JOIN teams t ON t.id = p.team_id")).all()
        )
        teams = connection.execute(text("SELECT count(*) FROM teams")).scalar_one()
    assert linked == team_of
    assert teams == len(set(team_of.values()))
    assert columns(db, "players")["team_id"] is False
    assert "team" not in columns(db, "players")
    assert check_constraints(db) == []

    command.downgrade(alembic(db), "0003_teams")
    assert revision(db) == "0003_teams"
    with db.engine.connect() as connection:
        restored = dict(connection.execute(text("SELECT id, team FROM players")).all())
    assert restored == team_of
    assert columns(db, "players")["team_id"] is True

    command.downgrade(alembic(db), "base")
    assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}

    # Up again after a full round trip: a fresh run is queued and finalized.
    command.upgrade(alembic(db), "0001_players")
    seed_players(db)
    command.upgrade(alembic(db), "head")
    assert columns(db, "players")["team_id"] is False


def test_ensure_without_finalize_fails_with_the_command_and_changes_nothing(empty: Database) -> None:
    db = empty
    command.upgrade(alembic(db), "0001_players")
    seed_players(db)
    command.upgrade(alembic(db), "0003_teams")

    with pytest.raises(UnfinishedBackfillError) as failure:
        command.upgrade(alembic(db, x=["finalize=false"]), "head")
    message = str(failure.value)
    assert "\n" not in message
    assert "players_team_id" in message and "is pending" in message
    assert "`backfill run players_team_id`" in message and "`backfill status players_team_id`" in message

    assert revision(db) == "0003_teams"
    assert columns(db, "players")["team_id"] is True
    assert db.scalar("SELECT count(team_id) FROM players") == 0
    assert check_constraints(db) == []
    assert db.scalar("SELECT started_by FROM backfill_runs") == "migration"

    # The command it names does finish it, and then the revision passes without finalizing.
    store = Store(db.engine)
    App(db.engine, Registry.from_module(backfills)).run("players_team_id")
    command.upgrade(alembic(db, x=["finalize=false"]), "head")
    assert columns(db, "players")["team_id"] is False
    assert store.latest_run("players_team_id").status is RunStatus.FINISHED  # type: ignore[union-attr]


def test_add_not_null_refuses_while_nulls_remain(empty: Database) -> None:
    """The backfill finished, then old code wrote rows without a team_id."""
    db = empty
    command.upgrade(alembic(db), "0001_players")
    seed_players(db)
    command.upgrade(alembic(db), "0003_teams")
    App(db.engine, Registry.from_module(backfills)).run("players_team_id")
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE players SET team_id = NULL WHERE id % 10 = 0"))
    nulls = ROWS // 10

    with pytest.raises(NullValuesError) as failure:
        command.upgrade(alembic(db), "head")
    message = str(failure.value)
    assert f"{nulls:,} row(s) are NULL" in message
    assert "players.team_id" in message and "backfill 'players_team_id'" in message
    assert "`backfill run players_team_id`" in message

    assert revision(db) == "0003_teams"
    assert columns(db, "players")["team_id"] is True
    assert check_constraints(db) == []


def test_queue_joins_the_migration_transaction_and_does_not_queue_twice(
    empty: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = empty
    monkeypatch.setenv("BACKFILL_APP", "example_app.backfills")
    command.upgrade(alembic(db), "0003_teams")
    store = Store(db.engine)
    queued = store.active_run("players_team_id")
    assert queued is not None and queued.status is RunStatus.PENDING

    caplog.set_level(logging.INFO, logger="backfill.alembic")
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        with context.begin_transaction():
            Operations(context).queue_backfill("players_team_id")
    assert "already has an active run" in caplog.text
    assert db.scalar("SELECT count(*) FROM backfill_runs") == 1

    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        op = Operations(context)
        transaction = connection.begin()
        op.forget_backfill("players_team_id")
        op.queue_backfill("players_team_id", batch_size=100)
        assert connection.execute(text("SELECT batch_size FROM backfill_runs")).scalar_one() == 100
        transaction.rollback()
    assert store.active_run("players_team_id") == queued


def test_offline_sql(empty: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    db = empty
    if db.dialect == "sqlite":
        buffer = io.StringIO()
        command.upgrade(alembic(db, buffer=buffer), "0002_backfill_tables", sql=True)
        assert "CREATE TABLE backfill_runs" in buffer.getvalue()
        # Batch mode must read the table it copies: Alembic itself refuses, naming why.
        with pytest.raises(CommandError, match="batch mode with dialect sqlite requires a live database"):
            command.upgrade(alembic(db, buffer=io.StringIO()), "head", sql=True)
        # The operations on their own: the queue renders, the rest refuse in one line.
        monkeypatch.setenv("BACKFILL_APP", "example_app.backfills")
        buffer = io.StringIO()
        op = Operations(
            MigrationContext.configure(
                dialect_name="sqlite", opts={"as_sql": True, "literal_binds": True, "output_buffer": buffer}
            )
        )
        op.queue_backfill("players_team_id")
        with pytest.raises(OfflineModeError, match=r"ensure_backfill_finished.*run this revision online"):
            op.ensure_backfill_finished("players_team_id")
        with pytest.raises(OfflineModeError, match=r"add_not_null.*run this revision online"):
            op.add_not_null("players", "team_id")
        script = buffer.getvalue()
        command.upgrade(alembic(db), "0003_teams")
        with db.engine.begin() as connection:
            connection.execute(text("DELETE FROM backfill_runs"))
            connection.connection.driver_connection.executescript(script)  # type: ignore[union-attr]
    elif db.dialect in ("mysql", "mariadb"):
        # No statement outside a stored program can stop a MySQL script: the gate refuses.
        with pytest.raises(OfflineModeError, match=r"ensure_backfill_finished.*run this revision online"):
            command.upgrade(alembic(db, buffer=io.StringIO()), "head", sql=True)
        buffer = io.StringIO()
        command.upgrade(alembic(db, buffer=buffer), "0003_teams", sql=True)
        script = buffer.getvalue()
        assert "INSERT INTO backfill_runs" in script and "WHERE NOT (EXISTS" in script
        raw = db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            for statement in script.split(";\n"):
                if statement.strip():
                    cursor.execute(statement)
            raw.commit()
        finally:
            raw.close()
        assert revision(db) == "0003_teams"
        buffer = io.StringIO()
        op = Operations(
            MigrationContext.configure(
                dialect_name=db.dialect, opts={"as_sql": True, "literal_binds": True, "output_buffer": buffer}
            )
        )
        op.add_not_null("players", "team_id", existing_type=Integer())
        assert "ALTER TABLE players MODIFY team_id INTEGER NOT NULL, ALGORITHM=INPLACE, LOCK=NONE" in buffer.getvalue()
    else:
        buffer = io.StringIO()
        command.upgrade(alembic(db, buffer=buffer), "head", sql=True)
        script = buffer.getvalue()
        for expected in (
            "INSERT INTO backfill_runs",
            "WHERE NOT (EXISTS",
            "DO $$",
            "RAISE EXCEPTION 'backfill players_team_id is not finished",
            "CHECK (team_id IS NOT NULL) NOT VALID",
            "COMMIT;\n\nALTER TABLE players VALIDATE CONSTRAINT players_team_id_not_null;\n\nBEGIN;",
            "ALTER TABLE players ALTER COLUMN team_id SET NOT NULL",
            "ALTER TABLE players DROP CONSTRAINT players_team_id_not_null",
            "ALTER TABLE players DROP COLUMN team",
            "FOREIGN KEY(team_id) REFERENCES teams (id) NOT VALID",
            "COMMIT;\n\nCREATE INDEX CONCURRENTLY ix_players_team_id ON players (team_id);\n\nBEGIN;",
            "ALTER TABLE players VALIDATE CONSTRAINT fk_players_team_id_teams",
        ):
            assert expected in script
        # The script runs as written, by psql as a DBA runs it: up to the check, which stops it
        # while the run is pending.
        ran = subprocess.run(
            ["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-q", "-d", db.engine.url.set(drivername="postgresql")
             .render_as_string(hide_password=False)],
            input=script, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert ran.returncode != 0 and "backfill players_team_id is not finished" in ran.stderr, ran.stderr
        assert revision(db) == "0003_teams"
        with pytest.raises(OfflineModeError, match=r"run_backfill.*cannot be written as SQL"):
            command.downgrade(alembic(db, buffer=io.StringIO()), "head:0004_team_id_not_null", sql=True)

    run = Store(db.engine).active_run("players_team_id")
    assert run is not None and run.status is RunStatus.PENDING and run.key_columns == ("id",)
    assert run.tuning.batch_size == 2000 and run.started_by == "migration"  # as an online queue says
    assert db.scalar("SELECT count(*) FROM backfill_runs") == 1


def test_add_not_null_does_not_block_writers_during_validation(empty: Database) -> None:
    db = empty
    if db.dialect != "postgresql":
        pytest.skip("the NOT VALID / VALIDATE sequence is PostgreSQL's")
    rows = 300_000
    with db.engine.begin() as connection:
        connection.execute(text("CREATE TABLE wide (id integer PRIMARY KEY, v integer, pad text)"))
        connection.execute(
            text("INSERT INTO wide SELECT g, g, repeat('x', 40) FROM generate_series(1, :rows) g"), {"rows": rows}
        )
    with db.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE wide"))

    stop = threading.Event()
    writes: list[tuple[float, float]] = []

    def writer() -> None:
        rng = random.Random(5)
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            while not stop.is_set():
                started = time.perf_counter()
                connection.execute(text("UPDATE wide SET v = v + 1 WHERE id = :id"), {"id": rng.randint(1, rows)})
                writes.append((started, time.perf_counter() - started))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        began = time.perf_counter()
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection)
            with context.begin_transaction():
                Operations(context).add_not_null("wide", "v")
        took = time.perf_counter() - began
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()

    during = [latency for started, latency in writes if began <= started <= began + took]
    worst = max(latency for _, latency in writes)
    print(
        f"\nadd_not_null on {rows:,} rows took {took * 1000:.0f} ms; the writer did {len(during)} single-row "
        f"UPDATEs meanwhile, max latency {worst * 1000:.1f} ms"
    )
    assert columns(db, "wide")["v"] is False
    assert [c["name"] for c in inspect(db.engine).get_check_constraints("wide")] == []
    assert during, "the writer made no progress while the column was being made NOT NULL"
    assert worst < 1.0


def test_the_migration_finishes_inline_only_what_is_small(empty: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto (the default) runs the rest inline only up to BACKFILL_FINALIZE_MAX_ROWS rows and
    refuses above, naming the rows left and the command; never always refuses; always always
    finishes. The choice is read by the operation itself, from -x or the environment."""
    db = empty
    command.upgrade(alembic(db), "0001_players")
    seed_players(db)
    command.upgrade(alembic(db), "0003_teams")

    for refused in (["backfill_finalize_max_rows=100"], ["backfill_finalize=never"]):
        with pytest.raises(UnfinishedBackfillError) as failure:
            command.upgrade(alembic(db, x=refused), "head")
        assert isinstance(failure.value, CommandError)  # Alembic's command line: FAILED: <message>
        assert "`backfill run players_team_id`" in str(failure.value)
        assert revision(db) == "0003_teams" and columns(db, "players")["team_id"] is True
    with pytest.raises(UnfinishedBackfillError, match=f"about {ROWS:,} rows are left, more than the 100 a migration"):
        command.upgrade(alembic(db, x=["backfill_finalize_max_rows=100"]), "head")
    monkeypatch.setenv("BACKFILL_FINALIZE", "sometimes")
    with pytest.raises(CommandError, match="BACKFILL_FINALIZE must be one of auto, always, never: got 'sometimes'"):
        command.upgrade(alembic(db), "head")
    assert db.scalar("SELECT count(team_id) FROM players") == 0

    monkeypatch.setenv("BACKFILL_FINALIZE", "always")
    command.upgrade(alembic(db, x=["backfill_finalize_max_rows=100"]), "head")
    assert columns(db, "players")["team_id"] is False
    assert db.scalar("SELECT count(team_id) FROM players") == ROWS


FAILED = "ERROR [alembic.util.messaging]"  # the example's alembic.ini sets up logging


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_alembic_prints_an_operations_mistake_as_one_failed_line(empty: Database, tmp_path: Path) -> None:
    """Alembic's own command line, on a revision that names a backfill that does not exist and
    on one that is too early: its one-line error (``FAILED: <message>``, or with logging set up
    by alembic.ini, ``ERROR [alembic.util.messaging] <message>``), no traceback, nothing changed."""
    db = empty
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "migrations" / "versions" / "0006_typo.py").write_text(
        'from alembic import op\n\nrevision = "0006_typo"\ndown_revision = "0005_drop_players_team"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        'def upgrade() -> None:\n    op.ensure_backfill_finished("players_team_idd")\n\n\n'
        "def downgrade() -> None:\n    pass\n"
    )
    env = {**os.environ, "BACKFILL_DATABASE_URL": db.url, "PYTHONPATH": str(ROOT)}

    def upgrade(target: str, *x: str) -> subprocess.CompletedProcess[str]:
        args = [str(Path(sys.executable).with_name("alembic")), *(f"-x{a}" for a in x), "upgrade", target]
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert upgrade("0003_teams").returncode == 0
    seed = upgrade("0004_team_id_not_null", "backfill_finalize=never")
    assert seed.returncode != 0 and "Traceback" not in seed.stderr
    assert f"{FAILED} backfill 'players_team_id' is not finished" in seed.stderr, seed.stderr
    assert revision(db) == "0003_teams"

    assert upgrade("0005_drop_players_team").returncode == 0
    typo = upgrade("head")
    assert typo.returncode != 0 and "Traceback" not in typo.stderr
    assert f"{FAILED} unknown backfill 'players_team_idd'" in typo.stderr, typo.stderr
    assert revision(db) == "0005_drop_players_team"
