"""``make demo``: the players/teams backfill on an embedded SQLite database, end to end.

It builds 200,000 players whose team is a free-text name, runs the backfill inline with a live
progress bar, then checks the data itself: every player points at the team with its old name.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from sqlalchemy import Engine, func, insert, select

from backfill import App, Registry
from backfill.database import make_engine
from backfill.display import ProgressBar
from backfill.status import RunStatus
from example_app.backfills import players_team_id
from example_app.models import metadata, players, teams

CITIES = [
    "Austin", "Boston", "Chicago", "Denver", "Detroit", "Houston", "Miami", "Oakland", "Phoenix", "Portland",
    "Seattle", "Tampa", "Toronto", "Dallas", "Atlanta", "Memphis", "Orlando", "Cleveland", "Buffalo", "Omaha",
    "Raleigh", "Tulsa", "Fresno", "Reno", "Boise",
]  # fmt: skip
MASCOTS = [
    "Bears", "Comets", "Falcons", "Giants", "Hawks", "Jets", "Kings", "Lions", "Mariners", "Owls",
    "Pilots", "Rangers", "Rockets", "Sharks", "Stars", "Tigers", "Titans", "Vipers", "Wolves", "Wings",
]  # fmt: skip
POSITIONS = ["goalkeeper", "defender", "midfielder", "forward"]
FIRST = ["Alex", "Sam", "Jo", "Max", "Kim", "Lee", "Ana", "Ben", "Eva", "Ian", "Mia", "Noa", "Raf", "Zoe"]


def seed(engine: Engine, rows: int, rng: random.Random) -> int:
    """Create the schema as it stands mid-deploy and fill ``players``; returns the team count."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    names = [f"{city} {mascot}" for city in CITIES for mascot in MASCOTS]  # 500 teams
    chunk = 20_000
    with engine.begin() as connection:
        for start in range(0, rows, chunk):
            connection.execute(
                insert(players),
                [
                    {
                        "name": f"{rng.choice(FIRST)} {i}",
                        "position": rng.choice(POSITIONS),
                        "team": rng.choice(names),
                    }
                    for i in range(start, min(rows, start + chunk))
                ],
            )
    return len(names)


def verify(engine: Engine) -> tuple[int, int]:
    """Check the result on the data: no NULL team_id, and every team_id names the old team."""
    with engine.connect() as connection:
        missing = connection.execute(select(func.count()).where(players.c.team_id.is_(None))).scalar_one()
        wrong = connection.execute(
            select(func.count())
            .select_from(players.outerjoin(teams, teams.c.id == players.c.team_id))
            .where((teams.c.name.is_(None)) | (teams.c.name != players.c.team))
        ).scalar_one()
        team_count = connection.execute(select(func.count()).select_from(teams)).scalar_one()
        distinct_names = connection.execute(select(func.count(players.c.team.distinct()))).scalar_one()
    if missing or wrong or team_count != distinct_names:
        raise SystemExit(
            f"verification FAILED: {missing} players without team_id, {wrong} pointing at the wrong team, "
            f"{team_count} teams for {distinct_names} distinct names"
        )
    return team_count, distinct_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--database", type=Path, default=Path("demo.sqlite3"))
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)

    for suffix in ("", "-wal", "-shm"):
        Path(f"{args.database}{suffix}").unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{args.database}")
    started = time.perf_counter()
    team_names = seed(engine, args.rows, random.Random(7))
    print(f"seeded {args.rows:,} players across {team_names} team names in {time.perf_counter() - started:.1f}s")

    app = App(engine, Registry.of(players_team_id, source="example_app.backfills"))
    app.init_db()
    started = time.perf_counter()
    with ProgressBar(players_team_id.name) as bar:
        run = app.run(players_team_id.name, on_progress=bar.update, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    if run.status is not RunStatus.FINISHED:
        print(f"backfill ended {run.status}: {run.last_error}", file=sys.stderr)
        return 1

    teams_made, _ = verify(engine)
    print(f"verified: all {args.rows:,} players point at their team; {teams_made} teams created; no NULL team_id")
    print(
        f"summary: {run.rows_done:,} rows, {run.batches_done} batches, {seconds:.2f}s, "
        f"{run.rows_done / seconds:,.0f} rows/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
