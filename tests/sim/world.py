"""The simulated world: one database, a simulated clock, processes made of actors, a broker.

Every actor (a planner, a runner, a Celery worker, the beat tick, a heartbeat thread, the
application, an operator) is a greenlet running the library's real code. Whenever that code is
about to begin a database transaction it hands control back to the chooser, which decides —
from one seeded random stream — who runs next, whether time jumps, whether a process crashes
or freezes, and what the broker does with a message. Only one actor runs at a time and none is
ever suspended inside a transaction, so a seed replays the same interleaving exactly.

A crash is a SIGKILL: the process's actors are abandoned where they stand (no ``finally``
block runs), and the transaction one of them had open is rolled back by the "server".
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from greenlet import greenlet
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

T0 = datetime(2030, 1, 1, 12, 0, 0)


class Abandoned(BaseException):
    """Raised into nothing: marks a greenlet the simulation will never resume."""


@dataclass(eq=False)
class Process:
    """An OS process: its actors die together, and its clock may be off by ``skew``."""

    name: str
    pid: int
    skew: float = 0.0
    alive: bool = True
    frozen_until: float = 0.0
    claims: dict[int, Any] = field(default_factory=dict)
    """Batches its executors hold, by batch id, for its heartbeat actor: (claim, lease)."""


@dataclass(eq=False)
class Actor:
    name: str
    role: str
    process: Process
    body: Callable[[], Any]
    glet: greenlet | None = None
    wake_at: float = 0.0
    finished: bool = False
    error: BaseException | None = None
    in_work: bool = False

    @property
    def alive(self) -> bool:
        return self.process.alive and not self.finished and self.error is None

    def runnable(self, now: float) -> bool:
        return self.alive and self.wake_at <= now and self.process.frozen_until <= now


@dataclass
class Message:
    id: int
    batch_id: int
    deliver_after: float


class Sim:
    """The chooser and the clock. ``t`` is simulated seconds since ``T0`` on the database's
    clock; a process's own clock reads ``t + skew``."""

    def __init__(self, seed: int, engine: Engine) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.engine = engine
        self.t = 0.0
        self.main = greenlet.getcurrent()
        self.actors: list[Actor] = []
        self.processes: list[Process] = []
        self.by_glet: dict[greenlet, Actor] = {}
        self.graveyard: list[greenlet] = []
        self.trace: list[str] = []
        self.broker: list[Message] = []
        self.message_ids = 0
        self.step_no = 0
        self.commits = 0
        self.over = False
        self.running: Actor | None = None
        self.faults = True
        self.p_crash_at_yield = 0.0
        self.p_crash_at_commit = 0.0
        self.p_crash_mid_work = 0.0
        self.p_freeze = 0.0
        self.p_commit_lost = 0.0
        self.p_lose = 0.0
        self.p_duplicate = 0.0
        self.p_delay = 0.0
        event.listen(engine, "begin", self._on_begin, insert=True)
        event.listen(engine, "commit", self._on_commit)
        event.listen(engine, "before_cursor_execute", self._on_execute)

    # -- time -----------------------------------------------------------------------------

    def db_now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)

    def local_now(self) -> datetime:
        """The wall clock of the process now running (the database's, off by its skew)."""
        actor = self.current()
        skew = actor.process.skew if actor is not None else 0.0
        return T0 + timedelta(seconds=self.t + skew)

    def monotonic(self) -> float:
        actor = self.current()
        return self.t + (actor.process.skew if actor is not None else 0.0) + 1000.0

    def sleep(self, seconds: float) -> None:
        actor = self.current()
        if actor is None:
            self.t += max(0.0, seconds)
            return
        actor.wake_at = self.t + max(0.0, seconds)
        self._yield("sleep")

    # -- actors ---------------------------------------------------------------------------

    def process(self, name: str, skew: float = 0.0) -> Process:
        process = Process(name, 10_000 + len(self.processes), skew)
        self.processes.append(process)
        return process

    def spawn(self, name: str, role: str, process: Process, body: Callable[[], Any], *, at: float = 0.0) -> Actor:
        actor = Actor(name, role, process, body, wake_at=max(at, self.t))
        actor.glet = greenlet(run=body, parent=self.main)
        self.by_glet[actor.glet] = actor
        self.actors.append(actor)
        return actor

    def current(self) -> Actor | None:
        return self.by_glet.get(greenlet.getcurrent())

    def note(self, text: str) -> None:
        self.trace.append(f"[{self.step_no:4d} t={self.t:8.3f}] {text}")

    def _yield(self, where: str) -> None:
        actor = self.current()
        if actor is None:
            return
        if self.over:
            raise Abandoned
        self.main.switch()
        if self.over:
            raise Abandoned

    # -- database hooks -------------------------------------------------------------------

    def _on_begin(self, conn: Any) -> None:
        self._yield("begin")
        if conn.dialect.name == "sqlite":
            # Writers queue at BEGIN, as in ``backfill.database``; taken after the yield, so no
            # actor is ever suspended holding the lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _on_commit(self, conn: Any) -> None:
        actor = self.current()
        if actor is not None and self.faults and actor.role in ("runner", "worker"):
            if self.rng.random() < self.p_crash_at_commit:
                self.note(f"CRASH {actor.process.name} at commit ({actor.name})")
                _server_rollback(conn)
                self.crash(actor.process, switch=True)
            if self.rng.random() < self.p_commit_lost:
                # The connection dropped as the COMMIT went out: the server rolled back, the
                # client sees a lost connection (a transient error).
                self.note(f"{actor.name}: the connection dropped at COMMIT")
                _server_rollback(conn)
                raise OperationalError("COMMIT", {}, _ConnectionLost("server closed the connection unexpectedly"))
        self.commits += 1

    def _on_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        actor = self.current()
        if actor is not None and actor.in_work and self.faults and self.rng.random() < self.p_crash_mid_work:
            self.note(f"CRASH {actor.process.name} mid-work ({actor.name})")
            _server_rollback(conn)
            self.crash(actor.process, switch=True)

    @contextmanager
    def working(self) -> Iterator[None]:
        actor = self.current()
        if actor is not None:
            actor.in_work = True
        try:
            yield
        finally:
            if actor is not None:
                actor.in_work = False

    # -- faults ---------------------------------------------------------------------------

    def crash(self, process: Process, *, switch: bool = False) -> None:
        """SIGKILL: every actor of ``process`` is abandoned where it stands."""
        process.alive = False
        for actor in self.actors:
            if actor.process is process and actor.glet is not None and not actor.glet.dead:
                self.graveyard.append(actor.glet)
        if switch:
            self.main.switch()
            raise AssertionError("a crashed process was resumed")

    # -- the broker -----------------------------------------------------------------------

    def send(self, batch_id: int) -> None:
        if self.faults and self.rng.random() < self.p_lose:
            self.note(f"message for batch {batch_id} LOST")
            return
        delay = self.rng.uniform(0, 5) if self.faults and self.rng.random() < self.p_delay else 0.0
        self.message_ids += 1
        self.broker.append(Message(self.message_ids, batch_id, self.t + delay))

    def receive(self) -> Message | None:
        ready = [m for m in self.broker if m.deliver_after <= self.t]
        if not ready:
            return None
        message = self.rng.choice(ready)  # delivery order is not send order
        if not (self.faults and self.rng.random() < self.p_duplicate):
            self.broker.remove(message)
        else:
            self.note(f"message {message.id} for batch {message.batch_id} DUPLICATED")
        return message

    # -- the chooser ----------------------------------------------------------------------

    def step(self) -> bool:
        """Run one actor up to its next yield; False when nothing can ever run again."""
        self.step_no += 1
        self.running = None
        runnable = [a for a in self.actors if a.runnable(self.t)]
        if not runnable:
            waiting = [max(a.wake_at, a.process.frozen_until) for a in self.actors if a.alive and a.glet is not None]
            if not waiting:
                return False
            self.t = max(self.t, min(waiting))
            return True
        actor = self.rng.choice(runnable)
        if self.faults and actor.role in ("runner", "worker") and self.rng.random() < self.p_crash_at_yield:
            self.note(f"CRASH {actor.process.name} at a transaction boundary ({actor.name})")
            self.crash(actor.process)
            return True
        if self.faults and actor.role in ("runner", "worker") and self.rng.random() < self.p_freeze:
            pause = self.rng.choice([5.0, 40.0, 120.0])
            actor.process.frozen_until = self.t + pause
            self.note(f"FREEZE {actor.process.name} for {pause:g}s")
            return True
        assert actor.glet is not None
        self.running = actor
        try:
            actor.glet.switch()
        except Abandoned:
            actor.finished = True
        except Exception as exc:  # the library let an error escape: the caller decides
            actor.error = exc
            self.note(f"{actor.name} raised {type(exc).__name__}: {exc}")
        if actor.glet.dead and actor.error is None:
            actor.finished = True
        self.t += self.rng.choice((0.0005, 0.002, 0.01, 0.05, 0.3))
        return True

    def close(self) -> None:
        """Abandon everything still suspended; their ``finally`` blocks find the world over."""
        self.over = True
        for actor in self.actors:
            if actor.glet is not None and not actor.glet.dead:
                self.graveyard.append(actor.glet)
        pool_logger = logging.getLogger("sqlalchemy.pool")
        disabled, pool_logger.disabled = pool_logger.disabled, True
        try:
            for glet in self.graveyard:
                if not glet.dead:
                    with contextlib.suppress(BaseException):  # what it does on its way out is moot
                        glet.throw(Abandoned)
        finally:
            pool_logger.disabled = disabled
        self.graveyard.clear()
        event.remove(self.engine, "begin", self._on_begin)
        event.remove(self.engine, "commit", self._on_commit)
        event.remove(self.engine, "before_cursor_execute", self._on_execute)


def _server_rollback(conn: Any) -> None:
    """What the server does with the open transaction of a connection whose process died."""
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite":
        if dbapi.in_transaction:
            dbapi.execute("ROLLBACK")
    else:
        dbapi.rollback()


class _ConnectionLost(Exception):
    """A driver error of the kind a dropped connection raises (SQLSTATE class 08)."""

    sqlstate = "08006"
