"""The statement that completes a batch on PostgreSQL, as the driver sees it."""

from __future__ import annotations

import pytest
from psycopg import _queries
from sqlalchemy import create_engine

from backfill.store import Store


@pytest.mark.parametrize("carry", [False, True])
def test_the_completing_statement_stays_in_the_drivers_statement_cache(carry: bool) -> None:
    """psycopg parses a statement's text again on every execution once it is longer than its
    cache's limit: on the per-batch path that cost a tenth of a chain's time. A setting added to
    ``RUN_STATE`` makes the statement longer; this says when it is too long."""
    engine = create_engine("postgresql+psycopg://nobody@nowhere/none")  # never connects
    statement = Store(engine)._complete_statement(carry).compile(dialect=engine.dialect).string
    assert len(statement.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH
