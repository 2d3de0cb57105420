"""The impact budget: a run that measures what it costs the application and paces itself.

``impact_budget=0.1`` says "the application may be at most 10% slower". Nothing here needs the
application's help: the database says how much it commits, how many of its sessions are busy,
and which of them wait on the run's locks.

- Now and then (at the start, then every ``REST_EVERY`` seconds of work) the run holds itself
  for ``REST_SECONDS`` — every worker's next claim waits — and measures the application alone:
  its commits per second and its busy sessions.
- While it works, every ``WINDOW`` seconds it measures them again. Fewer commits than alone is
  throughput lost; more busy sessions per commit is latency added (Little's law: sessions busy =
  commits per second x seconds per transaction). Sessions waiting on the run's own locks are
  harm with no doubt about its cause.
- Well within the budget (below ``HOLD_FROM`` of it) the pace goes up by ``INCREASE``; over it,
  down in proportion (additive increase, multiplicative decrease); in between it holds, so the
  harm settles below the budget rather than swinging about it. The pace is the share of time
  the run's workers spend in batches: after a batch of d seconds a worker rests
  d x (1 - pace) / pace.

Each decision is kept on the run in words ("backing off: 3 sessions waited on the run's locks"),
for ``status``, ``--json`` and the dashboard. The controller's memory lives on the run row too, so
any process watching the run carries it on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from backfill.database import APPLICATION_NAME

REST_SECONDS = 1.5
REST_EVERY = 15.0
WINDOW = 2.0
SETTLE_SECONDS = 0.25
"""Readings this soon after a rest begins are not the application alone yet: the batches in
flight are finishing."""
INCREASE = 0.05
DECREASE = 2 / 3
"""The decrease for sessions waiting on the run's locks."""
DECREASE_BOUNDS = (0.5, 5 / 6)
"""Any other harm multiplies the pace by budget / harm, within these: twice the budget halves
it, just over the budget takes off a sixth."""
HOLD_FROM = 2 / 3
"""Harm between this share of the budget and the budget holds the pace: a controller that sped
up until the budget was crossed would spend half its time over it."""
FIRST_PACE = 0.5
MIN_PACE = 0.02
IDLE_RATE = 1.0
"""Commits per second below which the application is taken to be idle: the run goes full speed."""
EMA = 0.5
RESTING = "measuring the application without the backfill (impact budget)"


@dataclass(frozen=True)
class Reading:
    """What the database says at one moment."""

    at: float
    """The database's clock, in seconds."""
    commits: float
    """A counter of the database's write transactions (PostgreSQL's next transaction id;
    MySQL/MariaDB's ``Handler_commit``)."""
    ours: int
    """Transactions of the run's own so far (its batches), to take off ``commits``."""
    busy: float
    """The application's sessions running a statement or inside a transaction, now."""
    blocked: int
    """The application's sessions waiting on a lock one of the run's sessions holds (PostgreSQL)."""


@dataclass(frozen=True)
class Window:
    seconds: float = 0.0
    commits: float = 0.0
    busy: float = 0.0
    samples: int = 0
    blocked: int = 0

    def add(self, seconds: float, commits: float, busy: float, blocked: int) -> Window:
        return Window(
            self.seconds + seconds,
            self.commits + commits,
            self.busy + busy,
            self.samples + 1,
            max(self.blocked, blocked),
        )

    @property
    def rate(self) -> float:
        return self.commits / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_busy(self) -> float:
        return self.busy / self.samples if self.samples else 0.0


@dataclass(frozen=True)
class State:
    phase: str = "rest"
    since: float = 0.0
    worked: float = 0.0
    """Seconds of work since the last rest."""
    last: Reading | None = None
    window: Window = Window()
    base_rate: float | None = None
    base_busy: float | None = None
    lost: float | None = None
    """Throughput lost against alone, averaged over the recent windows (one window's reading
    is noisy: the application's own rate moves by several percent from one second to the next)."""
    slower: float | None = None
    """Time per transaction added against alone, averaged likewise."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> State | None:
        if not raw:
            return None
        last = Reading(**raw["last"]) if raw.get("last") else None
        return cls(**{**raw, "last": last, "window": Window(**raw.get("window") or {})})


@dataclass(frozen=True)
class Decision:
    state: State
    pace: float
    note: str
    rest: bool
    """Hold the run: the application is being measured alone."""


def step(state: State | None, reading: Reading, pace: float | None, budget: float) -> Decision:
    """One reading into the controller: where it is, how fast the run may go, and why."""
    if state is None or state.last is None or reading.at <= state.last.at:
        fresh = State(phase="rest", since=reading.at, last=reading)
        return Decision(fresh, FIRST_PACE if pace is None else pace, RESTING, rest=True)
    pace = FIRST_PACE if pace is None else pace
    last = state.last
    seconds = reading.at - last.at
    own = (reading.ours - last.ours) * (1 if pace >= 1 else 2)  # a paced run claims apart from its commit
    commits = max(0.0, reading.commits - last.commits - own)
    state = dataclasses.replace(state, last=reading)
    if state.phase == "rest":
        if reading.at - state.since < SETTLE_SECONDS:
            return Decision(state, pace, RESTING, rest=True)
        window = state.window.add(seconds, commits, reading.busy, reading.blocked)
        if window.seconds < REST_SECONDS - SETTLE_SECONDS:
            return Decision(dataclasses.replace(state, window=window), pace, RESTING, rest=True)
        base_rate = _ema(state.base_rate, window.rate)
        base_busy = _ema(state.base_busy, window.mean_busy)
        measured = f"the application alone: {window.rate:,.0f} commits/s, {window.mean_busy:.1f} busy sessions"
        working = State(phase="work", since=reading.at, last=reading, base_rate=base_rate, base_busy=base_busy)
        return Decision(working, pace, measured, rest=False)
    window = state.window.add(seconds, commits, reading.busy, reading.blocked)
    worked = state.worked + seconds
    if window.seconds < WINDOW:
        return Decision(dataclasses.replace(state, window=window, worked=worked), pace, "", rest=False)
    pace, note, state = _judge(window, state, pace, budget)
    if worked >= REST_EVERY:
        resting = dataclasses.replace(state, phase="rest", since=reading.at, window=Window(), worked=0.0)
        return Decision(resting, pace, note, rest=True)
    return Decision(dataclasses.replace(state, window=Window(), worked=worked), pace, note, rest=False)


def _judge(window: Window, state: State, pace: float, budget: float) -> tuple[float, str, State]:
    base_rate, base_busy = state.base_rate or 0.0, state.base_busy or 0.0
    if base_rate < IDLE_RATE and window.rate < IDLE_RATE and window.mean_busy < 0.5:
        return 1.0, "the application is idle: full speed", state
    lost_now = 1 - window.rate / base_rate if base_rate >= IDLE_RATE else 0.0
    alone = base_busy / base_rate if base_rate >= IDLE_RATE else 0.0
    now = window.mean_busy / window.rate if window.rate > 0 else float("inf")
    slower_now = min(now / alone - 1, 10.0) if alone > 0 else 0.0
    lost, slower = _ema(state.lost, lost_now), _ema(state.slower, slower_now)
    state = dataclasses.replace(state, lost=lost, slower=slower)
    if window.blocked:
        reason, factor = f"{window.blocked} session(s) waited on the run's locks", DECREASE
    elif lost > budget:
        reason, factor = f"the application commits {lost:.0%} less than alone", _factor(budget, lost)
    elif slower > budget:
        reason, factor = f"the application's transactions take {slower:.0%} longer than alone", _factor(budget, slower)
    else:
        measured = f"commits {-lost:+.0%}, transaction time {slower:+.0%} against alone"
        if max(lost, slower) > budget * HOLD_FROM:
            return pace, f"near the budget ({measured}): pace holds at {pace:.0%}", state
        faster = min(1.0, pace + INCREASE)
        return faster, f"within budget ({measured}): pace {pace:.0%} -> {faster:.0%}", state
    slowed = max(MIN_PACE, pace * factor)
    return slowed, f"backing off: {reason}: pace {pace:.0%} -> {slowed:.0%}", state


def _factor(budget: float, harm: float) -> float:
    most, least = DECREASE_BOUNDS
    return min(least, max(most, budget / harm))


def _ema(old: float | None, new: float) -> float:
    return new if old is None else EMA * new + (1 - EMA) * old


# -- reading the database --------------------------------------------------------------------

_PG_READING = text(
    "SELECT extract(epoch FROM clock_timestamp()), pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
    "count(*) FILTER (WHERE a.state IN ('active', 'idle in transaction') AND a.application_name <> :ours), "
    "count(*) FILTER (WHERE a.wait_event_type = 'Lock' AND a.application_name <> :ours AND EXISTS ("
    "  SELECT 1 FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid)) AND b.application_name = :ours)) "
    "FROM pg_stat_activity a WHERE a.backend_type = 'client backend' AND a.datname = current_database() "
    "AND a.pid <> pg_backend_pid()"
)


def read(connection: Connection, ours: int, our_running: int) -> Reading | None:
    """The database's side of a reading (None where the database says nothing: SQLite)."""
    name = connection.dialect.name
    if name == "postgresql":
        at, commits, busy, blocked = connection.execute(_PG_READING, {"ours": APPLICATION_NAME}).one()
        return Reading(float(at), float(commits), ours, float(busy), int(blocked))
    if name in ("mysql", "mariadb"):
        status: dict[str, Any] = dict(
            connection.execute(
                text("SHOW GLOBAL STATUS WHERE Variable_name IN ('Handler_commit', 'Threads_running')")
            ).all()
        )
        at = float(connection.execute(text("SELECT UNIX_TIMESTAMP(NOW(6))")).scalar_one())
        busy = max(0, int(status["Threads_running"]) - 1 - our_running)
        return Reading(at, float(status["Handler_commit"]), ours, float(busy), 0)
    return None
