"""The application beside the migration: a TPC-B-like transaction mix that keeps updating the table
being backfilled, every transaction's end time and latency kept.

On PostgreSQL it is PostgreSQL's own ``pgbench`` (its per-transaction log, ``-l``); on MariaDB,
where nothing ships one, it is ``python -m bench.workload``: the same transaction as pgbench's
built-in ``tpcb-like`` script (an account, its teller and branch updated, a history row
inserted, one transaction) from several client processes. Either runs until it is stopped; the
benchmark then reads the transactions that ended inside a window of time: the application
alone, and the application during a migration.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import URL

CLIENTS = 4
SLOW_MS = 100.0
"""An application transaction slower than this is one a user notices."""

TPCB = (
    "UPDATE pgbench_accounts SET abalance = abalance + %(delta)s WHERE aid = %(aid)s",
    "SELECT abalance FROM pgbench_accounts WHERE aid = %(aid)s",
    "UPDATE pgbench_tellers SET tbalance = tbalance + %(delta)s WHERE tid = %(tid)s",
    "UPDATE pgbench_branches SET bbalance = bbalance + %(delta)s WHERE bid = %(bid)s",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (%(tid)s, %(bid)s, %(aid)s, %(delta)s, NOW())",
)
"""pgbench's built-in ``tpcb-like`` script, statement for statement."""


@dataclass(frozen=True)
class Window:
    """The application's transactions that ended within one stretch of time."""

    seconds: float
    transactions: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    slow: int
    """Transactions over SLOW_MS."""

    @property
    def tps(self) -> float:
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def of(cls, log: Sequence[tuple[float, float]], start: float, end: float) -> Window:
        """``log``: (end time as epoch seconds, latency in ms) of every transaction."""
        latencies = sorted(ms for at, ms in log if start <= at < end)
        if not latencies:
            return cls(end - start, 0, float("nan"), float("nan"), float("nan"), 0)
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        slow = sum(1 for ms in latencies if ms > SLOW_MS)
        return cls(end - start, len(latencies), statistics.median(latencies), p99, latencies[-1], slow)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "transactions": self.transactions,
            "tps": round(self.tps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 1),
            "slow": self.slow,
        }


class Workload:
    """The application, running in the background until ``stop()``; ``log()`` then reads every
    transaction it finished."""

    def __init__(self, url: URL, directory: Path, *, clients: int = CLIENTS, scale: int) -> None:
        self.url = url
        self.directory = directory
        self.clients = clients
        self.scale = scale
        self.is_mariadb = url.get_backend_name() in ("mysql", "mariadb")
        for old in directory.glob("app_log*"):
            old.unlink()
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        if self.is_mariadb:
            argv = [sys.executable, "-m", "bench.workload", "--clients", str(self.clients), "--scale", str(self.scale)]
            argv += ["--out", str(self.directory / "app_log")]
            env = {**os.environ, "BENCH_WORKLOAD_URL": self.url.render_as_string(hide_password=False)}
            return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        argv = ["pgbench", "--no-vacuum", "--client", str(self.clients), "--jobs", str(min(self.clients, 2))]
        argv += ["--time", "86400", "--log", "--log-prefix", str(self.directory / "app_log")]
        argv += ["--host", self.url.host or "127.0.0.1", "--port", str(self.url.port or 5432)]
        argv += ["--username", self.url.username or "postgres", self.url.database or "postgres"]
        env = {**os.environ}
        if self.url.password:
            env["PGPASSWORD"] = str(self.url.password)
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the application stopped: {self._stderr()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")[-2000:]

    def log(self) -> list[tuple[float, float]]:
        """(end time, latency ms) of every transaction, oldest first."""
        found: list[tuple[float, float]] = []
        for path in self.directory.glob("app_log*"):
            for line in path.read_text().splitlines():
                fields = line.split()
                if self.is_mariadb:
                    if len(fields) == 2:
                        found.append((float(fields[0]), float(fields[1])))
                elif len(fields) >= 6 and fields[2].isdigit():
                    # pgbench: client transaction latency_us script epoch_s epoch_us [lag]
                    found.append((int(fields[4]) + int(fields[5]) / 1e6, int(fields[2]) / 1000))
        found.sort()
        return found


def _client(url: str, scale: int, out: Path, number: int) -> None:
    """One client process: tpcb-like transactions back to back until SIGINT or SIGTERM."""
    import pymysql
    from sqlalchemy.engine import make_url

    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    parsed = make_url(url)
    connection = pymysql.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=parsed.database,
        autocommit=False,
    )
    rng = random.Random(os.getpid())
    lines: list[str] = []
    with connection.cursor() as cursor:
        while not stop:
            values = {
                "aid": rng.randint(1, 100_000 * scale),
                "tid": rng.randint(1, 10 * scale),
                "bid": rng.randint(1, scale),
                "delta": rng.randint(-5000, 5000),
            }
            began = time.perf_counter()
            try:
                for statement in TPCB:
                    cursor.execute(statement, values)
                    if statement.startswith("SELECT"):
                        cursor.fetchall()
                connection.commit()
            except pymysql.MySQLError:
                connection.rollback()
                continue
            lines.append(f"{time.time():.6f} {(time.perf_counter() - began) * 1000:.3f}")
    connection.close()
    Path(f"{out}.{number}").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a TPC-B-like application on MariaDB (pgbench's tpcb-like script)")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    url = os.environ["BENCH_WORKLOAD_URL"]
    import multiprocessing

    context = multiprocessing.get_context("fork")
    clients = [context.Process(target=_client, args=(url, args.scale, args.out, n)) for n in range(args.clients)]
    for client in clients:
        client.start()

    def forward(signum: int, _: object) -> None:
        for client in clients:
            if client.pid is not None:
                os.kill(client.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for client in clients:
        client.join()


if __name__ == "__main__":
    main()
