"""Real Celery worker and beat processes for the tests, on the real Redis, under a key prefix and
queue of the test's own so concurrent runs never share a message."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.conftest import ROOT, Database

REDIS_URL = os.environ.get("BACKFILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


class Cluster:
    def __init__(self, db: Database, logs: Path, **settings: str) -> None:
        token = secrets.token_hex(4)
        self.prefix = f"backfill-test-{token}:"
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.logs = logs
        self.env = {
            **os.environ,
            "BACKFILL_DATABASE_URL": db.url,
            "BACKFILL_APP": "tests.apps.counters",
            "BACKFILL_BROKER_URL": REDIS_URL,
            "BACKFILL_REDIS_PREFIX": self.prefix,
            "BACKFILL_QUEUE": f"backfill-test-{token}",
            "BACKFILL_TICK_SECONDS": "0.5",
            "BACKFILL_REDISPATCH_SECONDS": "3",
            **settings,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "backfill", *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = process
        return process

    def start_worker(self, name: str, concurrency: int = 1, **env: str) -> subprocess.Popen[bytes]:
        process = self._spawn(
            name,
            "worker",
            "--concurrency",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            **env,
        )
        self.wait_for_log(name, "ready.")
        return process

    def start_scheduler(self) -> subprocess.Popen[bytes]:
        return self._spawn("scheduler", "scheduler", "--schedule", str(self.logs / "beat-schedule"))

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited:\n{self.log(name)[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{name} never logged {text!r}:\n{self.log(name)[-3000:]}")

    def lose_every_message(self) -> int:
        """What a flushed or restarted Redis does to this deployment: every key it had is gone."""
        keys = list(self.redis.scan_iter(match=f"{self.prefix}*"))
        if keys:
            self.redis.delete(*keys)
        return len(keys)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.lose_every_message()
        self.redis.close()
