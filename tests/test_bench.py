"""A quick run of the benchmark harness on a tiny table: it sets up, measures, verifies and
reports every in-process approach end to end (``make bench`` is the real thing)."""

from __future__ import annotations

import pytest

from tests.conftest import POSTGRES_ADMIN_URL


def test_bench_harness_runs_end_to_end(postgres_server: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from bench import run, scenario

    monkeypatch.setattr(scenario, "ADMIN_URL", POSTGRES_ADMIN_URL)
    argv = ["--rows", "3000", "--orm-rows", "500", "--only", "a,b,c,d", "--no-save", "--writer-alone-seconds", "0.5",
            "--cap", "1000", "--capped-rows", "1500", "--rounds", "2"]  # fmt: skip
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    for label in ("(a) one UPDATE", "(b) ORM loop", "(c) OFFSET", "(d) backfill inline"):
        assert label in out
    assert "(d) last-tenth / first-tenth" in out
    assert "rate cap 1000 rows/s (inline, 1,500 rows)" in out
    assert "#### heavy scenario" in out and "#### light scenario" in out
    assert "rows/s ÷ (a), median of 2 (min-max)" in out
