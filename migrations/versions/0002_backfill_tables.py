"""the backfill checkpoint tables

Revision ID: 0002_backfill_tables
Revises: 0001_players
"""

from __future__ import annotations

from alembic import op

import backfill.alembic_ops  # noqa: F401  (registers the op.* backfill operations)

revision = "0002_backfill_tables"
down_revision = "0001_players"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_backfill_tables()


def downgrade() -> None:
    op.drop_backfill_tables()
