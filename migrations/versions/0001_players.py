"""players, with the team as free text

Revision ID: 0001_players
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_players"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "players",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("position", sa.String(20), nullable=False),
        sa.Column("team", sa.String(100)),
    )


def downgrade() -> None:
    op.drop_table("players")
