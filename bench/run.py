"""``make bench``: the players/teams migration on PostgreSQL (or MariaDB), several ways, on one
machine, in one run.

    python -m bench.run                       # 1,000,000 players, both scenarios, 3 rounds
    python -m bench.run --rows 5000000 --only d,e --scenarios heavy
    python -m bench.run --dialect mariadb --rows 200000

Two scenarios: **heavy**, the example's schema (a foreign key and an index on ``players.team_id``,
whose upkeep dominates the cost of a row), and **light**, the same tables without them, where a
batch's fixed cost shows. (a) one UPDATE; (b) the ORM loop (measured at --orm-rows,
extrapolated); (c) OFFSET-paginated batches; (d) this project inline; (e) this project on real
Celery workers and Redis (in the light scenario at parallelism 1 and 2: (e1), (e2)). Each runs on
a fresh copy of the scenario in a database of the benchmark's own. During (a), (d) and (e) a
writer process updates random players one row at a time; its latencies are compared with the
same writer alone, measured just before.

These machines vary from run to run, so the compared approaches run in interleaved rounds (a, d,
e, a, d, e, ...): each round's ratio is taken against that round's (a), and the table shows the
median of the rounds' ratios with their min-max. (b) and (c) run once. Prints a markdown table
per scenario and the targets, and writes the whole result as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from backfill import App, Registry
from backfill.database import make_engine
from bench import report, scenario
from bench.approaches import run_child
from bench.celery_cluster import Cluster
from bench.checkpoints import analyse, tenths
from bench.writer import Writer, alone
from example_app.backfills import players_team_id

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WITH_WRITER = ("a", "d", "e")
MARIADB_SETTINGS = (
    "innodb_buffer_pool_size",
    "innodb_flush_log_at_trx_commit",
    "innodb_log_file_size",
    "innodb_lock_wait_timeout",
    "sync_binlog",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dialect", choices=scenario.DIALECTS, default="postgresql", help="database to run on (default postgresql)"
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="players in the scenario (default 1,000,000)")
    parser.add_argument("--orm-rows", type=int, default=100_000, help="players for (b), extrapolated to --rows")
    parser.add_argument("--only", default="a,b,c,d,e", help="approaches to run, e.g. d,e (default: all)")
    parser.add_argument("--scenarios", default="heavy,light", help="heavy, light or both (default both)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the compared approaches")
    parser.add_argument("--batch-size", type=int, default=None, help="override the definition's batch size")
    parser.add_argument("--parallelism", type=int, default=None, help="override the definition's parallelism")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes for (e) (default 2)")
    parser.add_argument(
        "--tick-seconds", type=float, default=None, help="BACKFILL_TICK_SECONDS for (e) (default: the project's)"
    )
    parser.add_argument("--writer-rate", type=float, default=100.0, help="writer updates per second (default 100)")
    parser.add_argument("--writer-alone-seconds", type=float, default=5.0, help="baseline length (default 5 s)")
    parser.add_argument(
        "--offset-budget",
        type=float,
        default=180.0,
        help="(c): seconds of OFFSET pages before the rest is extrapolated from their fitted cost (0: walk it all)",
    )
    parser.add_argument("--cap", type=float, default=2000.0, help="rows/s of the capped run (0: skip it)")
    parser.add_argument("--capped-rows", type=int, default=30_000, help="players in the capped run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="limit per approach, in seconds")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory for the JSON result")
    parser.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    args = parser.parse_args(argv)
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(args.only) - set(report.LABELS))
    if unknown:
        parser.error(f"unknown approach(es) {', '.join(unknown)}: choose from {', '.join(report.LABELS)}")
    if args.rows < 1 or args.orm_rows < 1 or args.rounds < 1:
        parser.error("--rows, --orm-rows and --rounds must be positive")
    args.scenarios = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    if not args.scenarios or set(args.scenarios) - set(scenario.SCENARIOS):
        parser.error(f"--scenarios: choose from {', '.join(scenario.SCENARIOS)}")
    return args


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def conninfo(db: scenario.BenchDatabase) -> str:
    """libpq form of the URL, for the writer's plain psycopg connection (on MariaDB: the URL)."""
    if db.is_mariadb:
        return db.url_text
    return db.url.set(drivername="postgresql").render_as_string(hide_password=False)


def run_in_child(key: str, db: scenario.BenchDatabase, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    options: dict[str, float | None] = {}
    if key in ("c", "d"):
        options["batch_size"] = args.batch_size
    if key == "c":
        options["budget"] = args.offset_budget or None
    if key == "d":
        options["parallelism"] = args.parallelism
    return run_child(key, db.url_text, work / f"{key}.json", args.timeout, **options)


CELERY_PARALLELISM = {"e1": 1, "e2": 2}
"""The light scenario's Celery runs, at a fixed parallelism each."""


def with_writer(
    key: str, db: scenario.BenchDatabase, args: argparse.Namespace, work: Path, body: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The writer alone for a few seconds, then again while ``body()`` runs."""
    baseline = alone(conninfo(db), args.rows, args.writer_rate, args.writer_alone_seconds, work / "writer-alone.json")
    writer = Writer(conninfo(db), args.rows, args.writer_rate, work / "writer.json")
    try:
        result = body()
        during = writer.stop()
    finally:
        writer.kill()
    return result, baseline.to_json(), during.to_json()


def run_celery(
    db: scenario.BenchDatabase, args: argparse.Namespace, work: Path, parallelism: int | None = None
) -> dict[str, Any]:
    """(e): workers and scheduler up first (not timed), then the run from ``start`` to finished."""
    tick = {"BACKFILL_TICK_SECONDS": str(args.tick_seconds)} if args.tick_seconds is not None else {}
    cluster = Cluster(db.url_text, work, app="example_app.backfills", label="bench", **tick)
    engine = make_engine(db.url)
    try:
        cluster.start_worker("worker", args.workers, timeout=90)
        cluster.start_scheduler(wait=90)
        app = App(engine, Registry.of(players_team_id, source="example_app.backfills"))

        def body() -> dict[str, Any]:
            started = time.perf_counter()
            run = app.start(
                players_team_id.name, batch_size=args.batch_size, parallelism=parallelism or args.parallelism
            )
            cluster.tick_now()
            deadline = time.monotonic() + args.timeout
            while True:
                run = app.store.get_run(run.id)
                if run.status.is_over:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"(e) did not finish in {args.timeout:.0f}s: {run.rows_done:,} rows done")
                cluster.check_alive()
                time.sleep(0.1)
            seconds = time.perf_counter() - started
            return {
                "rows": run.rows_done,
                "run_id": run.id,
                "status": str(run.status),
                "error": run.last_error,
                "seconds": seconds,
            }

        result, baseline, during = with_writer("e", db, args, work, body)
        memory = cluster.worker_memory()
        result["worker_memory"] = memory
        peaks = [v for v in [memory["main_mb"], *memory["pool_mb"]] if v is not None]
        result["peak_rss_mb"] = max(peaks) if peaks else None
        result["writer_alone"], result["writer_during"] = baseline, during
        return result
    finally:
        engine.dispose()
        cluster.stop()


def run_one(
    key: str, db: scenario.BenchDatabase, args: argparse.Namespace, work: Path, *, light: bool = False
) -> dict[str, Any]:
    size = args.orm_rows if key == "b" else args.rows
    seed_seconds = scenario.reseed(db, size, checkpoint_tables=key in ("d", "e", "e1", "e2"), light=light)
    log(f"{report.LABELS[key]}: scenario of {size:,} players ready in {seed_seconds:.1f}s")
    if key in ("e", "e1", "e2"):
        result = run_celery(db, args, work, CELERY_PARALLELISM.get(key))
    elif key in WITH_WRITER:
        result, baseline, during = with_writer(key, db, args, work, lambda: run_in_child(key, db, args, work))
        result["writer_alone"], result["writer_during"] = baseline, during
    else:
        result = run_in_child(key, db, args, work)
    counts = scenario.verify(db)
    result["verified"] = scenario.verified(counts, size, done=result["rows"])
    result["counts"] = counts
    if not result["verified"]:
        raise RuntimeError(f"{report.LABELS[key]} left wrong data: {counts}")
    result["rows_per_s"] = size / result["seconds"]
    if key == "b" and size != args.rows:
        result["extrapolated_from"] = size
        result["measured_seconds"] = result["seconds"]
        result["seconds"] = result["seconds"] * args.rows / size
    if key == "c":
        result["tenths"] = tenths(result.pop("batch_durations_ms", []))
    if key in ("d", "e", "e1", "e2"):
        engine = make_engine(db.url)
        try:
            result["checkpoints"] = analyse(engine, result["run_id"], result["seconds"])
        finally:
            engine.dispose()
        result["tenths"] = {k: result["checkpoints"][k] for k in ("first_tenth_ms", "last_tenth_ms", "last_over_first")}
        if result.get("status") != "finished":
            raise RuntimeError(f"{report.LABELS[key]} ended {result.get('status')}: {result.get('error')}")
    log(f"{report.LABELS[key]}: {result['seconds']:.1f}s, {result['rows_per_s']:,.0f} rows/s")
    return result


def run_scenario(name: str, db: scenario.BenchDatabase, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One scenario: the compared approaches in interleaved rounds, the others once."""
    light = name == "light"
    compared = [k for k in ("a", "d", "e") if k in args.only]
    if light and "e" in compared:
        compared = [k for k in compared if k != "e"] + ["e1", "e2"]
    once = [] if light else [k for k in ("b", "c") if k in args.only]
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(1, args.rounds + 1):
        log(f"{name} scenario: round {number} of {args.rounds}")
        rounds.append({key: run_one(key, db, args, work, light=light) for key in compared})
    singles = {key: run_one(key, db, args, work, light=light) for key in once}
    return {"rounds": rounds, "once": singles, "summary": report.summarise(rounds, singles)}


def environment(db: scenario.BenchDatabase) -> dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    engine = make_engine(db.url)
    try:
        with engine.connect() as c:
            if db.is_mariadb:
                server = c.execute(text("SELECT VERSION()")).scalar_one()
                names = ", ".join(f"'{name}'" for name in MARIADB_SETTINGS)
                rows = c.execute(text(f"SHOW VARIABLES WHERE Variable_name IN ({names})")).all()
                settings = {str(name): value for name, value in rows}
            else:
                server = c.execute(text("SHOW server_version")).scalar_one()
                settings = {
                    name: c.execute(text(f"SHOW {name}")).scalar_one()
                    for name in ("shared_buffers", "synchronous_commit", "max_wal_size", "work_mem")
                }
    finally:
        engine.dispose()
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "library_modified": bool(git("status", "--porcelain", "--", "backfill", "workers", "example_app")),
        "python": platform.python_version(),
        "dialect": db.dialect,
        db.dialect: server,
        f"{db.dialect}_settings": settings,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def rss_reference(results_dir: Path, rows: int, dialect: str = "postgresql") -> dict[str, Any] | None:
    """The newest saved result on the same database at another size with a worker RSS, to compare with."""
    for path in sorted(results_dir.glob("*.json"), reverse=True):
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if saved.get("settings", {}).get("dialect", "postgresql") != dialect:
            continue
        heavy = saved.get("scenarios", {}).get("heavy", {}).get("summary", {})
        e = heavy.get("e") or saved.get("results", {}).get("e", {})
        if saved.get("settings", {}).get("rows") != rows and e.get("peak_rss_mb") is not None:
            return {"rows": saved["settings"]["rows"], "peak_rss_mb": e["peak_rss_mb"], "file": path.name}
    return None


def capped_run(db: scenario.BenchDatabase, args: argparse.Namespace) -> dict[str, Any]:
    """The rate cap kept: the inline runner at ``--cap`` rows/s (with its parallelism); the most
    rows that finished in any 10 seconds, against cap x 10."""
    scenario.reseed(db, args.capped_rows, checkpoint_tables=True)
    engine = make_engine(db.url)
    try:
        app = App(engine, Registry.of(players_team_id))
        started = time.perf_counter()
        run = app.run("players_team_id", max_rows_per_second=args.cap)
        seconds = time.perf_counter() - started
        done = sorted(
            (b.finished_at, b.rows) for b in app.store.batches_of(run.id) if b.finished_at and b.status == "succeeded"
        )
        worst = max(
            (sum(r for at, r in done[i:] if (at - start).total_seconds() <= 10.0) for i, (start, _) in enumerate(done)),
            default=0,
        )
    finally:
        engine.dispose()
    result = {
        "cap_rows_per_s": args.cap,
        "rows": run.rows_done,
        "seconds": round(seconds, 1),
        "rows_per_s": round(run.rows_done / seconds, 1),
        "max_rows_in_10s": worst,
        "ratio_to_cap": round(worst / (args.cap * 10), 3),
        "status": run.status.value,
    }
    log(
        f"rate cap {args.cap:g} rows/s: {result['rows_per_s']:,.0f} rows/s over {seconds:.1f}s; at most {worst:,} rows "
        f"in any 10 s = {result['ratio_to_cap']:.3f} x cap x 10 (target <= 1.1)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    tuning = players_team_id.tuning.replace({"batch_size": args.batch_size, "parallelism": args.parallelism})
    settings = {
        "dialect": args.dialect,
        "rows": args.rows,
        "orm_rows": args.orm_rows,
        "approaches": args.only,
        "scenarios": args.scenarios,
        "rounds": args.rounds,
        "definition": "example_app.backfills.players_team_id",
        "tuning": {name: getattr(tuning, name) for name in tuning.__dataclass_fields__},
        "celery_workers": args.workers,
        "tick_seconds": args.tick_seconds if args.tick_seconds is not None else "project default",
        "writer_rate_per_s": args.writer_rate,
        "writer_alone_seconds": args.writer_alone_seconds,
    }
    scenarios: dict[str, dict[str, Any]] = {}
    with scenario.bench_database(args.dialect) as db, tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
        env = environment(db)
        log(
            f"{scenario.DISPLAY[db.dialect]} database {db.name}; {args.rows:,} players; approaches {','.join(args.only)}; "
            f"scenarios {','.join(args.scenarios)}; {args.rounds} round(s); batch_size={tuning.batch_size} "
            f"parallelism={tuning.parallelism} workers={args.workers}"
        )
        for name in args.scenarios:
            scenarios[name] = run_scenario(name, db, args, Path(tmp))
        capped = capped_run(db, args) if args.cap else None
    total = time.perf_counter() - began
    heavy = scenarios.get("heavy", {}).get("summary", {})
    reference = rss_reference(args.results, args.rows, args.dialect) if "e" in heavy else None
    found = report.targets(scenarios, args.rows, reference)
    adapt = getattr(tuning, "target_batch_seconds", 0)
    sizing = f"batch size {tuning.batch_size}" + (f" to start, adapted towards {adapt:g} s per batch" if adapt else "")
    heading = f"{args.rows:,} players on {scenario.DISPLAY[args.dialect]}, {sizing}, parallelism {tuning.parallelism}"
    tables = {name: report.table(result["summary"], args.rows, args.rounds) for name, result in scenarios.items()}
    goals = report.targets_markdown(found)
    print(f"\n### {heading}\n")
    for name, md in tables.items():
        print(f"#### {name} scenario ({'no' if name == 'light' else 'with the'} index and foreign key on team_id)\n")
        print(md)
        print()
    print(goals)
    if capped is not None:
        print(
            f"\nrate cap {capped['cap_rows_per_s']:g} rows/s (inline, {capped['rows']:,} rows): {capped['rows_per_s']:,.0f} "
            f"rows/s; at most {capped['max_rows_in_10s']:,} rows in any 10 s = {capped['ratio_to_cap']:.3f} x the cap "
            "(target <= 1.1)"
        )
    print(f"\nbenchmark wall time {total / 60:.1f} min")
    if not args.no_save:
        args.results.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        suffix = "" if args.dialect == "postgresql" else f"-{args.dialect}"
        path = args.results / f"{stamp}-rows{args.rows}{suffix}.json"
        document = {
            "when": stamp,
            "dialect": args.dialect,
            "heading": heading,
            "settings": settings,
            "environment": env,
            "scenarios": scenarios,
            "targets": [t.to_json() for t in found],
            "rate_cap": capped,
            "tables_markdown": tables,
            "targets_markdown": goals,
            "total_seconds": round(total, 1),
        }
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
