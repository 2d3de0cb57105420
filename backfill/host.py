"""What a process knows of itself: its clock, the name its claims carry, which other workers on
its host are gone, and the heartbeat that keeps its claims alive.

Runners and executors take a ``Host`` rather than reaching for the OS themselves, so the same
code runs in a deterministic simulation, where every one of these is the simulation's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from backfill import environment
from backfill.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from backfill.store import Claim, Store

logger = logging.getLogger(__name__)
_HOST = socket.gethostname()

HEARTBEAT_ENV = "BACKFILL_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 10.0


def worker_name() -> str:
    """Who is running a batch: host, process and thread, so a dead owner can be recognised."""
    return f"{_HOST}:{os.getpid()}:{threading.current_thread().name}"


def worker_is_gone(worker: str) -> bool:
    """True when ``worker`` names a process on this host that no longer exists."""
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Heartbeat(Protocol):
    def keep(self, claim: Claim, lease: float) -> AbstractContextManager[None]:
        """Renew the claim's lease while the batch runs."""


class ThreadHeartbeat:
    """One thread per executor renewing the leases of the batches in progress."""

    def __init__(self, store: Store, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._claims: dict[int, tuple[Claim, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def keep(self, claim: Claim, lease: float) -> Iterator[None]:
        if self.store.borrowed:
            yield  # one borrowed connection serves one thread: no heartbeat beside the batch
            return
        with self._lock:
            self._claims[claim.batch.id] = (claim, lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="backfill-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._claims.pop(claim.batch.id, None)

    def _beat(self) -> None:
        while True:
            SYSTEM_CLOCK.sleep(self.interval)
            with self._lock:
                claims = list(self._claims.values())
            for claim, lease in claims:
                try:
                    self.store.extend_lease(claim, lease)
                except Exception:  # a missed beat is survivable; the next one tries again
                    logger.warning("heartbeat of batch %s failed", claim.batch.id, exc_info=True)


def heartbeat_seconds_from_env() -> float:
    return environment.seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS, zero=False, most=3600)


@dataclass(frozen=True)
class Host:
    clock: Clock = SYSTEM_CLOCK
    worker_name: Callable[[], str] = worker_name
    is_gone: Callable[[str], bool] = worker_is_gone
    heartbeat_seconds: float = field(default_factory=heartbeat_seconds_from_env)
    """How often a worker renews the leases of the batches it runs."""
    heartbeat: Callable[[Store, float], Heartbeat] = ThreadHeartbeat

    @property
    def lease_seconds(self) -> float:
        """How long a claim is honoured without a heartbeat: three missed heartbeats mean the
        worker is stuck or gone, and the batch may be handed to someone else."""
        return 3 * self.heartbeat_seconds


__all__ = ["Heartbeat", "Host", "ThreadHeartbeat", "worker_is_gone", "worker_name"]
