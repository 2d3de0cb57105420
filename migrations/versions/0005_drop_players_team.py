"""drop players.team, now that teams holds the names

Deploy N+2, once no running code reads players.team. The downgrade puts the column back and
fills it from the relation with the reverse backfill (players_team_name), batch by batch along
the key, inside the downgrade's transaction.

Revision ID: 0005_drop_players_team
Revises: 0004_team_id_not_null
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backfill.alembic_ops  # noqa: F401  (registers the op.* backfill operations)

revision = "0005_drop_players_team"
down_revision = "0004_team_id_not_null"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("players") as batch:
        batch.drop_column("team")


def downgrade() -> None:
    with op.batch_alter_table("players") as batch:
        batch.add_column(sa.Column("team", sa.String(100), nullable=True))
    op.run_backfill("players_team_name")
