"""teams, a nullable players.team_id, and the backfill that fills it

Deploy N: the schema change is instant (a new table, a nullable column, its index), and the
data work is only queued: the workers run it in batches once this deploy is out. The new code
of this deploy writes team_id for the players it creates or moves; the backfill does the rest.

Revision ID: 0003_teams
Revises: 0002_backfill_tables
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backfill.alembic_ops  # noqa: F401  (registers the op.* backfill operations)

revision = "0003_teams"
down_revision = "0002_backfill_tables"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
    )
    # SQLite cannot add a foreign key to an existing table: batch mode copies the table there
    # (and so needs a live database: no --sql on SQLite); elsewhere these are two ALTERs.
    with op.batch_alter_table("players") as batch:
        batch.add_column(sa.Column("team_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_players_team_id_teams", "teams", ["team_id"], ["id"])
    op.create_index("ix_players_team_id", "players", ["team_id"])
    op.queue_backfill("players_team_id")


def downgrade() -> None:
    op.forget_backfill("players_team_id")
    # The foreign key goes first: MySQL/MariaDB enforce it with ix_players_team_id and refuse
    # to drop an index a foreign key needs (error 1553).
    with op.batch_alter_table("players") as batch:
        batch.drop_constraint("fk_players_team_id_teams", type_="foreignkey")
    op.drop_index("ix_players_team_id", table_name="players")
    with op.batch_alter_table("players") as batch:
        batch.drop_column("team_id")
    op.drop_table("teams")
