"""A fleet's definitions: one table, ``fleet_items``, on every member, and non-idempotent work
(``n = n + 1``): a row done twice anywhere shows in its sum."""

from __future__ import annotations

import os

from backfill import Backfill, Member

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
