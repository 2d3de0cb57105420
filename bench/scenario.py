"""The benchmark's scenario: a database of its own, the players/teams tables as they stand mid-deploy
(``players.team`` filled, ``players.team_id`` NULL, ``teams`` empty), seeded on the server.

Every approach gets a fresh copy: the tables are dropped, recreated and reseeded with the same
random seed, then vacuumed, analysed and checkpointed, so each one starts from the same state.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import URL, Engine, create_engine, text
from sqlalchemy.engine import make_url

from backfill.database import make_engine
from backfill.store import Store
from example_app.demo import CITIES, FIRST, MASCOTS, POSITIONS
from example_app.models import metadata

ADMIN_URL = os.environ.get("BACKFILL_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
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


@dataclass(frozen=True)
class BenchDatabase:
    name: str
    url: URL

    @property
    def url_text(self) -> str:
        """The URL for child processes (the environment or argv, never printed)."""
        return self.url.render_as_string(hide_password=False)


def admin_engine() -> Engine:
    return create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """``backfill_bench_<random>`` for the whole benchmark, dropped at the end whatever happens."""
    admin = admin_engine()
    name = f"backfill_bench_{secrets.token_hex(4)}"
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        yield BenchDatabase(name, make_url(ADMIN_URL).set(database=name))
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def reseed(db: BenchDatabase, rows: int, *, checkpoint_tables: bool = True) -> float:
    """A fresh copy of the scenario; returns the seconds it took."""
    started = time.perf_counter()
    engine = make_engine(db.url)
    try:
        store = Store(engine)
        store.drop_tables()
        metadata.drop_all(engine)
        metadata.create_all(engine)
        if checkpoint_tables:
            store.create_tables()
        with engine.begin() as c:
            c.execute(text("SELECT setseed(0.42)"))
            c.execute(
                SEED,
                {
                    "first": FIRST,
                    "n_first": len(FIRST),
                    "positions": POSITIONS,
                    "n_positions": len(POSITIONS),
                    "teams": TEAM_NAMES,
                    "n_teams": len(TEAM_NAMES),
                    "rows": rows,
                },
            )
    finally:
        engine.dispose()
    settle(db)
    return time.perf_counter() - started


def settle(db: BenchDatabase) -> None:
    """Same starting state for every approach: no dead tuples, fresh statistics, no checkpoint due."""
    engine = create_engine(db.url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(text("VACUUM ANALYZE"))
            c.execute(text("CHECKPOINT"))
    finally:
        engine.dispose()


def verify(db: BenchDatabase) -> dict[str, int]:
    """The result on the data: every player points at the team with its old name."""
    engine = make_engine(db.url)
    try:
        with engine.connect() as c:
            players = c.execute(text("SELECT count(*) FROM players")).scalar_one()
            missing = c.execute(text("SELECT count(*) FROM players WHERE team_id IS NULL")).scalar_one()
            wrong = c.execute(
                text(
                    "SELECT count(*) FROM players p LEFT JOIN teams t ON t.id = p.team_id "
                    "WHERE p.team_id IS NOT NULL AND t.name IS DISTINCT FROM p.team"
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
