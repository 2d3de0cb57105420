"""teams, a nullable players.team_id, and the backfill that fills it

Deploy N: the schema change takes no lock that waits on the size of players (a new table, a
nullable column, a foreign key that checks only rows written from now on, an index built beside
the writers), and the data work is only queued: the workers run it in batches once this deploy
is out. The new code of this deploy writes team_id for the players it creates or moves; the
backfill does the rest.

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
    # PostgreSQL adds the foreign key NOT VALID: no scan of players under a lock that blocks its
    # writers; 0004 validates it, under a lock that lets them carry on.
    with op.batch_alter_table("players") as batch:
        batch.add_column(sa.Column("team_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_players_team_id_teams", "teams", ["team_id"], ["id"], postgresql_not_valid=True)
    # CONCURRENTLY builds the index while writers carry on, outside a transaction: what this
    # revision did so far commits first (the environment runs a transaction per migration).
    with op.get_context().autocommit_block():
        op.create_index("ix_players_team_id", "players", ["team_id"], postgresql_concurrently=True)
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
