"""What a user sees when something goes wrong: what an error keeps, and what it must not."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from backfill import tables
from tests.apps.counters import contacts
from tests.conftest import Database


def test_no_row_data_in_errors_unless_asked(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed batch keeps the error's class and constraint, not the customer's data the
    database adds to it (PostgreSQL's DETAIL, the value MySQL quotes): not on the batch row, not
    in the events, the log or status. BACKFILL_ERROR_DETAIL=full keeps everything."""
    with db.engine.begin() as connection:
        connection.execute(contacts.insert(), [{"id": i, "email": f"customer{i}@example.com"} for i in range(1, 11)])
    monkeypatch.setenv("BACKFILL_LOG_FORMAT", "json")
    ran = db.cli("run", "contacts_merged", "--no-progress")
    assert ran.returncode == 1
    shown = ran.stdout + ran.stderr + db.cli("status", "contacts_merged").stdout
    shown += db.cli("status", "contacts_merged", "--json").stdout
    with db.engine.connect() as connection:
        stored = [*connection.execute(select(tables.batches.c.error)).scalars()]
        stored += [*connection.execute(select(tables.events.c.error)).scalars()]
    errors = [e for e in stored if e]
    assert errors and any("contacts" in e or "email" in e for e in errors), errors
    assert "@example.com" not in shown + "".join(errors), shown

    assert db.cli("retry", "contacts_merged").returncode == 0
    monkeypatch.setenv("BACKFILL_ERROR_DETAIL", "full")
    full = db.cli("run", "contacts_merged", "--no-progress")
    assert full.returncode == 1
    detail = json.loads(db.cli("status", "contacts_merged", "--json").stdout)
    if db.dialect != "sqlite":  # SQLite names the column, never the value
        assert "merged.customer@example.com" in detail["last_error"], detail["last_error"]
