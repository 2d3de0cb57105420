"""The tests' workers: ``bench.celery_cluster``'s deployment, on the test's database and
definitions, with a tick and a redispatch short enough for a test to wait for."""

from __future__ import annotations

from pathlib import Path

from bench.celery_cluster import REDIS_START, REDIS_URL, Cluster
from tests.conftest import Database

TEST_SETTINGS = {"BACKFILL_TICK_SECONDS": "0.5", "BACKFILL_REDISPATCH_SECONDS": "3"}


def cluster_for(db: Database, logs: Path, **settings: str) -> Cluster:
    options = {"BACKFILL_APP": "tests.apps.counters", **TEST_SETTINGS, **settings}
    app = options.pop("BACKFILL_APP")
    return Cluster(db.url, logs, app=app, label="test", **options)


__all__ = ["REDIS_START", "REDIS_URL", "Cluster", "cluster_for"]
