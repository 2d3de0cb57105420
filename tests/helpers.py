"""Small things many tests share: waiting for a condition, the bad rows of the test app, a free
port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from tests.apps import counters
from tests.conftest import ROOT, Database

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30.0, what: str = "the condition", every: float = 0.05
) -> T:
    """Poll until ``condition()`` returns something truthy, and return it; past ``timeout``
    seconds fail, naming what was awaited and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        time.sleep(every)


def poison(db: Database, *ids: int) -> None:
    """Make the ``poisoned`` backfill fail on the batches holding these ids (none: on none)."""
    with db.engine.begin() as connection:
        connection.execute(counters.poison.delete())
        if ids:
            connection.execute(counters.poison.insert(), [{"id": i} for i in ids])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> str | None:
    """A page's body, or None while the server is not answering yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A user mistake is exactly one line on stderr, never a traceback."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def background(db: Database, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "backfill", *args],
        cwd=ROOT,
        env={**os.environ, "BACKFILL_DATABASE_URL": db.url, "BACKFILL_APP": "tests.apps.counters", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def metrics_page(db: Database) -> str:
    """What ``backfill metrics`` serves, read once from a real server process."""
    port = free_port()
    server = background(db, "metrics", "--port", str(port), "--addr", "127.0.0.1")
    try:
        return str(wait_for(lambda: fetch(f"http://127.0.0.1:{port}/metrics"), what="the metrics endpoint"))
    finally:
        server.terminate()
        server.wait(10)
