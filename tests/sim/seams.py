"""Where the simulation plugs into the library: a ``Host`` per simulated process (its clock, its
name, who on its host is gone, its heartbeat), the database's clock for the store, and the
inline runner's pool, which runs each batch in the calling greenlet."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, bindparam

from backfill.host import Host
from backfill.inline import _InThisThread
from backfill.store import Claim, Run, Store
from tests.sim.world import Process, Sim


class SimTime:
    """The database's clock: the simulation's, the same for every process."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    def now(self) -> ColumnElement[datetime]:
        # Read when the statement runs, as the server's clock would be.
        return bindparam(None, callable_=self.sim.db_now, type_=DateTime())


class SimClock:
    """A process's own clock: the simulated time, off by the process's skew."""

    def __init__(self, sim: Sim, process: Process) -> None:
        self.sim = sim
        self.process = process

    def monotonic(self) -> float:
        return self.sim.t + self.process.skew + 1000.0

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sim.sleep(seconds)


class SimHeartbeat:
    """Registers a process's claims; the process's heartbeat actor renews their leases."""

    def __init__(self, process: Process) -> None:
        self.process = process

    @contextmanager
    def keep(self, claim: Claim, lease: float) -> Iterator[None]:
        self.process.claims[claim.batch.id] = (claim, lease)
        try:
            yield
        finally:
            self.process.claims.pop(claim.batch.id, None)


def host(sim: Sim, process: Process) -> Host:
    def worker_name() -> str:
        actor = sim.current()
        return f"sim:{process.pid}:{actor.name if actor else 'main'}"

    def is_gone(worker: str) -> bool:
        """Known dead only for processes of this simulation's one host."""
        pid = int(worker.split(":")[1])
        return any(p.pid == pid and not p.alive for p in sim.processes)

    heartbeat = SimHeartbeat(process)
    return Host(
        clock=SimClock(sim, process),  # type: ignore[arg-type]
        worker_name=worker_name,
        is_gone=is_gone,
        heartbeat_seconds=10.0,
        heartbeat=lambda store, interval: heartbeat,
    )


def in_this_greenlet(threads: int, run: Run) -> futures.Executor:
    return _InThisThread()


def store(sim: Sim, engine: Any) -> Store:
    return Store(engine, time=SimTime(sim))
