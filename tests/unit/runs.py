"""Runs as the store would return them, built without a database: a newly queued run's row (the
store's own ``new_run_values``) with the fields a test sets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from backfill.definition import Backfill, Tuning
from backfill.store.records import Run, new_run_values

CREATED = datetime(2026, 11, 23, 12, 0, 0)
DEFINITION = Backfill(name="items_counter", table="items", key=("id",), work="UPDATE items SET counter = 1")


def a_run(*, tuning: Tuning | None = None, definition: Backfill = DEFINITION, **fields: Any) -> Run:
    """A run of ``definition`` as queued, then with ``fields`` (status, counters, keys) set."""
    return Run.from_mapping({**new_run_values(definition, tuning or definition.tuning, CREATED), "id": 1, **fields})
