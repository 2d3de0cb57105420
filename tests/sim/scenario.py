"""One simulated schedule: a table, a backfill, processes working on it, faults, operators and
the application, interleaved by the seed; then a calm phase that must bring the run to its end.

``run_schedule(seed)`` returns a ``Report``: the violations found (empty when every invariant
held) and the trace of what happened, which a failing seed prints with its replay command.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from backfill import App, Backfill, Batch, Registry, Tuning, impact, tables
from backfill.dispatch import Dispatcher
from backfill.errors import BackfillError
from backfill.inline import InlineRunner
from backfill.status import RunStatus
from backfill.store import Store
from backfill.target import Target, resolve
from tests.sim import invariants, seams
from tests.sim.world import T0, Process, Sim

NAME = "sim"
_RUN_FIELDS = (
    "status", "phase", "cursor", "end_key", "planned_all", "next_seq", "batch_size", "parallelism",
    "rows_done", "batches_done", "batches_failed", "held_reason", "last_error",
)  # fmt: skip
CHAOS_STEPS = 80
CALM_SECONDS = 900.0
CALM_STEPS = 4000

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("counter", Integer, nullable=False, server_default="0"),
    Column("done", Integer, nullable=False, server_default="0"),
    Column("filled", Integer),
    # A poisoned row of a ``deferred_poison`` schedule gets a parent that does not exist: the work
    # succeeds, its COMMIT fails (SQLite then keeps the transaction and the write lock open).
    Column("parent", Integer, ForeignKey("parents.id", deferrable=True, initially="DEFERRED")),
)
parents = Table("parents", metadata, Column("id", Integer, primary_key=True, autoincrement=False))


@dataclass
class Config:
    """What a seed decides before the first step."""

    mode: str  # inline | celery | mixed
    definition: str  # pending | plain | derived | broken | trap
    keys: list[int]
    batch_size: int
    parallelism: int
    queued: bool
    runners: int
    workers: int
    chain_seconds: float
    operators: int
    app_writes: bool
    skew: bool
    poison: set[int]
    p_timeout: float
    p_transient: float
    rate_cap: float
    crashes: bool
    messages: bool
    target_seconds: float
    # Drawn from a random stream of their own (``_extras``), so that the schedules of every seed
    # from before they existed stay what they were when they are off.
    throttles: bool = False
    nice: float = 0.0
    impact: float = 0.0
    deferred_poison: bool = False
    """Poisoned rows fail the batch's COMMIT (a deferred foreign key) rather than its work."""

    @classmethod
    def draw(cls, rng: Any, force: dict[str, Any] | None = None, dialect: str = "sqlite") -> Config:
        n = rng.randint(3, 10)
        keys = sorted(rng.sample(range(1, 4 * n + 1), n))
        mode = rng.choice(["inline", "celery", "mixed"])
        definition = rng.choices(["pending", "plain", "derived", "broken", "trap"], [6, 3, 3, 1, 1])[0]
        if definition == "trap" and dialect != "sqlite":
            definition = "pending"  # its trap is a SQLite function
        crashes = rng.random() < 0.6
        config = cls(
            mode=mode,
            definition=definition,
            keys=keys,
            batch_size=rng.randint(1, 4),
            parallelism=rng.randint(1, 3),
            queued=rng.random() < 0.5,
            runners=rng.randint(1, 2),
            workers=rng.randint(1, 3),
            chain_seconds=rng.choice([0.0, 1.0, 30.0]),
            operators=rng.choices([0, 1, 2], [3, 3, 2])[0],
            app_writes=rng.random() < 0.7,
            skew=rng.random() < 0.3,
            poison=set(rng.sample(keys, rng.choice([0, 0, 1, 2]))),
            p_timeout=rng.choice([0.0, 0.0, 0.05, 0.15]),
            p_transient=rng.choice([0.0, 0.05]),
            rate_cap=rng.choice([0.0] * 6 + [2.0, 5.0]),
            crashes=crashes,
            messages=rng.random() < 0.5,
            target_seconds=rng.choice([0.0, 0.0, 0.03]),
        )
        extras = random.Random(rng.random())
        config.throttles = extras.random() < 0.3
        config.nice = extras.choice([0.0, 0.0, 0.0, 0.5])
        config.impact = extras.choice([0.0, 0.0, 0.0, 0.1])
        config.deferred_poison = extras.random() < 0.4
        for name, value in (force or {}).items():
            setattr(config, name, value)
        return config


@dataclass
class RowModel:
    inserted_at: float
    times_pending: int = 1
    last_touch: float = -1.0


@dataclass
class Report:
    seed: int
    config: Config
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    status: str = ""
    steps: int = 0
    final: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations


class _Trap:
    armed = False


_ENGINES: dict[str, Engine] = {}


def sqlite_database() -> Engine:
    """This process's simulation database: a file of its own (in memory-backed /dev/shm where
    there is one), with a connection per actor as processes would have. Made once per process
    and emptied before each schedule, so every schedule runs the statements it compiled."""
    engine = _ENGINES.get("sqlite")
    if engine is not None and _ENGINES.get("sqlite-pid") == os.getpid():  # type: ignore[comparison-overlap]
        return engine
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(folder, f"backfill-sim-{os.getpid()}.sqlite3")
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
    engine = create_engine(f"sqlite:///{path}", poolclass=QueuePool, pool_size=4, max_overflow=-1)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.create_function("sim_trap", 0, _trap_value)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = MEMORY")
        cursor.execute("PRAGMA synchronous = OFF")
        cursor.execute("PRAGMA busy_timeout = 0")  # an actor suspended holding the lock is a bug
        cursor.execute("PRAGMA foreign_keys = ON")  # as ``backfill.database`` has it
        cursor.close()

    metadata.create_all(engine)
    tables.metadata.create_all(engine)
    _ENGINES["sqlite"] = engine
    _ENGINES["sqlite-pid"] = os.getpid()  # type: ignore[assignment]
    return engine


_REFLECTED: dict[int, Table] = {}


def _target(engine: Engine, definition: Backfill) -> Target:
    """The definition checked against the table once, then its reflection reused: reflection is
    not what the simulation tests, and costs more than a schedule's steps."""
    table = _REFLECTED.get(id(engine))
    if table is None:
        with engine.connect() as connection:
            table = _REFLECTED[id(engine)] = resolve(connection, definition).table
    key = (table.c.id,)
    return Target(definition, table, key, (int,))


def postgres_database(admin_url: str) -> Callable[[], Engine]:
    """A factory of this process's simulation database on a PostgreSQL server: a database of
    its own, created on first use and dropped when the process exits."""

    def factory() -> Engine:
        engine = _ENGINES.get("postgresql")
        if engine is not None and _ENGINES.get("postgresql-pid") == os.getpid():  # type: ignore[comparison-overlap]
            return engine
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        name = f"backfill_sim_{os.getpid()}"
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine = create_engine(make_url(admin_url).set(database=name), pool_size=4, max_overflow=-1)
        metadata.create_all(engine)
        tables.metadata.create_all(engine)

        def drop() -> None:
            engine.dispose()
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        atexit.register(drop)
        _ENGINES["postgresql"] = engine
        _ENGINES["postgresql-pid"] = os.getpid()  # type: ignore[assignment]
        return engine

    return factory


def _empty(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                text("TRUNCATE backfill_events, backfill_batches, backfill_runs, items, parents RESTART IDENTITY")
            )
            return
        for table in (tables.events, tables.batches, tables.runs, items, parents):
            connection.execute(table.delete())


def _trap_value() -> int:
    if _Trap.armed:
        raise ValueError("the trap is armed")
    return 0


class Schedule:
    def __init__(
        self,
        seed: int,
        engine_factory: Callable[[], Engine] = sqlite_database,
        *,
        checks: frozenset[str] = frozenset(invariants.CHECKS),
        force: dict[str, Any] | None = None,
    ) -> None:
        self.seed = seed
        self.checks = checks
        self.engine = engine_factory()
        _empty(self.engine)
        self.sim = Sim(seed, self.engine)
        self.config = Config.draw(self.sim.rng, force, self.engine.dialect.name)
        self.report = Report(seed, self.config)
        self.rows: dict[int, RowModel] = {k: RowModel(-1.0) for k in self.config.keys}
        self.poison = set(self.config.poison)
        self.expected: dict[str, Any] = {}
        self.final_pass_at: float | None = None
        self.retried = False
        self.throttled: list[list[float]] = []
        """The operators' throttles: [from, until] in the database's time (seconds of the sim)."""
        self.readings = random.Random(seed * 7919 + 13)
        self.app_commits = 0
        self.logged: list[tuple[Any, ...]] = []
        self.logged_details: list[dict[str, Any]] = []
        self.definition = self._definition()
        self.registry = Registry.of(self.definition)
        self.app = App(self.engine, self.registry, time=seams.SimTime(self.sim))
        self.app.targets._resolved[NAME] = _target(self.engine, self.definition)

    # -- the backfill ---------------------------------------------------------------------

    def _definition(self) -> Backfill:
        c = self.config
        tuning = Tuning(
            batch_size=c.batch_size,
            parallelism=c.parallelism,
            target_batch_seconds=c.target_seconds,
            min_batch_size=1,
            max_batch_size=8,
            max_attempts=3,
            max_rows_per_second=c.rate_cap,
            max_failed_ratio=0.5,
            min_batches_for_ratio=6,
            nice_ratio=c.nice,
            impact_budget=c.impact,
        )
        kind = c.definition
        pending = {
            "pending": "done = 0",
            "broken": "done = 0",
            "trap": "done = 0 AND sim_trap() = 0",
            "plain": None,
            "derived": None,
        }[kind]
        columns = ("filled",) if kind == "derived" else ()
        guard = {"pending": " AND done = 0", "trap": " AND done = 0", "derived": " AND filled IS NULL"}.get(kind, "")
        sets = "counter = counter + 1" if kind == "broken" else "counter = counter + 1, done = 1, filled = 1"
        statement = text(f"UPDATE items SET {sets} WHERE id BETWEEN :first AND :last{guard}")

        def work(connection: Connection, batch: Batch) -> int:
            with self.sim.working():
                result = connection.execute(statement, batch.params())
                self.sim.t += 0.01 * max(1, batch.rows)  # the work takes time, holding its locks
                self._fault(connection, batch)
            return int(result.rowcount)

        return Backfill(name=NAME, table="items", key="id", work=work, pending=pending, columns=columns, tuning=tuning)

    def _fault(self, connection: Connection, batch: Batch) -> None:
        sim = self.sim
        poisoned = [k for k in self.poison if batch.first[0] <= k <= batch.last[0]]
        if poisoned and self.config.deferred_poison:
            connection.execute(items.update().where(items.c.id.in_(poisoned)).values(parent=-1))
        elif poisoned:
            raise ValueError("a poisoned row")
        if not sim.faults:
            return
        if sim.rng.random() < self.config.p_timeout:
            raise OperationalError("UPDATE items", {}, sqlite3.OperationalError("interrupted"))
        if sim.rng.random() < self.config.p_transient:
            raise OperationalError("UPDATE items", {}, sqlite3.OperationalError("database is locked"))

    # -- actors ---------------------------------------------------------------------------

    def _store(self) -> Store:
        return seams.store(self.sim, self.engine)

    def _app(self, process: Process) -> App:
        """The library as one simulated process sees it: its own clock and name, the
        database's clock, and the targets already reflected (reflection is not under test)."""
        app = App(self.engine, self.registry, host=seams.host(self.sim, process), time=seams.SimTime(self.sim))
        app.targets._resolved.update(self.app.targets._resolved)
        return app

    def runner(self, process: Process) -> None:
        def body() -> None:
            app = self._app(process)
            run = app.store.active_run(NAME)
            if run is None or run.status is RunStatus.PAUSED:
                return
            InlineRunner(
                app.store,
                app.targets,
                threads=self.sim.rng.randint(1, 2),
                host=app.host,
                pool=seams.in_this_greenlet,
            ).run(run)

        self.sim.spawn(f"{process.name}/run", "runner", process, body)
        self._heartbeat(process)

    def worker(self, process: Process) -> None:
        def body() -> None:
            app = self._app(process)
            dispatcher = Dispatcher(
                app.store,
                app.targets,
                self.sim.send,
                redispatch_after=60.0,
                chain_seconds=self.config.chain_seconds,
                host=app.host,
            )
            while True:
                message = self.sim.receive()
                if message is None:
                    self.sim.sleep(0.5)
                    continue
                self.sim.note(f"{process.name} takes message {message.id} (batch {message.batch_id})")
                dispatcher.execute(message.batch_id)

        self.sim.spawn(f"{process.name}/worker", "worker", process, body)
        self._heartbeat(process)

    def ticker(self, process: Process) -> None:
        def body() -> None:
            app = self._app(process)
            dispatcher = Dispatcher(app.store, app.targets, self.sim.send, redispatch_after=60.0, host=app.host)
            while True:
                dispatcher.tick()
                self.sim.sleep(2.0)

        self.sim.spawn(f"{process.name}/tick", "tick", process, body)

    def _heartbeat(self, process: Process) -> None:
        def body() -> None:
            store = self._store()
            while True:
                self.sim.sleep(10.0)
                for claim, lease in list(process.claims.values()):
                    store.extend_lease(claim, lease)

        self.sim.spawn(f"{process.name}/heartbeat", "heartbeat", process, body)

    def application(self) -> None:
        process = self.sim.process("app")
        sim = self.sim

        def body() -> None:
            while True:
                sim.sleep(sim.rng.uniform(0.05, 3.0))
                roll = sim.rng.random()
                if self.config.definition == "trap" and roll < 0.05:
                    _Trap.armed = True
                    sim.note("app arms the trap in the pending predicate")
                elif roll < 0.5 or self.config.definition == "plain":
                    key = self._new_key()
                    with self.engine.begin() as connection:
                        connection.execute(items.insert().values(id=key))
                    self.app_commits += 1
                    self.rows[key] = RowModel(sim.t, 1, sim.t)
                    sim.note(f"app inserts {key}")
                else:
                    key = sim.rng.choice(sorted(self.rows))
                    with self.engine.begin() as connection:
                        changed = connection.execute(
                            text("UPDATE items SET done = 0, filled = NULL WHERE id = :k AND done = 1"), {"k": key}
                        ).rowcount
                    if changed:
                        self.rows[key].times_pending += 1
                        self.rows[key].last_touch = sim.t
                        sim.note(f"app sets {key} back to pending")

        sim.spawn("app", "app", process, body)

    def _new_key(self) -> int:
        top = max(self.rows)
        gaps = [k for k in range(1, top) if k not in self.rows]
        if gaps and self.sim.rng.random() < 0.6:
            return self.sim.rng.choice(gaps)
        return top + self.sim.rng.randint(1, 3)

    def operator(self, index: int) -> None:
        process = self.sim.process(f"operator{index}")
        sim = self.sim

        def body() -> None:
            app = self._app(process)
            actions, weights = ["retry", "split", "tune", "pause", "resume", "cancel", "fix"], [4, 3, 4, 2, 3, 0.3, 2]
            if self.config.throttles:
                actions, weights = [*actions, "throttle", "unthrottle"], [*weights, 3, 2]
            while True:
                sim.sleep(sim.rng.uniform(0.5, 8.0))
                action = sim.rng.choices(actions, weights)[0]
                try:
                    if action == "fix" and self.poison:
                        key = sim.rng.choice(sorted(self.poison))
                        self.poison.discard(key)
                        sim.note(f"operator{index} fixes the poisoned row {key}")
                    elif action in ("retry", "split"):
                        run, n = app.retry(NAME, split=action == "split")
                        sim.note(f"operator{index} {action}: {n} re-queued, run {run.status}")
                    elif action == "tune":
                        changes = {
                            "parallelism": sim.rng.randint(1, 3),
                            "max_attempts": sim.rng.randint(2, 4),
                        }
                        if sim.rng.random() < 0.5:
                            changes["batch_size"] = sim.rng.randint(1, 4)
                        run = app.tune(NAME, **changes)
                        self.expected.update({k: v for k, v in changes.items() if k != "batch_size"})
                        sim.note(f"operator{index} tunes {changes}")
                    elif action in ("pause", "resume", "cancel"):
                        run = getattr(app, action)(NAME)
                        sim.note(f"operator{index} {action}: run {run.status}")
                    elif action == "throttle":
                        seconds = sim.rng.uniform(1.0, 20.0)
                        run = app.throttle(NAME, seconds=seconds, reason=f"operator{index}")
                        assert run.throttled_until is not None
                        until = (run.throttled_until - T0).total_seconds()
                        self.throttled.append([until - seconds, until])
                        sim.note(f"operator{index} throttles for {seconds:.1f}s")
                    elif action == "unthrottle":
                        app.unthrottle(NAME)
                        self._lifted(sim.t)
                        sim.note(f"operator{index} lifts the throttle")
                except BackfillError as exc:
                    sim.note(f"operator{index} {action} refused: {exc}")

        sim.spawn(f"operator{index}", "operator", process, body)

    def _lifted(self, at: float) -> None:
        for window in self.throttled:
            window[1] = min(window[1], at)

    def _reading(self, connection: Connection, ours: int, our_running: int) -> impact.Reading:
        """The database's side of the impact budget's reading, made up by the simulation (SQLite
        has no other sessions): the application's commits and sessions, some waiting on ours."""
        r = self.readings
        return impact.Reading(
            at=self.sim.t, commits=float(self.app_commits + ours), ours=ours,
            busy=float(r.randint(0, 4)), blocked=r.choice([0, 0, 0, 1]),
        )  # fmt: skip

    # -- the schedule ---------------------------------------------------------------------

    def start(self) -> None:
        c = self.config
        with self.engine.begin() as connection:
            connection.execute(items.insert(), [{"id": k} for k in c.keys])
            connection.execute(text("UPDATE items SET done = 0"))
        if c.queued:
            self.app.store.create_run(self.definition, self.definition.tuning)
        else:
            self.app.start(NAME)
        self.expected = {
            "parallelism": c.parallelism,
            "max_attempts": 3,
            "max_rows_per_second": c.rate_cap,
        }
        sim = self.sim
        sim.p_crash_at_yield = 0.01 if c.crashes else 0.0
        sim.p_crash_at_commit = 0.01 if c.crashes else 0.0
        sim.p_crash_mid_work = 0.02 if c.crashes else 0.0
        sim.p_freeze = 0.01 if c.crashes else 0.0
        sim.p_commit_lost = 0.01 if c.crashes else 0.0
        sim.p_lose = 0.1 if c.messages else 0.0
        sim.p_duplicate = 0.1 if c.messages else 0.0
        sim.p_delay = 0.2 if c.messages else 0.0
        for i in range(c.runners if c.mode in ("inline", "mixed") else 0):
            self.runner(sim.process(f"runner{i}", self._skew()))
        if c.mode in ("celery", "mixed"):
            self.ticker(sim.process("beat", self._skew()))
            for i in range(c.workers):
                self.worker(sim.process(f"worker{i}", self._skew()))
        if c.app_writes:
            self.application()
        for i in range(c.operators):
            self.operator(i)

    def _skew(self) -> float:
        return self.sim.rng.choice([-45.0, 0.0, 45.0]) if self.config.skew else 0.0

    def calm(self) -> None:
        """Faults stop: no more crashes, losses, operators or application writes; a paused run
        is resumed, poisoned rows are fixed, and fresh processes take over."""
        sim = self.sim
        sim.faults = False
        self.poison.clear()
        _Trap.armed = False
        for actor in sim.actors:
            if actor.role in ("app", "operator"):
                actor.finished = True
        for process in sim.processes:
            process.frozen_until = 0.0
        self._recover()
        sim.note("calm phase")
        self.calm_workers()

    def calm_workers(self) -> None:
        sim = self.sim
        c = self.config
        if c.mode in ("inline", "mixed"):
            self.runner(sim.process("calm-runner"))
        if c.mode in ("celery", "mixed"):
            if not any(a.role == "tick" and a.alive for a in sim.actors):
                self.ticker(sim.process("calm-beat"))
            if not any(a.role == "worker" and a.alive for a in sim.actors):
                self.worker(sim.process("calm-worker"))

    def _recover(self) -> None:
        """What an operator does once the faults are over: resume a paused run, retry a failed
        one (its bad rows were fixed). A definition whose work is wrong cannot be helped."""
        run = self.app.store.latest_run(NAME)
        if run is None:
            return
        if run.status.is_active and (run.throttled_until is not None or run.throttle_query):
            self.app.unthrottle(NAME)
            self._lifted(self.sim.t)
            self.sim.note("calm: throttle lifted")
            run = self.app.store.get_run(run.id)
        if run.status is RunStatus.PAUSED:
            self.app.resume(NAME)
            self.sim.note("calm: resumed")
            self.checker.last_status = None
        elif run.status is RunStatus.FAILED and not self.retried:
            self.retried = True
            if self.config.definition == "broken":
                return  # its work cannot be fixed by a retry
            try:
                self.app.retry(NAME)
                self.sim.note("calm: retried")
                self.checker.last_status = None  # read it again: the retry moved it
            except BackfillError as exc:
                self.fail_recovery(f"a failed run cannot be retried: {exc}")

    def fail_recovery(self, message: str) -> None:
        self.report.violations.append(f"ends: {message}")
        self.sim.note(f"VIOLATION ends: {message}")

    def run(self) -> Report:
        sim = self.sim
        handler = _Capture(self.logged, self.logged_details)
        logger = logging.getLogger("backfill.events")
        level, propagate = logger.level, logger.propagate
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        reader = impact.read
        impact.read = self._reading  # type: ignore[assignment]
        try:
            with contextlib.nullcontext():
                self.start()
                checker = self.checker = invariants.Checker(self, self.checks)
                for _ in range(CHAOS_STEPS):
                    if not self._step(checker):
                        break
                if not self.report.violations:
                    self.calm()
                deadline = sim.t + CALM_SECONDS
                for _ in range(CALM_STEPS if not self.report.violations else 0):
                    status = checker.status()
                    if status is RunStatus.FAILED and not self.retried:
                        self._recover()
                        self.calm_workers()
                        continue
                    if status is not None and status.is_over and not self._runners_busy():
                        break
                    if sim.t > deadline or not self._step(checker):
                        break
                    checker.calm_step()
                checker.at_end()
        except OperationalError as exc:
            if "database is locked" not in str(exc):
                raise
            # Every actor waits for the lock in its turn (busy timeout 0): a lock still held
            # when the simulation itself needs it was kept by a connection nobody will release.
            self.fail_recovery(f"the database stayed locked (a connection kept the write lock): {exc.statement}")
        finally:
            impact.read = reader  # type: ignore[assignment]
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
            sim.close()
            _Trap.armed = False
        run = self.app.store.latest_run(NAME)
        self.report.final = self._describe_state()
        self.report.status = run.status.value if run else ""
        self.report.trace = sim.trace
        self.report.steps = sim.step_no
        return self.report

    def _describe_state(self) -> str:
        from backfill import tables

        with self.engine.connect() as conn:
            lines = [
                "run: " + ", ".join(f"{k}={v}" for k, v in r._mapping.items() if k in _RUN_FIELDS)
                for r in conn.execute(tables.runs.select())
            ]
            lines += [
                f"  batch {b.id} seq {b.seq} {b.phase} {b.first_key}..{b.last_key} rows {b.rows} {b.status} "
                f"attempts {b.attempts} worker {b.worker} dispatched {b.dispatched_at} error {b.error}"
                for b in conn.execute(tables.batches.select().order_by(tables.batches.c.seq))
            ]
        return "\n".join(lines)

    def _runners_busy(self) -> bool:
        return any(a.alive and a.glet is not None and a.role in ("runner",) for a in self.sim.actors)

    def _step(self, checker: invariants.Checker) -> bool:
        sim = self.sim
        before = sim.t
        commits = sim.commits
        logged = len(self.logged)
        progressed = sim.step()
        if sim.running is not None and len(self.logged) > logged:
            moves = ", ".join(_describe(e) for e in self.logged[logged:])
            sim.note(f"{sim.running.name}: {moves}")
            checker.leases(self.logged_details[logged:])
        for actor in sim.actors:
            if actor.error is not None and not getattr(actor, "reported", False):
                actor.reported = True  # type: ignore[attr-defined]
                checker.fail("escape", f"{actor.name} let an error escape: {type(actor.error).__name__}: {actor.error}")
        if sim.commits != commits or self.report.violations:
            checker.after_step(before)
        return progressed and not self.report.violations


def _describe(event: tuple[Any, ...]) -> str:
    _run, batch, before, after = event
    subject = f"batch {batch}" if batch is not None else "run"
    return f"{subject} {before or 'new'}->{after}"


class _Capture(logging.Handler):
    def __init__(self, sink: list[tuple[Any, ...]], details: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.details = details

    def emit(self, record: logging.LogRecord) -> None:
        f = getattr(record, "fields", {})
        self.sink.append((f.get("run_id"), f.get("batch_id"), f.get("before"), f.get("after")))
        self.details.append(f)


def run_schedule(
    seed: int,
    engine_factory: Callable[[], Engine] = sqlite_database,
    *,
    checks: frozenset[str] = frozenset(invariants.CHECKS),
    force: dict[str, Any] | None = None,
) -> Report:
    return Schedule(seed, engine_factory, checks=checks, force=force).run()
