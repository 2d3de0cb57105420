"""The example application's tables, as they stand while the backfill runs: ``players.team`` is
still there and ``players.team_id`` has been added, nullable."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, MetaData, String, Table

metadata = MetaData()

teams = Table(
    "teams",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
)

players = Table(
    "players",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("position", String(20), nullable=False),
    Column("team", String(100)),
    Column("team_id", Integer, ForeignKey("teams.id")),
    Index("ix_players_team_id", "team_id"),
)
