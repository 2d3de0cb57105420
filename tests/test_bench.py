"""A quick run of the benchmark harness on a tiny table: it sets up, measures, verifies and
reports every in-process approach end to end (``make bench`` is the real thing)."""

from __future__ import annotations

import pytest

from tests.conftest import POSTGRES_ADMIN_URL


def test_bench_harness_runs_end_to_end(postgres_server: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from bench import run, scenario

    monkeypatch.setattr(scenario, "ADMIN_URL", POSTGRES_ADMIN_URL)
    argv = ["--rows", "3000", "--orm-rows", "500", "--only", "a,b,c,d", "--no-save", "--writer-alone-seconds", "0.5",
            "--cap", "1000", "--capped-rows", "1500", "--rounds", "1"]  # fmt: skip
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    for label in ("(a) one UPDATE", "(b) ORM loop", "(c) OFFSET", "(d) backfill inline"):
        assert label in out
    assert "(d) last-tenth / first-tenth" in out
    assert "rate cap 1000 rows/s (inline, 1,500 rows)" in out
    assert "#### heavy scenario" in out and "#### light scenario" in out
    assert "rows/s ÷ (a), median of 1 (min-max)" in out


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_the_oltp_harness_runs_end_to_end(
    dialect: str, postgres_server: str, mariadb_server: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Beside the application (pgbench, or the TPC-B-like client on MariaDB): each approach is
    measured against the application alone and verified on the data."""
    from bench import oltp, scenario
    from tests.conftest import MARIADB_ADMIN_URL

    monkeypatch.setattr(scenario, "ADMIN_URL", POSTGRES_ADMIN_URL)
    monkeypatch.setattr(scenario, "MARIADB_ADMIN_URL", MARIADB_ADMIN_URL.rsplit("/", 1)[0] + "/")
    monkeypatch.setattr(oltp, "WARM_UP_SECONDS", 0.5)
    only = "loop,default" if dialect == "postgresql" else "loop"  # MariaDB: its own application client
    argv = ["--dialect", dialect, "--scale", "1", "--only", only, "--rounds", "1", "--idle-seconds", "0.5", "--no-save"]
    assert oltp.main(argv) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "hand-written keyset loop, 1,000 rows per commit" in out
    assert "app transactions lost per 1,000 rows" in out
    if dialect == "postgresql":
        assert "`backfill run`, default tuning" in out
        assert "default: rows/s ≥ 1.0 x the hand loop" in out  # the targets are judged
        assert "| `backfill run`, default tuning | " in out.split("rows/s ÷ loop, median of 1")[1]  # in ratios
        # where in the run the application's tail is made: before the batches, the sweep, the end
        assert "'main sweep': {'seconds'" in err and "'final pass and end'" in err
