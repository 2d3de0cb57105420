"""(e): real ``python -m backfill worker`` and ``python -m backfill scheduler`` processes on the
real Redis, under a key prefix and queue of the benchmark's own, as a deployment runs them."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.procstat import children, command_line, peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BACKFILL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


class Cluster:
    def __init__(self, database_url: str, logs: Path, *, workers: int, tick_seconds: float | None) -> None:
        token = secrets.token_hex(4)
        self.prefix = f"backfill-bench-{token}:"
        self.queue = f"backfill-bench-{token}"
        self.workers = workers
        self.logs = logs
        self.env = {
            **os.environ,
            "BACKFILL_APP": "example_app.backfills",
            "BACKFILL_DATABASE_URL": database_url,
            "BACKFILL_BROKER_URL": REDIS_URL,
            "BACKFILL_REDIS_PREFIX": self.prefix,
            "BACKFILL_QUEUE": self.queue,
        }
        if tick_seconds is not None:
            self.env["BACKFILL_TICK_SECONDS"] = str(tick_seconds)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "backfill", *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes[name] = process
        return process

    def start(self, timeout: float = 90) -> None:
        self._spawn(
            "worker",
            "worker",
            "--concurrency",
            str(self.workers),
            "-n",
            f"bench-{self.queue}@%h",
            "--without-gossip",
            "--without-mingle",
        )
        self.wait_for_log("worker", "ready.", timeout)
        self._spawn("scheduler", "scheduler", "--schedule", str(self.logs / "beat-schedule"))
        self.wait_for_log("scheduler", "beat: Starting", timeout)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log(name)[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{name} never logged {text!r} in {timeout:.0f}s:\n{self.log(name)[-3000:]}")

    def tick_now(self) -> None:
        """Send a tick at once, rather than wait up to a beat interval for the next one: the
        benchmark times the run, not how long a freshly started run waits for the beat."""
        from celery import Celery

        from backfill.workers.settings import Settings

        settings = Settings.from_env(self.env)
        client = Celery("bench", broker=settings.broker_url)
        client.conf.update(settings.celery_config())
        try:
            client.send_task("backfill.tick", queue=settings.queue)
        finally:
            client.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")

    def worker_memory(self) -> dict[str, Any]:
        """Peak resident set of the worker's main process and of each pool process, in MB."""
        main = self.processes["worker"].pid
        pool = {pid: peak_rss_mb(pid) for pid in children(main)}
        return {
            "main_mb": peak_rss_mb(main),
            "pool_mb": [round(v, 1) for v in pool.values() if v is not None],
            "pool_commands": sorted({command_line(pid)[:80] for pid in pool}),
        }

    def stop(self) -> None:
        pool = children(self.processes["worker"].pid) if "worker" in self.processes else []
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in pool:  # pool processes outliving a main process that had to be killed
            if peak_rss_mb(pid) is not None and "backfill" in command_line(pid):
                os.kill(pid, signal.SIGKILL)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
