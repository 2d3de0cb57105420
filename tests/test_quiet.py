"""A healthy run says nothing an alert would fire on: notes (a tune, a hold, the final pass
beginning) are kept apart from errors everywhere an operator or a machine looks."""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from pathlib import Path

import pytest

from backfill.status import RunStatus
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import Database
from tests.helpers import metrics_page
from tests.test_dashboard import start_dashboard


def test_a_clean_run_with_a_tune_and_a_final_pass_has_no_error_anywhere(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counters.fill(db.engine, items, list(range(1, 301)))
    assert db.cli("start", "counter_int").returncode == 0
    assert db.cli("tune", "counter_int", "--batch-size", "40").returncode == 0
    app = db.app()
    with caplog.at_level(logging.DEBUG, logger="backfill"):
        run = app.run("counter_int")
    assert run.status is RunStatus.FINISHED and run.last_error is None
    said = [r.getMessage() for r in caplog.records if r.name.startswith("backfill")]
    assert any("final pass:" in m for m in said), said  # (the tune was the CLI's: its history is below)
    loud = [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], loud

    status = db.cli("status", "counter_int")
    assert status.returncode == 0 and "recent errors" not in status.stdout, status.stdout
    data = json.loads(db.cli("status", "counter_int", "--json").stdout)
    assert data["recent_errors"] == [] and data["failed_batches"] == []
    assert "tuned: batch_size=40" in [a["action"] for a in data["actions"]]

    dashboard = start_dashboard(db, tmp_path, token=None)
    try:
        page = urllib.request.urlopen(f"{dashboard.url}/runs/counter_int", timeout=10).read().decode()
    finally:
        dashboard.process.terminate()
        dashboard.process.wait(timeout=20)
    assert "final pass:" in page  # the note is shown, as a note
    assert re.findall(r'class="error"[^>]*>\s*([^<\s][^<]*)<', page) == []

    metrics = metrics_page(db)
    failed = re.search(r'backfill_batches\{[^}]*status="failed"[^}]*\} (\S+)', metrics)
    assert failed is not None and float(failed.group(1)) == 0.0, metrics
