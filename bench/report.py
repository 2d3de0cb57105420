"""The benchmark's results as a markdown table and a list of targets, each PASS or MISS."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LABELS = {
    "a": "(a) one UPDATE (teams in one INSERT first)",
    "b": "(b) ORM loop, one session, one commit",
    "c": "(c) OFFSET-paginated batches",
    "d": "(d) backfill inline (`App.run`)",
    "e": "(e) backfill on Celery",
}


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}{suffix}"


def _writer(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "—"
    return f"{_num(stats['p50_ms'], 1)} / {_num(stats['p99_ms'], 1)} / {_num(stats['max_ms'], 0)}"


def table(results: dict[str, dict[str, Any]], rows: int) -> str:
    base = results.get("a", {}).get("rows_per_s")
    lines = [
        "| approach | wall | rows/s | rows/s ÷ (a) | peak RSS | writer alone p50 / p99 / max ms "
        "| writer during p50 / p99 / max ms | batch median first → last tenth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in LABELS.items():
        r = results.get(key)
        if r is None:
            continue
        wall = _num(r["seconds"], 1, " s")
        rss = _num(r.get("peak_rss_mb"), 0, " MB")
        if r.get("extrapolated_from"):
            wall = f"{wall} (extrapolated from {r['extrapolated_from']:,} rows: {_num(r['measured_seconds'], 1)} s)"
            rss = f"{_num(r['peak_rss_mb'], 0, ' MB')} at {r['extrapolated_from']:,} rows"
        if key == "e" and r.get("worker_memory"):
            m = r["worker_memory"]
            pool = ", ".join(f"{v:.0f}" for v in m["pool_mb"])
            rss = f"{_num(r['peak_rss_mb'], 0, ' MB')} (main {_num(m['main_mb'], 0)}; pool {pool})"
        if r.get("extrapolated"):
            x = r["extrapolated"]
            wall = (
                f"{wall} (extrapolated: {x['pages_done']:,} of {x['pages']:,} pages walked in "
                f"{_num(x['seconds_done'], 0)} s, the rest from their cost fitted against the offset)"
            )
        if key in ("a", "c"):
            rss = f"{rss} (client; the work is in the server)"
        ratio = _num(r["rows_per_s"] / base, 2, "x") if base else "—"
        spread = "—"
        t = r.get("tenths")
        if t and t.get("first_tenth_ms") is not None:
            spread = (
                f"{_num(t['first_tenth_ms'], 1)} → {_num(t['last_tenth_ms'], 1)} ms ({_num(t['last_over_first'], 2)}x)"
            )
            if t.get("first_tenth_batch_rows") and t["first_tenth_batch_rows"] != t.get("last_tenth_batch_rows"):
                spread += f"; {t['first_tenth_batch_rows']:,.0f} → {t['last_tenth_batch_rows']:,.0f} rows/batch"
            if r.get("extrapolated"):
                spread += " (last tenth fitted)"
        lines.append(
            f"| {label} | {wall} | {_num(r['rows_per_s'])} | {ratio} | {rss} | {_writer(r.get('writer_alone'))} "
            f"| {_writer(r.get('writer_during'))} | {spread} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    passed: bool | None
    """None: not measured in this run."""

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "MISS")

    def to_json(self) -> dict[str, Any]:
        return {"target": self.name, "measured": self.measured, "result": self.verdict}


def targets(results: dict[str, dict[str, Any]], rows: int, rss_reference: dict[str, Any] | None) -> list[Target]:
    a, d, e = results.get("a"), results.get("d"), results.get("e")
    found: list[Target] = []
    if a and e:
        ratio = e["rows_per_s"] / a["rows_per_s"]
        found.append(
            Target(
                "(e) rows/s ≥ 0.9 x (a) rows/s",
                f"{e['rows_per_s']:,.0f} vs {a['rows_per_s']:,.0f} rows/s = {ratio:.2f}x",
                ratio >= 0.9,
            )
        )
    else:
        found.append(Target("(e) rows/s ≥ 0.9 x (a) rows/s", "needs (a) and (e)", None))
    if e and e.get("writer_during"):
        during, alone = e["writer_during"], e["writer_alone"]
        found.append(
            Target("writer max latency during (e) ≤ 50 ms", f"{during['max_ms']:.1f} ms", during["max_ms"] <= 50)
        )
        limit = 5 * alone["p99_ms"]
        found.append(
            Target(
                "writer p99 during (e) ≤ 5 x p99 alone",
                f"{during['p99_ms']:.2f} ms vs 5 x {alone['p99_ms']:.2f} = {limit:.2f} ms "
                f"({during['p99_ms'] / alone['p99_ms']:.1f}x)",
                during["p99_ms"] <= limit,
            )
        )
    for key, r in (("d", d), ("e", e)):
        t = (r or {}).get("tenths") or {}
        if t.get("last_over_first") is not None:
            found.append(
                Target(
                    f"({key}) last-tenth / first-tenth median batch duration ≤ 1.3",
                    f"{t['last_tenth_ms']:.1f} / {t['first_tenth_ms']:.1f} ms = {t['last_over_first']:.2f}",
                    t["last_over_first"] <= 1.3,
                )
            )
    if e and e.get("peak_rss_mb") is not None:
        found.append(
            Target("worker peak RSS ≤ 150 MB", f"{e['peak_rss_mb']:.0f} MB at {rows:,} rows", e["peak_rss_mb"] <= 150)
        )
        if rss_reference is not None:
            other = rss_reference["peak_rss_mb"]
            same = abs(e["peak_rss_mb"] - other) <= max(10.0, 0.1 * other)
            found.append(
                Target(
                    "worker peak RSS the same at another size (within 10% or 10 MB)",
                    f"{e['peak_rss_mb']:.0f} MB at {rows:,} rows vs {other:.0f} MB at {rss_reference['rows']:,} rows "
                    f"({rss_reference['file']})",
                    same and e["peak_rss_mb"] <= 150 and other <= 150,
                )
            )
        else:
            found.append(
                Target(
                    "worker peak RSS the same at 1M and 5M rows",
                    "no result at another size in bench/results yet: run with --rows 5000000 --only e",
                    None,
                )
            )
    return found


def targets_markdown(found: list[Target]) -> str:
    lines = ["| target | measured | result |", "|---|---|---|"]
    lines += [f"| {t.name} | {t.measured} | {t.verdict} |" for t in found]
    return "\n".join(lines)
