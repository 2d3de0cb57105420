"""A fleet's definitions: one table, ``fleet_items``, on every member, and non-idempotent work
(``n = n + 1``): a row done twice anywhere shows in its sum."""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import text

from backfill import Backfill, Batch, Member

items_v = Backfill(
    name="items_v",
    table="fleet_items",
    key="id",
    work="UPDATE fleet_items SET v = n * 2, n = n + 1 WHERE id BETWEEN :first AND :last AND v IS NULL",
    columns="v",
)

TENANTS_ENV = "FLEET_TEST_TENANTS"


def tenants() -> list[Member]:
    """The tenants as an application finds them at start: here from the environment
    (``URL|schema,schema``)."""
    url, _, schemas = os.environ[TENANTS_ENV].partition("|")
    return [Member(f"tenant_{schema}", url, schema) for schema in schemas.split(",")]


def _slowly(connection: Any, batch: Batch) -> int:
    """The same work, holding each batch a while: a worker killed mid-run is killed mid-batch."""
    done = connection.execute(
        text("UPDATE fleet_items SET v = n * 2, n = n + 1 WHERE id BETWEEN :first AND :last AND v IS NULL"),
        {"first": batch.first[0], "last": batch.last[0]},
    ).rowcount
    time.sleep(0.05)
    return int(done)


items_v_slow = Backfill(name="items_v_slow", table="fleet_items", key="id", work=_slowly, columns="v")
