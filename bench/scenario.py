"""The benchmark's scenario: a database of its own (PostgreSQL or MariaDB), the players/teams
tables as they stand mid-deploy (``players.team`` filled, ``players.team_id`` NULL, ``teams``
empty), seeded on the server.

Every approach gets a fresh copy: the tables are dropped, recreated and reseeded with the same
random seed, then vacuumed, analysed and checkpointed (on MariaDB: analysed), so each one starts
from the same state.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import URL, Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from backfill.database import make_engine
from backfill.store import Store
from example_app.demo import CITIES, FIRST, MASCOTS, POSITIONS
from example_app.models import metadata

ADMIN_URL = os.environ.get("BACKFILL_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB_ADMIN_URL = os.environ.get(
    "BACKFILL_BENCH_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306/?charset=utf8mb4"
)
DIALECTS = ("postgresql", "mariadb")
DISPLAY = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}
TEAM_NAMES = [f"{city} {mascot}" for city in CITIES for mascot in MASCOTS]  # 500, as in the demo

SEED = text(
    """
    INSERT INTO players (name, position, team)
    SELECT (CAST(:first AS text[]))[1 + floor(random() * :n_first)::int] || ' ' || g,
           (CAST(:positions AS text[]))[1 + floor(random() * :n_positions)::int],
           (CAST(:teams AS text[]))[1 + floor(random() * :n_teams)::int]
    FROM generate_series(1, :rows) AS g
    """
)

# MariaDB: the Sequence engine's seq_1_to_N table (rows is an int, formatted in), names picked from
# JSON arrays; each RAND(seed) is a repeatable sequence of its own.
MARIADB_SEED = """
    INSERT INTO players (name, position, team)
    SELECT CONCAT(JSON_VALUE(:first, CONCAT('$[', FLOOR(RAND(42) * :n_first), ']')), ' ', seq),
           JSON_VALUE(:positions, CONCAT('$[', FLOOR(RAND(43) * :n_positions), ']')),
           JSON_VALUE(:teams, CONCAT('$[', FLOOR(RAND(44) * :n_teams), ']'))
    FROM seq_1_to_{rows} ORDER BY seq
"""


@dataclass(frozen=True)
class BenchDatabase:
    name: str
    url: URL
    dialect: str = "postgresql"

    @property
    def is_mariadb(self) -> bool:
        return self.dialect == "mariadb"

    @property
    def url_text(self) -> str:
        """The URL for child processes (the environment or argv, never printed)."""
        return self.url.render_as_string(hide_password=False)


def admin_url(dialect: str = "postgresql") -> str:
    return MARIADB_ADMIN_URL if dialect == "mariadb" else ADMIN_URL


def admin_engine(dialect: str = "postgresql") -> Engine:
    return create_engine(admin_url(dialect), isolation_level="AUTOCOMMIT")


@contextmanager
def bench_database(dialect: str = "postgresql") -> Iterator[BenchDatabase]:
    """``backfill_bench_<random>`` for the whole benchmark, dropped at the end whatever happens."""
    admin = admin_engine(dialect)
    name = f"backfill_bench_{secrets.token_hex(4)}"
    quoted = f"`{name}`" if dialect == "mariadb" else f'"{name}"'
    try:
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {quoted}"))
        yield BenchDatabase(name, make_url(admin_url(dialect)).set(database=name), dialect)
    finally:
        with admin.connect() as c:
            force = "" if dialect == "mariadb" else " WITH (FORCE)"
            c.execute(text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
        admin.dispose()


SCENARIOS = ("heavy", "light")
"""heavy: the example's schema, with the foreign key and the index on ``players.team_id`` (each
row written costs their upkeep); light: the same tables without them, where a batch's fixed cost
weighs more and the framework's own overhead shows."""


def reseed(db: BenchDatabase, rows: int, *, checkpoint_tables: bool = True, light: bool = False) -> float:
    """A fresh copy of the scenario; returns the seconds it took."""
    started = time.perf_counter()
    engine = make_engine(db.url)
    try:
        store = Store(engine)
        store.drop_tables()
        metadata.drop_all(engine)
        metadata.create_all(engine)
        if light:
            drop_team_id_index_and_foreign_key(engine)
        if checkpoint_tables:
            store.create_tables()
        params = {
            "first": FIRST,
            "n_first": len(FIRST),
            "positions": POSITIONS,
            "n_positions": len(POSITIONS),
            "teams": TEAM_NAMES,
            "n_teams": len(TEAM_NAMES),
            "rows": rows,
        }
        with engine.begin() as c:
            if db.is_mariadb:
                arrays = {k: json.dumps(v) for k, v in params.items() if isinstance(v, list)}
                c.execute(text(MARIADB_SEED.format(rows=int(rows))), {**params, **arrays})
            else:
                c.execute(text("SELECT setseed(0.42)"))
                c.execute(SEED, params)
    finally:
        engine.dispose()
    settle(db)
    return time.perf_counter() - started


def drop_team_id_index_and_foreign_key(engine: Engine) -> None:
    quote = engine.dialect.identifier_preparer.quote
    kind = "FOREIGN KEY" if engine.dialect.name in ("mysql", "mariadb") else "CONSTRAINT"
    foreign_keys = [fk["name"] for fk in inspect(engine).get_foreign_keys("players") if fk["name"]]
    with engine.begin() as c:
        for name in foreign_keys:
            c.execute(text(f"ALTER TABLE players DROP {kind} {quote(name)}"))
        for index in metadata.tables["players"].indexes:
            index.drop(c)


def settle(db: BenchDatabase) -> None:
    """Same starting state for every approach: no dead tuples, fresh statistics, no checkpoint due."""
    engine = create_engine(db.url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            if db.is_mariadb:  # InnoDB purges on its own; fresh statistics only
                c.execute(text("ANALYZE TABLE players, teams")).all()
                return
            c.execute(text("VACUUM ANALYZE"))
            c.execute(text("CHECKPOINT"))
    finally:
        engine.dispose()


def verify(db: BenchDatabase) -> dict[str, int]:
    """The result on the data: every player points at the team with its old name."""
    differs = "NOT (t.name <=> p.team)" if db.is_mariadb else "t.name IS DISTINCT FROM p.team"
    engine = make_engine(db.url)
    try:
        with engine.connect() as c:
            players = c.execute(text("SELECT count(*) FROM players")).scalar_one()
            missing = c.execute(text("SELECT count(*) FROM players WHERE team_id IS NULL")).scalar_one()
            wrong = c.execute(
                text(
                    "SELECT count(*) FROM players p LEFT JOIN teams t ON t.id = p.team_id "
                    f"WHERE p.team_id IS NOT NULL AND {differs}"
                )
            ).scalar_one()
            teams = c.execute(text("SELECT count(*) FROM teams")).scalar_one()
            names = c.execute(text("SELECT count(DISTINCT team) FROM players")).scalar_one()
    finally:
        engine.dispose()
    return {"players": players, "missing": missing, "wrong": wrong, "teams": teams, "distinct_names": names}


def verified(counts: dict[str, int], rows: int, done: int | None = None) -> bool:
    """Every player points at its team; with ``done`` below ``rows`` (a walk cut short), exactly
    the players not done are left, and no team is missing for those done."""
    if done is not None and done < rows:
        return counts["players"] == rows and counts["missing"] == rows - done and counts["wrong"] == 0
    return (
        counts["players"] == rows
        and counts["missing"] == 0
        and counts["wrong"] == 0
        and counts["teams"] == counts["distinct_names"]
    )
