"""The example application's backfills (``BACKFILL_APP=example_app.backfills``)."""

from __future__ import annotations

from sqlalchemy import Connection, Insert, bindparam, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import insert

from backfill import Backfill, Batch, Tuning, define
from example_app.models import players, teams


def _insert_missing(connection: Connection) -> Insert:
    """INSERT that skips names another batch inserted concurrently."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(teams).on_conflict_do_nothing(index_elements=["name"])
    if dialect == "sqlite":
        return sqlite.insert(teams).on_conflict_do_nothing(index_elements=["name"])
    return insert(teams).prefix_with("IGNORE")


@define(
    table="players",
    key="id",
    pending="team_id IS NULL AND team IS NOT NULL",
    columns="team_id",
    batch_size=2000,
    parallelism=2,
)
def players_team_id(connection: Connection, batch: Batch) -> int:
    """Create the batch's teams from players.team and point players.team_id at them."""
    in_batch = batch.where(players.c.id)
    names = (
        select(players.c.team)
        .distinct()
        .where(
            in_batch,
            players.c.team_id.is_(None),
            players.c.team.is_not(None),
            ~exists().where(teams.c.name == players.c.team),
        )
    )
    connection.execute(_insert_missing(connection).from_select(["name"], names))
    # A join (UPDATE ... FROM, or MySQL's multi-table UPDATE) rather than a subquery per row:
    # the database matches the batch's players to their teams in one hash or index join.
    result = connection.execute(
        update(players)
        .where(in_batch, players.c.team_id.is_(None), teams.c.name == players.c.team)
        .values(team_id=teams.c.id)
    )
    return result.rowcount


players_team_name = Backfill(
    name="players_team_name",
    table="players",
    key=("id",),
    pending="team IS NULL AND team_id IS NOT NULL",
    work=update(players)
    .where(
        players.c.id.between(bindparam("first"), bindparam("last")),
        players.c.team.is_(None),
        players.c.team_id.is_not(None),
    )
    .values(team=select(teams.c.name).where(teams.c.id == players.c.team_id).scalar_subquery()),
    columns=("team",),
    tuning=Tuning(batch_size=5000),
    description="The reverse of players_team_id: players.team from teams.name (the downgrade of dropping it).",
)
