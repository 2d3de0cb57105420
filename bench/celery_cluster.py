"""Real ``python -m backfill worker`` and ``python -m backfill scheduler`` processes on the real
Redis, under a key prefix and a queue of their own, as a deployment runs them: the benchmark's
(e) and the test suite's workers both start them here."""

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
REDIS_URL = os.environ.get("BACKFILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


class ClusterError(RuntimeError):
    """A worker or the scheduler died or never came up; the message carries its log's tail."""


class Cluster:
    """Workers and a scheduler for one database and one definitions module. ``label`` names the
    key prefix and the queue (with a random token, so concurrent runs never share a message);
    ``settings`` are ``BACKFILL_*`` variables every process gets."""

    def __init__(self, database_url: str, logs: Path, *, app: str, label: str, **settings: str) -> None:
        token = secrets.token_hex(4)
        self.prefix = f"backfill-{label}-{token}:"
        self.queue = f"backfill-{label}-{token}"
        self.logs = logs
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.env = {
            **os.environ,
            "BACKFILL_APP": app,
            "BACKFILL_DATABASE_URL": database_url,
            "BACKFILL_BROKER_URL": REDIS_URL,
            "BACKFILL_REDIS_PREFIX": self.prefix,
            "BACKFILL_QUEUE": self.queue,
            **settings,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "backfill", *args],
                cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.processes[name] = process
        return process

    def start_worker(self, name: str = "worker", concurrency: int = 1, *, timeout: float = 60, **env: str) -> subprocess.Popen[bytes]:  # fmt: skip
        args = (
            "--concurrency",
            str(concurrency),
            "-n",
            f"{name}-{self.queue}@%h",
            "--without-gossip",
            "--without-mingle",
        )
        process = self.spawn(name, "worker", *args, **env)
        self.wait_for_log(name, "ready.", timeout)
        return process

    def start_scheduler(self, name: str = "scheduler", *, wait: float | None = None) -> subprocess.Popen[bytes]:
        process = self.spawn(name, "scheduler", "--schedule", str(self.logs / f"{name}-schedule"))
        if wait is not None:
            self.wait_for_log(name, "beat: Starting", wait)
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if self.processes[name].poll() is not None:
                raise ClusterError(f"{name} exited:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{name} never logged {text!r} in {timeout:.0f}s:\n{self.log(name)[-3000:]}")
            time.sleep(0.1)

    def tick_now(self) -> None:
        """Send a tick at once, rather than wait up to a beat interval for the next one."""
        from celery import Celery

        from backfill.workers.settings import Settings

        settings = Settings.from_env(self.env)
        client = Celery("cluster", broker=settings.broker_url)
        client.conf.update(settings.celery_config())
        try:
            client.send_task("backfill.tick", queue=settings.queue)
        finally:
            client.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ClusterError(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")

    def worker_memory(self, name: str = "worker") -> dict[str, Any]:
        """Peak resident set of a worker's main process and of each pool process, in MB."""
        main = self.processes[name].pid
        pool = {pid: peak_rss_mb(pid) for pid in children(main)}
        return {
            "main_mb": peak_rss_mb(main),
            "pool_mb": [round(v, 1) for v in pool.values() if v is not None],
            "pool_commands": sorted({command_line(pid)[:80] for pid in pool}),
        }

    def lose_every_message(self) -> int:
        """What a flushed or restarted Redis does to this deployment: every key it had is gone."""
        keys = list(self.redis.scan_iter(match=f"{self.prefix}*"))
        if keys:
            self.redis.delete(*keys)
        return len(keys)

    def stop(self, *, graceful: bool = True) -> None:
        """Stop every process: a warm shutdown (batches in flight finish), or at once (a test's
        end, whose database goes next)."""
        pools = [pid for process in self.processes.values() for pid in children(process.pid)]
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in pools:  # pool processes outliving a main process that had to be killed
            if peak_rss_mb(pid) is not None and "backfill" in command_line(pid):
                os.kill(pid, signal.SIGKILL)
        self.lose_every_message()
        self.redis.close()
