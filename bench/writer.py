"""The application writing while a migration runs: single-row UPDATEs of random players, each its
own transaction on its own connection, at a steady rate; the latency of every one is kept.

On PostgreSQL it connects with psycopg (``conninfo`` in libpq form); on MariaDB with PyMySQL in
autocommit (``conninfo`` a ``mariadb://`` or ``mysql://`` SQLAlchemy URL).

Run as a process of its own (``python -m bench.writer``), so that the work being measured never
competes with it for the interpreter. It prints ``ready`` once connected, then writes until its
time is up or it gets SIGTERM, and leaves its latencies as JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from sqlalchemy.engine import make_url

POSITIONS = ["goalkeeper", "defender", "midfielder", "forward"]
URL_ENV = "BENCH_WRITER_URL"


def is_mysql_url(conninfo: str) -> bool:
    return conninfo.startswith(("mariadb", "mysql"))


def connect_mysql(conninfo: str) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    url = make_url(conninfo)
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=url.database,
        charset="utf8mb4",
        autocommit=True,
    )


def write(conninfo: str, rows: int, rate: float, seconds: float | None, out: Path) -> None:
    if is_mysql_url(conninfo):
        connection = connect_mysql(conninfo)
        try:
            with connection.cursor() as cursor:
                _write(cursor.execute, pymysql.Error, rows, rate, seconds, out)
        finally:
            connection.close()
    else:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            _write(conn.execute, psycopg.Error, rows, rate, seconds, out)


def _write(
    execute: Callable[..., Any],
    error: type[Exception],
    rows: int,
    rate: float,
    seconds: float | None,
    out: Path,
) -> None:
    """The writing loop, on an autocommit connection of either database (both take ``%s``)."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(os.getpid())
    latencies: list[float] = []
    errors: list[str] = []
    interval = 1.0 / rate
    execute("SELECT 1")
    print("ready", flush=True)
    started = time.monotonic()
    next_at = started
    while not stop and (seconds is None or time.monotonic() - started < seconds):
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
            continue
        t0 = time.perf_counter()
        try:
            execute("UPDATE players SET position = %s WHERE id = %s", (rng.choice(POSITIONS), rng.randint(1, rows)))
        except error as exc:
            errors.append(str(exc).splitlines()[0])
        latencies.append((time.perf_counter() - t0) * 1000)
        next_at = max(next_at + interval, time.monotonic())
    elapsed = time.monotonic() - started
    out.write_text(json.dumps({"seconds": elapsed, "latencies_ms": latencies, "errors": errors[:20]}))


@dataclass
class WriterStats:
    updates: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int

    @classmethod
    def of(cls, raw: dict[str, Any]) -> WriterStats:
        lat = sorted(raw["latencies_ms"])
        if not lat:
            return cls(0, raw["seconds"], float("nan"), float("nan"), float("nan"), len(raw["errors"]))
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        return cls(len(lat), raw["seconds"], statistics.median(lat), p99, lat[-1], len(raw["errors"]))

    def to_json(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "seconds": round(self.seconds, 2),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 2),
            "errors": self.errors,
        }


class Writer:
    """The writer process, driven from the benchmark."""

    def __init__(self, conninfo: str, rows: int, rate: float, out: Path, seconds: float | None = None) -> None:
        self.out = out
        out.unlink(missing_ok=True)
        args = [sys.executable, "-m", "bench.writer", "--rows", str(rows), "--rate", str(rate), "--out", str(out)]
        if seconds is not None:
            args += ["--seconds", str(seconds)]
        self.process = subprocess.Popen(args, env={**os.environ, URL_ENV: conninfo}, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until connected (or the process died)
        if line.strip() != "ready":
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the writer did not start (exit {self.process.returncode})")

    def stop(self, timeout: float = 120) -> WriterStats:
        """Stop now (a writer stuck behind a lock reports once its update returns)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 120) -> WriterStats:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("the writer did not stop in time") from None
        return WriterStats.of(json.loads(self.out.read_text()))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def alone(conninfo: str, rows: int, rate: float, seconds: float, out: Path) -> WriterStats:
    """The same writer with nothing else running: the baseline."""
    writer = Writer(conninfo, rows, rate, out, seconds=seconds)
    try:
        return writer.wait(timeout=seconds + 60)
    finally:
        writer.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write(os.environ[URL_ENV], args.rows, args.rate, args.seconds, args.out)


if __name__ == "__main__":
    main()
