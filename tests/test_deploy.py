"""The Grafana dashboard and the Prometheus alerting rules under ``deploy/`` name only metrics that
``backfill metrics`` serves: each metric name in them is looked up in a real scrape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from backfill.metrics import StoreCollector
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import Database

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\bbackfill_[a-z_]+\b")


def served(db: Database) -> set[str]:
    counters.fill(db.engine, items, list(range(1, 201)))
    db.app().run("counter_int")
    registry = CollectorRegistry()
    registry.register(StoreCollector(db.app().store))
    exposition = generate_latest(registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line.startswith("backfill_")}
    for line in exposition.splitlines():  # families with no sample now (an ETA only while running)
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
            names |= {name + suffix for suffix in suffixes}
    return names


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_every_metric_the_dashboard_and_the_alerts_name_is_served(db: Database) -> None:
    names = served(db)
    assert {"backfill_rows_processed_total", "backfill_run_status", "backfill_run_held"} <= names
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {r["alert"] for r in alerts} == {
        "BackfillRunFailed",
        "BackfillRunHeld",
        "BackfillRunStalled",
        "BackfillFailureRatioRising",
    }
    expressions += [r["expr"] for r in alerts]
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    assert used, "no metric named"
    assert used <= names, f"named but not served: {sorted(used - names)}"
    held = next(r for r in alerts if r["alert"] == "BackfillRunHeld")
    assert held["for"] == "10m"
