"""What must hold after every step of a schedule, and at its end.

Each check reads the database as it is (committed state only: the chooser never stops an actor
inside a transaction) and compares it with the simulation's own model of the application's rows.
A violation is a sentence naming what broke, prefixed with the check's name; the first one ends
the schedule.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from backfill.status import BatchStatus, Phase, RunStatus
from tests.sim.world import T0

if TYPE_CHECKING:
    from tests.sim.scenario import Schedule

OPEN = {BatchStatus.PENDING.value, BatchStatus.RUNNING.value}
LIVE = {BatchStatus.PENDING.value, BatchStatus.RUNNING.value, BatchStatus.SUCCEEDED.value}

CHECKS = (
    "finished",  # a finished run has no open batch, and its rows are done (the README's promise)
    "phases",  # the final pass begins only once no main batch is open
    "overlap",  # no key lies in two live batches of one phase
    "coverage",  # the main batches cover every key of the range the cursor passed
    "splits",  # a split's replacements partition its range: none lost, none outside
    "counters",  # rows_done, batches_done, batches_failed equal what the batches say
    "once",  # non-idempotent work runs once per time a row became pending
    "settings",  # what an operator last set is what is in force
    "leases",  # a batch is taken back only from a worker that is dead or frozen
    "logged",  # no event is logged for a transaction that did not commit
    "over",  # nothing counts once a run is over
    "escape",  # no library call lets an error escape to its caller's process
    "ends",  # once faults stop, the run reaches an end
    "stall",  # without crashes or lost messages, a runnable run never sits idle
    "rate",  # over any 10 s, rows done stay within the rate cap (+10%)
    "holds",  # no batch is claimed while the run is held or an operator's throttle is in force
    "pace",  # the impact budget's pace stays within its bounds
)


class Checker:
    def __init__(self, schedule: Schedule, checks: frozenset[str] = frozenset(CHECKS)) -> None:
        self.s = schedule
        self.checks = checks
        self.previous: tuple[str, int, int] | None = None
        self.seen_batches: set[int] = set()
        self.checked_splits: set[int] = set()
        self.progress_at = 0.0
        self.progress_mark: tuple[Any, ...] = ()
        self.events_seen = 0
        self.last_status: RunStatus | None = None
        self.stored: Counter[tuple[Any, ...]] = Counter()

    def _read(self) -> tuple[Any, list[Any], dict[int, Any]]:
        """The run, its batches and the application's rows, read with plain SQL on a raw
        connection: this runs after nearly every step, and must cost little."""
        raw = self.s.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(f"SELECT {', '.join(_RUN)} FROM backfill_runs ORDER BY id DESC LIMIT 1")
            found = cursor.fetchone()
            run = _Row(_RUN, found) if found else None
            cursor.execute(f"SELECT {', '.join(_BATCH)} FROM backfill_batches ORDER BY seq")
            batches = [_Row(_BATCH, r) for r in cursor.fetchall()]
            cursor.execute("SELECT id, counter, done, filled FROM items")
            rows = {r[0]: _Row(("id", "counter", "done", "filled"), r) for r in cursor.fetchall()}
            raw.rollback()
        finally:
            raw.close()
        return run, batches, rows

    def fail(self, check: str, message: str) -> None:
        if check not in self.checks or self.s.report.violations:
            return
        self.s.report.violations.append(f"{check}: {message}")
        self.s.sim.note(f"VIOLATION {check}: {message}")

    def status(self) -> RunStatus | None:
        """The run's status as of the last step that committed anything."""
        if self.last_status is None:
            run, _batches, _rows = self._read()
            self.last_status = RunStatus(run.status) if run is not None else None
        return self.last_status

    def after_step(self, step_started: float) -> None:
        run, batches, rows = self._read()
        if run is None:
            return
        self.last_status = RunStatus(run.status)
        if run.phase == Phase.CATCHUP.value and self.s.final_pass_at is None:
            self.s.final_pass_at = step_started
            who = self.s.sim.running.name if self.s.sim.running else "?"
            self.s.sim.note(f"{who}: the final pass began")
        self._structure(run, batches)
        self._splits(batches, rows)
        self._counters(run, batches)
        self._once(rows)
        self._settings(run)
        self._logged()
        self._over(run)
        self._holds(batches)
        self._pace(run)

    def _holds(self, batches: list[Any]) -> None:
        """A claim (a batch's ``started_at``, the database's time) never falls strictly inside a
        throttle an operator set, or between a hold and its release (the run's history)."""
        if "holds" not in self.checks:
            return
        windows = [(T0 + timedelta(seconds=a), T0 + timedelta(seconds=b), "throttled") for a, b in self.s.throttled]
        raw = self.s.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute('SELECT at, note, "after" FROM backfill_events WHERE batch_id IS NULL ORDER BY id')
            notes = cursor.fetchall()
            raw.rollback()
        finally:
            raw.close()
        since = None
        for at, note, after in notes:
            at = datetime.fromisoformat(at) if isinstance(at, str) else at
            if (note or "").startswith("held: "):
                since = since or (at, note[6:])
            elif since is not None and ((note or "").startswith("released after: ") or after != "running"):
                windows.append((since[0], at, since[1]))
                since = None
        if since is not None:
            windows.append((since[0], datetime.max, since[1]))
        for b in batches:
            claimed = b.started_at
            for start, end, why in windows:
                if claimed is not None and start < claimed < end:
                    at = (claimed - T0).total_seconds()
                    self.fail("holds", f"batch {b.seq} was claimed at {at:.2f}s while held ({why})")
                    return

    def _pace(self, run: Any) -> None:
        from backfill.impact import MIN_PACE

        if run.pace is not None and not MIN_PACE <= run.pace <= 1.0:
            self.fail("pace", f"the pace is {run.pace}, outside [{MIN_PACE}, 1]")

    def _structure(self, run: Any, batches: list[Any]) -> None:
        open_batches = [b for b in batches if b.status in OPEN]
        if run.status == RunStatus.FINISHED.value and open_batches:
            self.fail("finished", f"run finished with {len(open_batches)} batch(es) open: {_seqs(open_batches)}")
        if run.phase == Phase.CATCHUP.value:
            main_open = [b for b in open_batches if b.phase == Phase.MAIN.value]
            if main_open:
                self.fail("phases", f"the final pass began while main batches were open: {_seqs(main_open)}")
        for phase in (Phase.MAIN.value, Phase.CATCHUP.value):
            live = sorted((b for b in batches if b.phase == phase and b.status in LIVE), key=lambda b: b.first_key)
            for a, b in itertools.pairwise(live):
                if b.first_key <= a.last_key:
                    self.fail(
                        "overlap",
                        f"seq {a.seq} {a.first_key}..{a.last_key} ({a.status}) and seq {b.seq} "
                        f"{b.first_key}..{b.last_key} ({b.status}) share keys in the {phase} phase",
                    )
        covered = [b for b in batches if b.phase == Phase.MAIN.value and b.status != BatchStatus.SPLIT.value]
        reach = run.end_key if run.phase == Phase.CATCHUP.value else run.cursor
        if reach is not None:
            for key, model in sorted(self.s.rows.items()):
                if (
                    model.inserted_at < 0
                    and key <= reach[0]
                    and not any(b.first_key[0] <= key <= b.last_key[0] for b in covered)
                ):
                    self.fail("coverage", f"key {key}, there from the start and passed by the cursor {reach}, "
                                  "is in no main batch")  # fmt: skip
                    return

    def _splits(self, batches: list[Any], rows: dict[int, Any]) -> None:
        """A batch split in this step (a step is one transaction): the batches added in it over
        its range must hold exactly its keys — none lost, none outside."""
        new = [b for b in batches if b.id not in self.seen_batches]
        self.seen_batches.update(b.id for b in batches)
        for split in batches:
            if split.status != BatchStatus.SPLIT.value or split.id in self.checked_splits:
                continue
            self.checked_splits.add(split.id)
            lo, hi = split.first_key[0], split.last_key[0]
            parts = [b for b in new if b.phase == split.phase and b.first_key[0] <= hi and b.last_key[0] >= lo]
            if any(p.first_key[0] < lo or p.last_key[0] > hi for p in parts):
                self.fail("splits", f"batch {split.seq} {lo}..{hi} was split into {_ranges(parts)}, outside it")
                return
            # The halves are read after the batch was claimed: a key inserted since is, like any row
            # inserted into a batch's range after its keys were read, the final pass's.
            read_after = (split.started_at - T0).total_seconds() if split.started_at else float("inf")
            for key in sorted(rows):
                model = self.s.rows.get(key)
                there = model is not None and model.inserted_at < read_after
                if there and lo <= key <= hi and not any(p.first_key[0] <= key <= p.last_key[0] for p in parts):
                    self.fail("splits", f"batch {split.seq} {lo}..{hi} was split into {_ranges(parts)}: key {key} lost")
                    return

    def _counters(self, run: Any, batches: list[Any]) -> None:
        succeeded = [b for b in batches if b.status == BatchStatus.SUCCEEDED.value]
        failed = [b for b in batches if b.status == BatchStatus.FAILED.value]
        rows = sum(b.rows for b in succeeded)
        if run.rows_done != rows:
            self.fail("counters", f"rows_done {run.rows_done} but the succeeded batches hold {rows} rows")
        if run.batches_done != len(succeeded):
            self.fail("counters", f"batches_done {run.batches_done} but {len(succeeded)} batches succeeded")
        if run.batches_failed != len(failed):
            self.fail("counters", f"batches_failed {run.batches_failed} but {len(failed)} batches are failed")

    def _once(self, rows: dict[int, Any]) -> None:
        for key, row in rows.items():
            model = self.s.rows.get(key)
            if model is not None and row.counter > model.times_pending:
                self.fail(
                    "once", f"row {key} processed {row.counter} times, pending only {model.times_pending} time(s)"
                )
                return

    def _settings(self, run: Any) -> None:
        for name, value in self.s.expected.items():
            if getattr(run, name) != value:
                self.fail("settings", f"{name} is {getattr(run, name)!r}, but the operator last set {value!r}")
                return

    def _logged(self) -> None:
        """Every event logged so far is one the database holds (read as they come)."""
        if "logged" not in self.checks:
            return
        raw = self.s.engine.raw_connection()
        try:
            cursor = raw.cursor()
            seen = int(self.events_seen)
            cursor.execute(
                f'SELECT id, run_id, batch_id, "before", "after" FROM backfill_events WHERE id > {seen} ORDER BY id'
            )
            for event_id, *key in cursor.fetchall():
                self.stored[tuple(key)] += 1
                self.events_seen = event_id
            raw.rollback()
        finally:
            raw.close()
        logged = Counter((r, b, str(x) if x is not None else None, str(y)) for r, b, x, y in self.s.logged)
        extra = logged - self.stored
        if extra:
            self.fail("logged", f"logged events that never committed: {sorted(extra, key=str)[:3]}")

    def _over(self, run: Any) -> None:
        now = (run.status, run.rows_done, run.batches_done)
        prev = self.previous
        if prev is not None and RunStatus(prev[0]).is_over and prev[0] == now[0] and prev[1:] != now[1:]:
            self.fail("over", f"the run was {prev[0]}, yet its counters moved from {prev[1:]} to {now[1:]}")
        self.previous = now

    def leases(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("before") != "running" or "stopped answering" not in (event.get("error") or ""):
                continue
            pid = int(str(event.get("worker", "sim:0:")).split(":")[1])
            owner = next((p for p in self.s.sim.processes if p.pid == pid), None)
            if owner is not None and owner.alive and owner.frozen_until <= self.s.sim.t:
                self.fail(
                    "leases",
                    f"batch {event.get('batch_id')} was taken from {owner.name}, alive and answering "
                    f"(clock {owner.skew:+g}s)",
                )

    def calm_step(self) -> None:
        """In the calm phase of a schedule without crashes or lost messages: a running run that is
        not held makes progress (a batch claimed or finished, or a change of status) every 10 s."""
        if "stall" not in self.checks:
            return
        c = self.s.config
        if c.crashes or c.messages or c.rate_cap:
            return
        run, batches, _rows = self._read()
        if run is None:
            return
        mark = (run.status, run.phase, run.next_seq, tuple((b.id, b.status, b.attempts) for b in batches))
        if mark != self.progress_mark:
            self.progress_mark, self.progress_at = mark, self.s.sim.t
            return
        if run.status == RunStatus.RUNNING.value and not run.held_reason and self.s.sim.t - self.progress_at > 10.0:
            self.fail("stall", f"the run sat idle for {self.s.sim.t - self.progress_at:.0f}s with nothing failing")

    def at_end(self) -> None:
        if self.s.report.violations:
            return
        run, batches, rows = self._read()
        if run is None:
            return
        if not RunStatus(run.status).is_over:
            self.fail("ends", f"the run did not reach an end once faults stopped: still {run.status} ({run.phase})")
            return
        fixable = self.s.config.definition != "broken"
        if run.status == RunStatus.FAILED.value and fixable:
            self.fail(
                "ends", f"the run ended failed although its faults were fixed and it was retried: {run.last_error}"
            )
            return
        self._structure(run, batches)
        if run.status == RunStatus.FINISHED.value:
            self._finished_means_finished(run, rows)
        self._rate(batches)

    def _finished_means_finished(self, run: Any, rows: dict[int, Any]) -> None:
        kind = self.s.config.definition
        started_fp = self.s.final_pass_at
        end = run.end_key[0] if run.end_key else None
        for key, model in sorted(self.s.rows.items()):
            row = rows[key]
            if kind == "plain":
                # Without a predicate the promise covers the rows there at the start, and the keys
                # added past the end before the final pass began.
                there = model.inserted_at < 0
                past_end = end is None or key > end
                promised = there or (past_end and started_fp is not None and model.inserted_at < started_fp)
                if promised and row.counter != 1:
                    self.fail("finished", f"row {key} was processed {row.counter} times, not once")
                    return
                continue
            untouched = started_fp is not None and model.last_touch < started_fp
            pending = row.done == 0 if kind != "derived" else row.filled is None
            if untouched and (pending or row.counter != model.times_pending):
                self.fail(
                    "finished",
                    f"row {key} (untouched since before the final pass) is "
                    f"{'still pending' if pending else 'done'} after {row.counter} of {model.times_pending} passes",
                )
                return

    def _rate(self, batches: list[Any]) -> None:
        cap = self.s.config.rate_cap
        if not cap:
            return
        done = sorted((b.finished_at, b.rows) for b in batches if b.status == BatchStatus.SUCCEEDED.value)
        for i, (start, _) in enumerate(done):
            window = [r for at, r in done[i:] if at <= start + timedelta(seconds=10)]
            if sum(window) > cap * 10 * 1.1:
                self.fail(
                    "rate",
                    f"cap {cap:g} rows/s: {sum(window)} rows finished within 10 s from "
                    f"{(start - T0).total_seconds():.1f}s",
                )
                return


_RUN = (
    "id", "status", "phase", "cursor", "end_key", "next_seq", "held_reason", "rows_done", "batches_done",
    "batches_failed", "last_error", "parallelism", "max_attempts", "max_rows_per_second", "pace",
)  # fmt: skip
_BATCH = (
    "id", "seq", "phase", "status", "first_key", "last_key", "rows", "attempts", "created_at", "started_at",
    "finished_at",
)  # fmt: skip
_JSON = {"cursor", "end_key", "first_key", "last_key"}
_TIMES = {"created_at", "started_at", "finished_at"}


class _Row:
    """A row by column name, its JSON and time columns decoded as SQLAlchemy would."""

    def __init__(self, names: tuple[str, ...], values: Any) -> None:
        for name, value in zip(names, values, strict=True):
            if name in _JSON and isinstance(value, str):
                value = json.loads(value)
            elif name in _TIMES and isinstance(value, str):
                value = datetime.fromisoformat(value)
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:  # for mypy: the attributes are set above
        raise AttributeError(name)


def _seqs(batches: list[Any]) -> str:
    return ", ".join(f"{b.seq}:{b.status}" for b in batches[:6])


def _ranges(batches: list[Any]) -> str:
    return ", ".join(f"{b.first_key[0]}..{b.last_key[0]}" for b in batches) or "nothing"
