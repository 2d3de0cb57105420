"""The benchmark's results as a markdown table and a list of targets, each PASS or MISS."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

LABELS = {
    "a": "(a) one UPDATE (teams in one INSERT first)",
    "b": "(b) ORM loop, one session, one commit",
    "c": "(c) OFFSET-paginated batches",
    "d": "(d) backfill inline (`App.run`)",
    "e": "(e) backfill on Celery",
    "e1": "(e1) backfill on Celery, parallelism 1",
    "e2": "(e2) backfill on Celery, parallelism 2",
}


def summarise(rounds: list[dict[str, dict[str, Any]]], singles: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each approach over the rounds: its median round (by rows/s) stands for it, with the
    median and min-max of its per-round ratio to that round's (a), and the worst writer seen."""
    summary: dict[str, dict[str, Any]] = {}
    keys = [k for k in LABELS if any(k in r for r in rounds)]
    for key in keys:
        runs = [r[key] for r in rounds if key in r]
        ordered = sorted(runs, key=lambda r: r["rows_per_s"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        ratios = [r[key]["rows_per_s"] / r["a"]["rows_per_s"] for r in rounds if key in r and "a" in r]
        if ratios:
            median["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        median["rows_per_s_rounds"] = [r["rows_per_s"] for r in runs]
        writers = [r["writer_during"] for r in runs if r.get("writer_during")]
        if writers:
            median["writer_during_worst"] = {
                "max_ms": max(w["max_ms"] for w in writers),
                "p99_ms": max(w["p99_ms"] for w in writers),
            }
        summary[key] = median
    base = summary.get("a", {}).get("rows_per_s")
    for key, single in singles.items():
        summary[key] = dict(single)
        if base:
            summary[key]["ratio"] = {"median": single["rows_per_s"] / base}
    return summary


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}{suffix}"


def _writer(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "—"
    return f"{_num(stats['p50_ms'], 1)} / {_num(stats['p99_ms'], 1)} / {_num(stats['max_ms'], 0)}"


def _ratio(r: dict[str, Any]) -> str:
    ratio = r.get("ratio")
    if not ratio:
        return "—"
    text = _num(ratio["median"], 2, "x")
    if "min" in ratio and ratio["min"] != ratio["max"]:
        text += f" ({_num(ratio['min'], 2)}-{_num(ratio['max'], 2)})"
    return text


def table(results: dict[str, dict[str, Any]], rows: int, rounds: int = 1) -> str:
    """A scenario's summary: the median round of each approach; the ratio column is the median
    of the per-round ratios to (a), with their range over ``rounds`` rounds."""
    lines = [
        f"| approach | wall | rows/s | rows/s ÷ (a), median of {rounds} (min-max) | peak RSS "
        "| writer alone p50 / p99 / max ms "
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
        ratio = _ratio(r)
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


def targets(scenarios: dict[str, dict[str, Any]], rows: int, rss_reference: dict[str, Any] | None) -> list[Target]:
    found: list[Target] = []
    heavy = scenarios.get("heavy", {}).get("summary", {})
    light = scenarios.get("light", {}).get("summary", {})
    if heavy:
        found += _throughput(heavy, "e", 0.9, "heavy")
        found += _writer_targets(heavy, "e", "heavy")
        found += _shape_and_memory(heavy, rows, rss_reference)
    if light:
        found += _throughput(light, "e1", 0.9, "light")
        found += _throughput(light, "e2", 1.3, "light")
        for key in ("e1", "e2"):
            found += _writer_targets(light, key, "light")
    return found


def _throughput(summary: dict[str, Any], key: str, floor: float, scenario: str) -> list[Target]:
    name = f"{scenario}: ({key}) rows/s ≥ {floor} x (a) rows/s (median of the rounds' ratios)"
    r = summary.get(key)
    if not r or "ratio" not in r:
        return [Target(name, f"needs (a) and ({key})", None)]
    ratio = r["ratio"]
    spread = f" (rounds {ratio['min']:.2f}-{ratio['max']:.2f})" if "min" in ratio else ""
    return [Target(name, f"{ratio['median']:.2f}x{spread}", ratio["median"] >= floor)]


def _writer_targets(summary: dict[str, Any], key: str, scenario: str) -> list[Target]:
    r = summary.get(key)
    if not r or not r.get("writer_during"):
        return []
    during, alone = r["writer_during"], r["writer_alone"]
    worst = r.get("writer_during_worst", during)
    limit = 5 * alone["p99_ms"]
    return [
        Target(
            f"{scenario}: writer max latency during ({key}) ≤ 50 ms",
            f"{during['max_ms']:.1f} ms in the median round (worst round {worst['max_ms']:.1f} ms)",
            during["max_ms"] <= 50,
        ),
        Target(
            f"{scenario}: writer p99 during ({key}) ≤ 5 x p99 alone",
            f"{during['p99_ms']:.2f} ms vs 5 x {alone['p99_ms']:.2f} = {limit:.2f} ms "
            f"({during['p99_ms'] / alone['p99_ms']:.1f}x)",
            during["p99_ms"] <= limit,
        ),
    ]


def _shape_and_memory(summary: dict[str, Any], rows: int, rss_reference: dict[str, Any] | None) -> list[Target]:
    found: list[Target] = []
    e = summary.get("e")
    for key in ("d", "e"):
        t = (summary.get(key) or {}).get("tenths") or {}
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
