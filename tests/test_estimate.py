"""The total a run starts with: the database's estimate, close to the truth even after the
full-table updates that leave a table's pages full of dead rows (an earlier backfill, a
migration), and labelled as an estimate."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, text

from backfill.estimate import EXACT_COUNT_BELOW, estimate_rows
from tests.conftest import Database
from tests.helpers import wait_for

ROWS = EXACT_COUNT_BELOW + 20_000


def test_the_estimate_survives_full_table_updates(db: Database) -> None:
    if db.dialect == "sqlite":
        pytest.skip("SQLite has no estimate: its tables are counted")
    table = Table("estimated", MetaData(), Column("id", Integer, primary_key=True), Column("v", Integer))
    table.create(db.engine)
    with db.engine.begin() as connection:
        if db.dialect == "postgresql":
            connection.execute(text(f"INSERT INTO estimated SELECT g, g FROM generate_series(1, {ROWS}) g"))
        else:
            connection.execute(text(f"INSERT INTO estimated SELECT seq, seq FROM seq_1_to_{ROWS}"))
    for _ in range(5):
        with db.engine.begin() as connection:
            connection.execute(text("UPDATE estimated SET v = v + 1"))

    def estimate() -> tuple[int, bool] | None:
        with db.engine.connect() as connection:
            total, estimated = estimate_rows(connection, table)
        return (total, estimated) if abs(total - ROWS) <= ROWS * 0.1 else None

    # PostgreSQL's statistics are a second or so behind the commits.
    _, estimated = wait_for(estimate, timeout=20, what=f"an estimate within 10% of {ROWS:,} rows", every=0.2)
    assert estimated
