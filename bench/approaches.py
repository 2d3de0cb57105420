"""The ways of doing the players/teams migration that run in one process: (a) one UPDATE, (b) the
ORM loop, (c) OFFSET-paginated batches, (d) this project inline. (e), through Celery workers, is
in ``bench.celery_cluster``.

Each runs in a child process of its own (``python -m bench.approaches NAME``), so its peak resident
set (VmHWM) is its own; the database URL arrives in the environment, the result leaves as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import DeclarativeBase, Session

from backfill import App, Registry
from backfill.database import make_engine
from bench.procstat import peak_rss_mb
from example_app.backfills import players_team_id
from example_app.models import players, teams

URL_ENV = "BENCH_DATABASE_URL"
ROOT = Path(__file__).resolve().parent.parent

INSERT_TEAMS = "INSERT INTO teams (name) SELECT DISTINCT team FROM players WHERE team IS NOT NULL"
SINGLE_UPDATE = "UPDATE players SET team_id = teams.id FROM teams WHERE teams.name = players.team"
# MySQL / MariaDB: the multi-table UPDATE.
SINGLE_UPDATE_MYSQL = "UPDATE players JOIN teams ON teams.name = players.team SET players.team_id = teams.id"


def is_mysql(engine: Engine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def single_update(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """(a) The teams in one statement, then every player in one UPDATE, in one transaction."""
    with engine.begin() as c:
        c.execute(text(INSERT_TEAMS))
        updated = c.execute(text(SINGLE_UPDATE_MYSQL if is_mysql(engine) else SINGLE_UPDATE)).rowcount
    return {"rows": updated}


class _Base(DeclarativeBase):
    pass


class Team(_Base):
    __table__ = teams


class Player(_Base):
    __table__ = players


def orm_loop(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """(b) The naive ORM migration: load every player, find or create its Team, set team_id, commit
    once. Teams found are kept in a dict, so each name is looked up in the database once."""
    with Session(engine) as session:
        known: dict[str, Team] = {}
        loaded = session.scalars(select(Player)).all()
        for player in loaded:
            name = player.team
            if name is None:
                continue
            team = known.get(name)
            if team is None:
                team = session.scalars(select(Team).where(Team.name == name)).first()
                if team is None:
                    team = Team(name=name)
                    session.add(team)
                    session.flush()
                known[name] = team
            player.team_id = team.id
        session.commit()
        return {"rows": len(loaded)}


OFFSET_PAGE = "SELECT id FROM players ORDER BY id LIMIT :n OFFSET :k"
OFFSET_TEAMS = (
    "INSERT INTO teams (name) SELECT DISTINCT p.team FROM players p "
    "WHERE p.id BETWEEN :lo AND :hi AND p.team_id IS NULL AND p.team IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM teams t WHERE t.name = p.team) ON CONFLICT (name) DO NOTHING"
)
OFFSET_UPDATE = (
    "UPDATE players SET team_id = t.id FROM teams t WHERE t.name = players.team "
    "AND players.id BETWEEN :lo AND :hi AND players.team_id IS NULL"
)

OFFSET_TEAMS_MYSQL = (
    "INSERT IGNORE INTO teams (name) SELECT DISTINCT p.team FROM players p "
    "WHERE p.id BETWEEN :lo AND :hi AND p.team_id IS NULL AND p.team IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM teams t WHERE t.name = p.team)"
)
OFFSET_UPDATE_MYSQL = (
    "UPDATE players JOIN teams t ON t.name = players.team SET players.team_id = t.id "
    "WHERE players.id BETWEEN :lo AND :hi AND players.team_id IS NULL"
)


def offset_batches(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """(c) Pages read with ``ORDER BY id LIMIT n OFFSET k``; each page's teams and players are
    updated (the same two statements as the project's definition) and committed.

    A page deep in the table costs in proportion to its offset (the scan walks every index entry
    before it, two per row already updated), so the whole run is quadratic in the table size. With
    ``--budget`` seconds, the walk stops there and the rest is predicted from a least-squares fit
    of this run's own page cost against its offset (``extrapolated`` says so)."""
    size = args.batch_size or players_team_id.tuning.batch_size
    with engine.connect() as c:
        total = c.execute(text("SELECT count(*) FROM players")).scalar_one()
        c.rollback()
    insert_teams, update_page = (
        (OFFSET_TEAMS_MYSQL, OFFSET_UPDATE_MYSQL) if is_mysql(engine) else (OFFSET_TEAMS, OFFSET_UPDATE)
    )
    durations: list[float] = []
    updated = 0
    offset = 0
    complete = False
    started = time.perf_counter()
    with engine.connect() as c:
        while not (args.budget and time.perf_counter() - started > args.budget):
            began = time.perf_counter()
            ids = c.execute(text(OFFSET_PAGE), {"n": size, "k": offset}).scalars().all()
            if not ids:
                c.rollback()
                complete = True
                break
            bounds = {"lo": ids[0], "hi": ids[-1]}
            c.execute(text(insert_teams), bounds)
            updated += c.execute(text(update_page), bounds).rowcount
            c.commit()
            durations.append((time.perf_counter() - began) * 1000)
            offset += size
    measured = time.perf_counter() - started
    pages = -(-total // size)
    result: dict[str, Any] = {"rows": updated, "batch_size": size, "batches": pages, "measured_seconds": measured}
    if complete or len(durations) >= pages:
        result["batch_durations_ms"] = durations
        return result
    # Page cost = alpha + beta * page index, fitted on the pages done; predict the rest.
    n = len(durations)
    mean_i, mean_t = (n - 1) / 2, statistics.fmean(durations)
    var = sum((i - mean_i) ** 2 for i in range(n)) or 1.0
    beta = max(0.0, sum((i - mean_i) * (t - mean_t) for i, t in enumerate(durations)) / var)
    alpha = mean_t - beta * mean_i
    predicted = [alpha + beta * i for i in range(n, pages)]
    result.update(
        extrapolated={
            "rows_done": updated,
            "pages_done": n,
            "pages": pages,
            "seconds_done": measured,
            "fit_ms": {"alpha": alpha, "beta_per_page": beta},
        },
        seconds=measured + sum(predicted) / 1000,
        batch_durations_ms=durations + predicted,
    )
    return result


def inline(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """(d) ``backfill.App(engine, registry).run(...)`` with the example definition."""
    app = App(engine, Registry.of(players_team_id, source="example_app.backfills"))
    run = app.run(players_team_id.name, batch_size=args.batch_size, parallelism=args.parallelism)
    return {"rows": run.rows_done, "run_id": run.id, "status": str(run.status), "error": run.last_error}


APPROACHES: dict[str, Callable[[Engine, argparse.Namespace], dict[str, Any]]] = {
    "a": single_update,
    "b": orm_loop,
    "c": offset_batches,
    "d": inline,
}


def run_child(name: str, url: str, out: Path, timeout: float, **options: float | None) -> dict[str, Any]:
    """Run approach ``name`` in a child process and return what it measured."""
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "bench.approaches", name, "--out", str(out)]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    subprocess.run(argv, cwd=ROOT, env={**os.environ, URL_ENV: url}, check=True, timeout=timeout)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("approach", choices=sorted(APPROACHES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None, help="(c): seconds to walk before extrapolating")
    args = parser.parse_args()
    engine = make_engine(os.environ[URL_ENV])
    try:
        started = time.perf_counter()
        result = APPROACHES[args.approach](engine, args)
        result.setdefault("seconds", time.perf_counter() - started)
    finally:
        engine.dispose()
    result["peak_rss_mb"] = peak_rss_mb()
    durations = result.get("batch_durations_ms")
    if durations:
        result["batch_median_ms"] = statistics.median(durations)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
