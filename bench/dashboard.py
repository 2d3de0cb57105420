"""The dashboard and ``backfill status`` on a big store: a running run of 1,000,000 batches with
2,000,000 events, beside a few dozen finished runs.

The store is filled by the database itself (``generate_series``) in a database of its own; then
the dashboard is served by uvicorn, as ``backfill dashboard`` serves it, and each page is fetched
over HTTP, interleaved, and timed from request to last byte. ``backfill status`` is timed as a
user runs it (a new process, start-up included) and in-process (what its queries cost).

    python -m bench.dashboard                        # 1,000,000 batches, 2,000,000 events
    python -m bench.dashboard --batches 200000 --events 400000 --repeat 10
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import URL

from backfill import App, Backfill, Registry, Tuning
from backfill.database import make_engine
from bench.scenario import bench_database

TARGET_MS = 300.0
RUN_NAME = "big_run"


def fill(url: URL, batches: int, events: int, finished_runs: int) -> None:
    """A running run part-way through its batches, with the events its batches would have left."""
    definition = Backfill(name=RUN_NAME, table="bench_items", key="id", work="SELECT 1", tuning=Tuning(batch_size=100))
    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE bench_items (id bigint primary key, v int)"))
        c.execute(text("INSERT INTO bench_items (id) SELECT g FROM generate_series(1, :n) g"), {"n": 1000})
    app = App(engine, Registry.of(definition))
    app.init_db()
    run_id = app.start(RUN_NAME).id
    done = batches * 9 // 10
    failed = 40
    with engine.begin() as c:
        c.execute(text("DELETE FROM backfill_batches WHERE run_id = :r"), {"r": run_id})
        c.execute(
            text(
                """
                INSERT INTO backfill_batches (run_id, seq, phase, first_key, last_key, rows, status, attempts,
                    rows_affected, duration_ms, worker, error, created_at, started_at, finished_at)
                SELECT :r, g, 'main', to_json(g * 100 + 1), to_json(g * 100 + 100), 100,
                    CASE WHEN g < :done - :failed THEN 'succeeded' WHEN g < :done THEN 'failed' ELSE 'pending' END,
                    CASE WHEN g < :done THEN 1 ELSE 0 END,
                    CASE WHEN g < :done - :failed THEN 100 END,
                    CASE WHEN g < :done THEN 20 + g % 17 END,
                    CASE WHEN g < :done THEN 'worker-' || g % 8 END,
                    CASE WHEN g >= :done - :failed AND g < :done THEN 'division by zero' END,
                    now() - interval '1 hour', now() - interval '1 hour' + g * interval '3 ms',
                    CASE WHEN g < :done THEN now() - interval '1 hour' + g * interval '3 ms' END
                FROM generate_series(0, :n - 1) g
                """
            ),
            {"r": run_id, "n": batches, "done": done, "failed": failed},
        )
        c.execute(
            text(
                """
                INSERT INTO backfill_events (run_id, batch_id, before, after, worker, error, at)
                SELECT :r, b.id + g % 2 * 0, CASE WHEN g % 2 = 0 THEN 'pending' ELSE 'running' END,
                    CASE WHEN g % 2 = 0 THEN 'running' ELSE b.status END, b.worker, b.error,
                    now() - interval '1 hour' + g * interval '1 ms'
                FROM generate_series(0, :n - 1) g
                JOIN backfill_batches b ON b.run_id = :r AND b.seq = (g / 2) % :batches
                """
            ),
            {"r": run_id, "n": events, "batches": batches},
        )
        c.execute(
            text(
                """
                UPDATE backfill_runs SET rows_done = :rows, batches_done = :done, batches_failed = :failed,
                    next_seq = :batches, planned_all = true, started_at = now() - interval '1 hour'
                WHERE id = :r
                """
            ),
            {"r": run_id, "rows": (done - failed) * 100, "done": done - failed, "failed": failed, "batches": batches},
        )
        for i in range(finished_runs):
            c.execute(
                text(
                    """
                    INSERT INTO backfill_runs (name, status, phase, table_name, key_columns, batch_size, parallelism,
                        max_attempts, statement_timeout, lock_timeout, max_failed_ratio, min_batches_for_ratio,
                        target_batch_seconds, min_batch_size, max_batch_size, max_rows_per_second,
                        pause_seconds, nice_ratio, max_replica_lag, max_transaction_age, max_connections_used,
                        final_pass, rows_total, rows_total_estimated, rows_done, rows_affected,
                        batches_done, batches_failed, created_at, started_at, updated_at, finished_at,
                        planned_all, next_seq)
                    VALUES (:name, 'finished', 'catchup', 'bench_items', '["id"]', 1000, 2, 5, 30, 2, 0.2, 10, 0.3, 100,
                        50000, 0, 0, 0, 30, 600, 0.9, 'past_end', 1000, false, 1000, 1000, 1, 0,
                        now() - interval '2 days', now() - interval '2 days', now() - interval '1 day',
                        now() - interval '1 day', true, 1)
                    """
                ),
                {"name": f"finished_{i:02d}"},
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(url: URL) -> tuple[str, Callable[[], None]]:
    import uvicorn

    from backfill.dashboard import create_app

    app = App(make_engine(url), Registry({}, ""))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(app), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join()

    return f"http://127.0.0.1:{port}", stop


def fetch_ms(address: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(address, timeout=60) as response:
        response.read()
        assert response.status == 200, (address, response.status)
    return (time.perf_counter() - started) * 1000


def status_ms(url: URL, in_process: App | None) -> float:
    started = time.perf_counter()
    if in_process is not None:
        in_process.progress()
    else:
        env = {**os.environ, "BACKFILL_DATABASE_URL": url.render_as_string(hide_password=False)}
        env.pop("BACKFILL_APP", None)
        done = subprocess.run(
            [sys.executable, "-m", "backfill", "status", "--json"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--finished-runs", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    with bench_database() as database:
        url = database.url
        started = time.perf_counter()
        fill(url, args.batches, args.events, args.finished_runs)
        print(
            f"store: 1 running run of {args.batches:,} batches, {args.events:,} events, "
            f"{args.finished_runs} finished runs (filled in {time.perf_counter() - started:.0f} s)\n"
        )
        address, stop = serve(url)
        pages = {
            "runs page  /": f"{address}/",
            f"run page   /runs/{RUN_NAME}": f"{address}/runs/{RUN_NAME}",
            "API        /api/runs": f"{address}/api/runs",
            f"API        /api/runs/{RUN_NAME}": f"{address}/api/runs/{RUN_NAME}",
        }
        in_process = App(make_engine(url), Registry({}, ""))
        timings: dict[str, list[float]] = {page: [] for page in pages}
        timings["backfill status --json (in-process)"] = []
        timings["backfill status --json (new process)"] = []
        for page in pages.values():
            fetch_ms(page)  # warm: the first request pays for reflection and template compilation
        status_ms(url, in_process)
        for i in range(args.repeat):
            for label, page in pages.items():
                timings[label].append(fetch_ms(page))
            timings["backfill status --json (in-process)"].append(status_ms(url, in_process))
            if i < 5:
                timings["backfill status --json (new process)"].append(status_ms(url, None))
        stop()
        print(f"| request | median ms | max ms | target <= {TARGET_MS:.0f} ms |")
        print("|---|---:|---:|---|")
        for label, ms in timings.items():
            verdict = "" if "new process" in label else ("yes" if statistics.median(ms) <= TARGET_MS else "NO")
            print(f"| {label} | {statistics.median(ms):.1f} | {max(ms):.1f} | {verdict} |")


if __name__ == "__main__":
    main()
