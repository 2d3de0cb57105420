"""Gentle beside a live application: a backfill measured by the harm it does to an application
nobody here wrote.

    python -m bench.oltp                                   # PostgreSQL, pgbench, 3 rounds
    python -m bench.oltp --dialect mariadb                 # MariaDB, a TPC-B-like client
    python -m bench.oltp --only loop,default --rounds 1 --scale 5

The application is pgbench's TPC-B-like mix (4 clients; on MariaDB, ``bench.workload``'s clients
running the same transaction) on pgbench's tables at ``--scale`` (100,000 accounts each: 20 is
2,000,000). While it runs, each approach fills a new column of ``pgbench_accounts``, the table the
application updates most (``bench.accounts``): one UPDATE, a careful hand-written keyset loop
(at 1,000 rows per commit, and at 2,500 to show what a longer batch costs the application),
``backfill run`` at its defaults, with ``--nice-ratio 1``, with an impact budget, and on Celery.

Every approach starts from the same table (``bench.accounts.reset``), then the application runs
alone for ``--idle-seconds`` (its idle baseline), then the approach runs as a whole process, start
to exit, while the application goes on. From the application's own transaction log: its
throughput during the migration against idle, the transactions it lost per 1,000 rows migrated
(idle TPS minus TPS during, times the migration's duration), its latency p50 / p99 / max during
the migration, and its transactions over 100 ms. The data is verified after every approach.

These machines are shared and noisy: approaches run in interleaved rounds (update, loop, default,
..., update, loop, ...), each round's figures are compared with that round's hand loop, and the
table gives medians over the rounds. Prints the table and the targets; writes JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import URL

from backfill.database import make_engine
from backfill.store import BatchRecord, Store
from bench import accounts, scenario
from bench.celery_cluster import Cluster
from bench.hand_written import URL_ENV
from bench.workload import SLOW_MS, Window, Workload

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WARM_UP_SECONDS = 3.0


@dataclass(frozen=True)
class Approach:
    label: str
    argv: tuple[str, ...]
    """The command that does the whole migration (``celery``: the one that starts it)."""
    framework: bool = True
    celery: bool = False


BACKFILL = (sys.executable, "-m", "backfill")
APPROACHES = {
    "update": Approach(
        "one `UPDATE` in the migration", (sys.executable, "-m", "bench.hand_written", "update"), framework=False
    ),
    "loop": Approach(
        "hand-written keyset loop, 1,000 rows per commit",
        (sys.executable, "-m", "bench.hand_written", "loop", "--batch-size", "1000"),
        framework=False,
    ),
    "loop2500": Approach(
        "hand-written keyset loop, 2,500 rows per commit",
        (sys.executable, "-m", "bench.hand_written", "loop", "--batch-size", "2500"),
        framework=False,
    ),
    "default": Approach("`backfill run`, default tuning", (*BACKFILL, "run", "accounts_region")),
    "nice": Approach("`backfill run --nice-ratio 1`", (*BACKFILL, "run", "accounts_region", "--nice-ratio", "1")),
    "budget": Approach(
        "`backfill run --impact-budget 0.1`", (*BACKFILL, "run", "accounts_region", "--impact-budget", "0.1")
    ),
    "celery": Approach(
        "Celery, 1 worker + scheduler, default tuning", (*BACKFILL, "start", "accounts_region"), celery=True
    ),
}
DEFAULT_ONLY = "update,loop,loop2500,default,nice,budget,celery"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialect", choices=scenario.DIALECTS, default="postgresql")
    parser.add_argument("--scale", type=int, default=20, help="pgbench scale: 100,000 accounts each (default 20)")
    parser.add_argument("--clients", type=int, default=4, help="application clients (default 4)")
    parser.add_argument("--only", default=DEFAULT_ONLY, help=f"approaches, of {', '.join(APPROACHES)}")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="the application alone before each approach")
    parser.add_argument("--timeout", type=float, default=900.0, help="limit per approach, in seconds")
    parser.add_argument(
        "--backfill-args",
        default="",
        help="more options for every `backfill run`/`start` of the run, e.g. '--target-batch-seconds 0.02'",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    args = parser.parse_args(argv)
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(args.only) - set(APPROACHES))
    if unknown:
        parser.error(f"unknown approach(es) {', '.join(unknown)}: choose from {', '.join(APPROACHES)}")
    if args.scale < 1 or args.rounds < 1 or args.clients < 1:
        parser.error("--scale, --rounds and --clients must be positive")
    return args


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def environment(url: URL) -> dict[str, str]:
    return {
        **os.environ,
        URL_ENV: url.render_as_string(hide_password=False),
        "BACKFILL_APP": "bench.accounts",
        "BACKFILL_DATABASE_URL": url.render_as_string(hide_password=False),
    }


def migrate(approach: Approach, url: URL, args: argparse.Namespace, wait_for_run: Callable[[], None] | None) -> float:
    """Run the approach's command (and, on Celery, wait for the run it started); its seconds."""
    argv = [*approach.argv, *(shlex.split(args.backfill_args) if approach.framework else [])]
    started = time.time()
    done = subprocess.run(
        argv, cwd=ROOT, env=environment(url), capture_output=True, text=True, timeout=args.timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{approach.label} exited {done.returncode}: {done.stderr[-2000:]}")
    if wait_for_run is not None:
        wait_for_run()
    return time.time() - started


def batches(url: URL, transactions: Sequence[tuple[float, float]], started: float, ended: float) -> dict[str, Any]:
    """What the framework's run did, from its checkpoints: batches, their sizes and durations;
    and the application's p99 in each stretch of the run (``stretches``)."""
    engine = make_engine(url)
    try:
        store = Store(engine)
        run = store.latest_run("accounts_region")
        assert run is not None
        done = [b for b in store.batches_of(run.id) if b.status.value == "succeeded"]
        rows = sorted(b.rows for b in done)
        durations = sorted(b.duration_ms or 0.0 for b in done)
        return {
            "stretches": stretches(done, transactions, started, ended),
            "status": run.status.value,
            "batches": len(done),
            "median_rows": statistics.median(rows) if rows else 0,
            "max_rows": rows[-1] if rows else 0,
            "median_ms": round(statistics.median(durations), 1) if durations else 0,
            "max_ms": round(durations[-1], 1) if durations else 0,
            "final_batch_size": run.tuning.batch_size,
        }
    finally:
        engine.dispose()


def one(key: str, db: scenario.BenchDatabase, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One approach beside the application: reset, idle baseline, migration, verification."""
    approach = APPROACHES[key]
    url = db.url
    accounts.reset(url)
    engine = make_engine(url)
    store = Store(engine)
    store.drop_tables()
    store.create_tables()
    cluster: Cluster | None = None
    wait_for_run = None
    if approach.celery:
        cluster = Cluster(db.url_text, work, app="bench.accounts", label="oltp")
        cluster.start_worker("worker", 1, timeout=90)
        cluster.start_scheduler(wait=90)

        def wait_for_run() -> None:
            assert cluster is not None
            cluster.tick_now()
            deadline = time.monotonic() + args.timeout
            while (run := store.latest_run("accounts_region")) is None or not run.status.is_over:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{approach.label} did not finish in {args.timeout:.0f}s")
                cluster.check_alive()
                time.sleep(0.05)

    application = Workload(url, work, clients=args.clients, scale=args.scale)
    try:
        time.sleep(WARM_UP_SECONDS)
        idle_from = time.time()
        time.sleep(args.idle_seconds)
        application.check()
        started = time.time()
        seconds = migrate(approach, url, args, wait_for_run)
        ended = started + seconds
        time.sleep(0.5)
        application.check()
    finally:
        application.stop()
        if cluster is not None:
            cluster.stop()
        engine.dispose()
    transactions = application.log()
    idle = Window.of(transactions, idle_from, started)
    during = Window.of(transactions, started, ended)
    rows = args.scale * accounts.ACCOUNTS_PER_SCALE
    counts = accounts.verify(url)
    verified = counts == {"accounts": rows, "missing": 0, "wrong": 0}
    if not verified:
        raise RuntimeError(f"{approach.label} left wrong data: {counts}")
    lost = (idle.tps - during.tps) * seconds
    result: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "rows": rows,
        "rows_per_s": rows / seconds,
        "idle": idle.to_json(),
        "during": during.to_json(),
        "tps_ratio": during.tps / idle.tps if idle.tps else float("nan"),
        "lost_per_1000_rows": lost / rows * 1000,
        "verified": verified,
    }
    if approach.framework:
        result["run"] = batches(url, transactions, started, ended)
    log(
        f"{key}: {seconds:.1f}s, {result['rows_per_s']:,.0f} rows/s; TPS {during.tps:,.0f} / idle {idle.tps:,.0f} "
        f"= {result['tps_ratio']:.2f}; lost {result['lost_per_1000_rows']:.1f}/1,000 rows; "
        f"p99 {during.p99_ms:.1f} (idle {idle.p99_ms:.1f}) max {during.max_ms:.0f} ms; "
        f"{during.slow} over {SLOW_MS:.0f} ms" + (f"; batches {result['run']}" if "run" in result else "")
    )
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def stretches(
    done: Sequence[BatchRecord], transactions: Sequence[tuple[float, float]], started: float, ended: float
) -> dict[str, dict[str, Any]]:
    """The application's transactions in each stretch of a run: before its first batch (the
    process starting, the run checked and planned), the main sweep, and from the sweep's last
    batch to the process's exit (the final pass, the verification, the run concluded). Where in
    the run the application's tail is made."""
    main = [b for b in done if b.phase.value == "main" and b.started_at and b.finished_at]
    if not main:
        return {}
    first, last = epoch(main[0].started_at), max(epoch(b.finished_at) for b in main)
    bounds = {"start": (started, first), "main sweep": (first, last), "final pass and end": (last, ended)}
    found = {}
    for name, (start, end) in bounds.items():
        window = Window.of(transactions, start, end)
        found[name] = {"seconds": round(end - start, 2), "transactions": window.transactions, "p99_ms": window.p99_ms}
    return found


def epoch(at: datetime | None) -> float:
    """A checkpoint's time (UTC, naive on some databases) as epoch seconds."""
    assert at is not None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per approach: the median of each figure over the rounds, and of its ratio to the round's loop."""
    summary: dict[str, dict[str, Any]] = {}
    for key in rounds[0]:
        results = [r[key] for r in rounds]
        entry: dict[str, Any] = {
            "rows_per_s": median([r["rows_per_s"] for r in results]),
            "tps_ratio": median([r["tps_ratio"] for r in results]),
            "lost_per_1000_rows": median([r["lost_per_1000_rows"] for r in results]),
            "p50_ms": median([r["during"]["p50_ms"] for r in results]),
            "p99_ms": median([r["during"]["p99_ms"] for r in results]),
            "max_ms": median([r["during"]["max_ms"] for r in results]),
            "worst_max_ms": max(r["during"]["max_ms"] for r in results),
            "slow": median([r["during"]["slow"] for r in results]),
            "idle_p99_ms": median([r["idle"]["p99_ms"] for r in results]),
            "p99_over_idle": median([r["during"]["p99_ms"] / r["idle"]["p99_ms"] for r in results]),
        }
        if all("run" in r for r in results):
            entry["median_batch_rows"] = median([r["run"]["median_rows"] for r in results])
            entry["median_batch_ms"] = median([r["run"]["median_ms"] for r in results])
        if all("loop" in r for r in rounds):
            loops = [r["loop"] for r in rounds]
            entry["vs_loop"] = {
                "rows_per_s": [r["rows_per_s"] / lp["rows_per_s"] for r, lp in zip(results, loops, strict=True)],
                "lost": [
                    r["lost_per_1000_rows"] / lp["lost_per_1000_rows"] if lp["lost_per_1000_rows"] > 0 else None
                    for r, lp in zip(results, loops, strict=True)
                ],
                "p99": [r["during"]["p99_ms"] / lp["during"]["p99_ms"] for r, lp in zip(results, loops, strict=True)],
                "slow_beyond_loop": [
                    max(0, r["during"]["slow"] - lp["during"]["slow"]) for r, lp in zip(results, loops, strict=True)
                ],
            }
        summary[key] = entry
    return summary


def _span(values: list[float | None]) -> str:
    known = sorted(v for v in values if v is not None)
    if not known:
        return "—"
    return f"{statistics.median(known):.2f} ({known[0]:.2f}-{known[-1]:.2f})"


def table(summary: dict[str, dict[str, Any]], rounds: int) -> str:
    lines = [
        f"| approach | backfill rows/s | ÷ loop, median of {rounds} (min-max) | app TPS during ÷ idle "
        "| app transactions lost per 1,000 rows | app latency during, p50 / p99 / max ms | p99 ÷ idle "
        f"| app transactions > {SLOW_MS:.0f} ms | median batch rows / ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in summary.items():
        versus = _span(s["vs_loop"]["rows_per_s"]) if "vs_loop" in s else "—"
        batch = f"{s['median_batch_rows']:,.0f} / {s['median_batch_ms']:.0f}" if "median_batch_rows" in s else "—"
        lines.append(
            f"| {APPROACHES[key].label} | {s['rows_per_s']:,.0f} | {versus} | {s['tps_ratio']:.2f} "
            f"| {s['lost_per_1000_rows']:.1f} | {s['p50_ms']:.1f} / {s['p99_ms']:.1f} / {s['max_ms']:,.0f} "
            f"| {s['p99_over_idle']:.2f} | {s['slow']:.0f} | {batch} |"
        )
    return "\n".join(lines)


def ratio_table(summary: dict[str, dict[str, Any]], rounds: int) -> str:
    """The same runs in ratios alone (to the round's hand loop, or to the application alone
    just before): what the README shows, since absolute figures vary with the machine."""
    lines = [
        f"| approach | rows/s ÷ loop, median of {rounds} (min-max) | app TPS during ÷ idle "
        "| app transactions lost per row ÷ loop's | app p99 during ÷ idle | app p99 ÷ loop's "
        f"| app transactions > {SLOW_MS:.0f} ms beyond the loop's, worst round |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in summary.items():
        versus = s.get("vs_loop")
        if versus is None:
            continue
        lines.append(
            f"| {APPROACHES[key].label} | {_span(versus['rows_per_s'])} | {s['tps_ratio']:.2f} "
            f"| {_span(versus['lost'])} | {s['p99_over_idle']:.2f} | {_span(versus['p99'])} "
            f"| {max(versus['slow_beyond_loop'])} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {"target": self.name, "measured": self.measured, "passed": self.passed}


def targets(summary: dict[str, dict[str, Any]]) -> list[Target]:
    found: list[Target] = []
    default = summary.get("default")
    if default is not None and "vs_loop" in default:
        versus = default["vs_loop"]
        speed = median(versus["rows_per_s"])
        found.append(Target("default: rows/s ≥ 1.0 x the hand loop", f"{speed:.2f}x ({_span(versus['rows_per_s'])})", speed >= 1.0))  # fmt: skip
        lost = [v for v in versus["lost"] if v is not None]
        loop_lost = summary["loop"]["lost_per_1000_rows"]
        found.append(
            Target(
                "default: app transactions lost per 1,000 rows ≤ the hand loop's",
                f"{default['lost_per_1000_rows']:.1f} vs {loop_lost:.1f} ({_span(lost)}x)",
                default["lost_per_1000_rows"] <= loop_lost,
            )
        )
        found.append(
            Target(
                "default: app p99 during ≤ the hand loop's",
                f"{default['p99_ms']:.1f} vs {summary['loop']['p99_ms']:.1f} ms ({_span(versus['p99'])}x)",
                default["p99_ms"] <= summary["loop"]["p99_ms"],
            )
        )
        beyond = max(versus["slow_beyond_loop"])
        found.append(
            Target(
                f"default: no app transaction over {SLOW_MS:.0f} ms that the loop does not also cause",
                f"{beyond} more than the loop in the worst round",
                beyond == 0,
            )
        )
    for key in ("budget",):
        s = summary.get(key)
        if s is None:
            continue
        found.append(Target(f"{key}: app TPS during ≥ 0.9 x idle", f"{s['tps_ratio']:.3f}", s["tps_ratio"] >= 0.9))
        found.append(Target(f"{key}: app p99 during ≤ 1.5 x idle", f"{s['p99_over_idle']:.2f}x", s["p99_over_idle"] <= 1.5))  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    rounds: list[dict[str, dict[str, Any]]] = []
    with scenario.bench_database(args.dialect) as db, tempfile.TemporaryDirectory(prefix="backfill-oltp-") as tmp:
        rows = args.scale * accounts.ACCOUNTS_PER_SCALE
        log(
            f"{scenario.DISPLAY[db.dialect]} database {db.name}: pgbench tables at scale {args.scale} ({rows:,} accounts)"
        )
        accounts.initialise(db.url, args.scale)
        for number in range(1, args.rounds + 1):
            log(f"round {number} of {args.rounds}")
            rounds.append({key: one(key, db, args, Path(tmp)) for key in args.only})
    summary = summarise(rounds)
    app = "pgbench" if args.dialect == "postgresql" else "a TPC-B-like client (bench.workload)"
    heading = (
        f"{rows:,} accounts on {scenario.DISPLAY[args.dialect]} beside {app}, {args.clients} clients; "
        f"{args.idle_seconds:g} s idle before each approach"
    )
    markdown = table(summary, args.rounds)
    ratios = ratio_table(summary, args.rounds)
    found = targets(summary)
    print(f"\n### {heading}\n\n{markdown}\n\n{ratios}\n")
    for target in found:
        print(f"- {'PASS' if target.passed else 'MISS'} {target.name}: {target.measured}")
    total = time.perf_counter() - began
    print(f"\nbenchmark wall time {total / 60:.1f} min")
    if not args.no_save:
        args.results.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = args.results / f"{stamp}-oltp-{args.dialect}-scale{args.scale}.json"
        document = {
            "when": stamp,
            "heading": heading,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rounds": rounds,
            "summary": summary,
            "targets": [t.to_json() for t in found],
            "table_markdown": markdown,
            "ratio_markdown": ratios,
            "total_seconds": round(total, 1),
        }
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
