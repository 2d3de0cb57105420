"""players.team_id NOT NULL, once the backfill has filled it

Deploy N+1. If the backfill is not finished, ensure_backfill_finished runs what is left inline,
inside this migration, while that is little (BACKFILL_FINALIZE_MAX_ROWS); more than that, or with
``alembic -x backfill_finalize=never upgrade ...``, it fails instead, naming the command that
finishes it.

Revision ID: 0004_team_id_not_null
Revises: 0003_teams
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backfill.alembic_ops  # noqa: F401  (registers the op.* backfill operations)

revision = "0004_team_id_not_null"
down_revision = "0003_teams"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.ensure_backfill_finished("players_team_id")
    if op.get_context().dialect.name == "postgresql":
        # 0003 added the foreign key NOT VALID; checking the rows the backfill filled takes a
        # lock that lets writers carry on.
        op.execute("ALTER TABLE players VALIDATE CONSTRAINT fk_players_team_id_teams")
    op.add_not_null("players", "team_id")


def downgrade() -> None:
    with op.batch_alter_table("players") as batch:
        batch.alter_column("team_id", existing_type=sa.Integer, nullable=True)
