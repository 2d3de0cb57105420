"""What a run does next: fix its end, plan batches ahead of the workers, move to the final pass,
and call the run finished or failed once nothing is left.

Planning is lazy, one batch boundary at a time from the checkpointed cursor, so a run over
hundreds of millions of rows holds only a handful of batch rows ahead of the work, and a run
whose messages or workers were all lost is planned again from the database alone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from backfill import failures, health, impact, keyset, replicas, sizing
from backfill.clock import SYSTEM_CLOCK, Clock
from backfill.definition import Backfill, Key
from backfill.errors import AppError, PlanningError, TargetError
from backfill.estimate import estimate_rows
from backfill.keyset import encode_key
from backfill.status import BatchStatus, Phase, RunStatus
from backfill.store import BatchRecord, Run, Store
from backfill.target import Targets

logger = logging.getLogger(__name__)

ADAPT_EVERY = 2
"""Batches between two adjustments of the batch size."""
ADAPT_WINDOW = 8
"""Recent batches whose time per row the next size is computed from (``sizing.ms_per_row``)."""


@dataclass(frozen=True)
class Plan:
    """A run as the planner left it, and its batches that are planned but not done."""

    run: Run
    open_batches: tuple[BatchRecord, ...]

    @property
    def pending(self) -> tuple[BatchRecord, ...]:
        """Planned batches to start now: none while the run is held."""
        if self.run.held_reason:
            return ()
        return tuple(b for b in self.open_batches if b.status is BatchStatus.PENDING)

    @property
    def over(self) -> bool:
        return self.run.status.is_over


def too_many_failures(run: Run) -> bool:
    """The failure policy: past the ratio, over enough batches to judge, a run stops."""
    finished = run.batches_done + run.batches_failed
    return (
        run.batches_failed > 0
        and finished >= run.tuning.min_batches_for_ratio
        and run.batches_failed / finished > run.tuning.max_failed_ratio
    )


def failure_stop(run: Run) -> str | None:
    """Why the failure policy stops ``run``, or None."""
    if not too_many_failures(run):
        return None
    return (
        f"stopped: {run.batches_failed} of {run.batches_done + run.batches_failed} batches failed, "
        f"more than {run.tuning.max_failed_ratio:.0%}; last: {run.last_error}"
    )


class Planner:
    def __init__(self, store: Store, targets: Targets, *, lookahead: int = 1, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.targets = targets
        self.lookahead = lookahead
        self.clock = clock
        self._watched: dict[int, float] = {}
        self.replica_urls = replicas.urls_from_environment()
        self._adapted_at: dict[int, int] = {}
        self._unknown: set[str] = set()

    def activate(self, run: Run) -> Run:
        """pending -> running: fix the run's end at the key's current maximum.

        Rows inserted past the end from now on belong to the final pass, so the main sweep
        has a known size and the application's new rows are never chased.
        """
        if run.status is not RunStatus.PENDING:
            return run
        earlier = [r for r in self.store.active_runs_on(run.table_name, run.schema_name) if r.id < run.id]
        if self.conflicting(run.name, earlier) is not None:
            return run  # queued behind a run that needs the table to itself
        target = self.targets.for_run(run)
        with self._planning(run), self.store.reading() as connection:
            end = keyset.last_key(connection, target.key_columns)
            total, estimated = estimate_rows(connection, target.table)
        return self.store.activate(run, end=end, rows_total=total, estimated=estimated) or self.store.get_run(run.id)

    def conflicting(self, name: str, others: Iterable[Run]) -> Run | None:
        """The first of ``others`` that may not run beside backfill ``name`` on its table."""

        def exclusive(run_name: str) -> bool:
            definition = self.targets.definitions.get(run_name)
            return definition is None or definition.exclusive

        for other in others:
            if other.name != name and (exclusive(name) or exclusive(other.name)):
                return other
        return None

    def release_stale(self, run: Run, is_abandoned: Callable[[str], bool] | None = None) -> int:
        return self.store.release_stale(run, is_abandoned=is_abandoned)

    def tick(self, run: Run, *, plan: bool = True) -> Plan:
        """Bring one run forward as far as it can go without running anything (without
        ``plan``: all but planning batches, for a runner whose chains plan their own).

        An error in the definition's own SQL while planning (a ``pending`` predicate that fails,
        a table gone) ends the run failed with that error, as a failing batch would; a run whose
        definition this process does not have is left to processes that have it.
        """
        run = self.store.get_run(run.id)
        try:
            return self._tick(run, plan)
        except AppError as exc:
            if run.name not in self._unknown:
                self._unknown.add(run.name)
                logger.warning("run %s of backfill %s left alone: %s", run.id, run.name, exc)
            return Plan(run, ())
        except (PlanningError, TargetError) as exc:
            error = str(exc)
            logger.warning("run %s of backfill %s stopped: %s", run.id, run.name, error)
            return Plan(self.store.stop(run, error) or self.store.get_run(run.id), ())

    def _tick(self, run: Run, plan: bool = True) -> Plan:
        if run.status is RunStatus.PENDING:
            run = self.activate(run)
        if run.status is not RunStatus.RUNNING:
            return Plan(run, ())
        if too_many_failures(run):  # decided again under the run's lock, from the run as it is then
            stopped = self.store.stop_if(run, failure_stop)
            return Plan(stopped or self.store.get_run(run.id), ())
        run = self._adapt(run)
        open_batches = self.store.open_batches(run.id)
        run = self.watch(run)
        if run.status is not RunStatus.RUNNING:
            return Plan(run, ())
        if run.held_reason:
            return Plan(run, tuple(open_batches))
        wanted = run.tuning.parallelism + self.lookahead if plan else 0
        while len(open_batches) < wanted and not run.planned_all:
            planned = self._plan(run, wanted - len(open_batches))
            if planned is None:  # another planner moved the run on: start again from what it did
                run = self.store.get_run(run.id)
                if run.status is not RunStatus.RUNNING:
                    return Plan(run, ())
                open_batches = self.store.open_batches(run.id)
                continue
            run, new_batches = planned
            open_batches.extend(new_batches)
        if run.planned_all and not open_batches:
            # The database decides: conclude() re-checks, under the run's lock, that no batch is open.
            run = self.store.conclude(run, self._catchup_cursor(run), self._verify(run))
            if run.status is RunStatus.RUNNING and not run.planned_all:
                return self._tick(run, plan)
        return Plan(run, tuple(open_batches))

    def plan_ahead(self, run: Run, count: int) -> Run:
        """Plan up to ``count`` more batches of ``run`` as it is now, at the batch size the
        recent batches call for: for a chain whose planned batches run low (the periodic tick
        keeps the rest: holds, phases). Losing to another planner is fine: it planned them."""
        if run.status is not RunStatus.RUNNING or run.planned_all or run.held_reason:
            return run
        run = self._adapt(run)  # the batches about to be planned take the size the run has come to
        try:
            planned = self._plan(run, count)
        except (AppError, TargetError, PlanningError):
            return run  # the next full tick says so on the run
        return planned[0] if planned is not None else run

    def _catchup_cursor(self, run: Run) -> Key | None:
        """Where the final pass starts: with a pending predicate, at the start of the key space
        (it looks for pending rows everywhere); without one, at the end of the main sweep."""
        target = self.targets.for_run(run)
        return None if target.definition.has_pending else target.decode(run.end_key)

    def _verify(self, run: Run) -> Callable[[Connection], str | None] | None:
        """The definition's post-condition, as the store checks it before a run may finish."""
        definition = self.targets.for_run(run).definition
        if definition.verify is None:
            return None

        def wrong(connection: Connection) -> str | None:
            found = definition.violations(connection)
            if not found:
                return None
            return (
                f"verify found {found:,} row(s) still wrong: {definition.verify_text}; fix the work or the data, "
                f"then `backfill retry {run.name}` checks again"
            )

        return wrong

    def waiting_for(self, definition: Backfill) -> str | None:
        """The first backfill this one runs ``after`` whose latest run is not finished, in words."""
        for name in definition.after:
            latest = self.store.latest_run(name)
            if latest is None or latest.status is not RunStatus.FINISHED:
                state = "it has never run" if latest is None else f"run {latest.id} is {latest.status}"
                return f"waiting for backfill '{name}' to finish ({state}): `backfill run {name}`"
        return None

    def watch_due(self, run: Run) -> bool:
        """Whether ``watch`` would look at the run now: a chain asks between batches without
        taking the lock the planner is shared under, so a tick in progress does not hold it."""
        last = self._watched.get(run.id, float("-inf"))
        return run.status is RunStatus.RUNNING and self.clock.monotonic() - last >= health.HEALTH_SECONDS

    def watch(self, run: Run) -> Run:
        """The run's monitor, at most every ``HEALTH_SECONDS`` per run in this process (chains
        call it between batches, ticks at every tick): hold the run while a reason says so —
        an operator's throttle, a backfill it runs after, the database's health — release it
        once none does, and pause it past a critical limit. A hold is on the run row, and every
        claim is guarded by it, so it takes effect at the next claim of every worker."""
        if not self.watch_due(run):
            return run
        self._watched[run.id] = self.clock.monotonic()
        definition = self.targets.for_run(run).definition
        found = health.Verdict()
        if run.throttled_until is not None:
            with self.store.reading() as connection:
                throttled = self.store.throttle_in_force(run, connection)
            found = health.Verdict(hold=throttled) if throttled else found
        if not found.hold and definition.after:
            waiting = self.waiting_for(definition)
            found = health.Verdict(hold=waiting) if waiting else found
        subject = health.Subject(definition, run.tuning, run.throttle_query)
        if not found.hold and health.has_checks(self.store.engine.dialect.name, subject, self.replica_urls):
            with self.store.reading() as connection:
                found = health.verdict(connection, subject, self.replica_urls)
        if found.pause:
            logger.warning("run %s of backfill %s paused itself: %s", run.id, run.name, found.pause)
            return self.store.pause(run, actor="backfill", reason=found.pause) or self.store.get_run(run.id)
        hold = found.hold
        if hold is None and run.tuning.impact_budget:
            run, rest = self._steer(run)
            hold = impact.RESTING if rest else None
        if hold != run.held_reason:
            run = self.store.hold(run, hold)
        return run

    def _steer(self, run: Run) -> tuple[Run, bool]:
        """One reading into the run's impact budget controller (``impact``); whether the run
        rests now, so the application can be measured alone."""
        with self.store.reading() as connection:
            running = self.store.running_count(run.id, connection) if connection.dialect.name != "postgresql" else 0
            reading = impact.read(connection, run.batches_done, running)
        if reading is None:
            unsupported = "the impact budget needs PostgreSQL or MySQL/MariaDB: not applied"
            if run.impact_note != unsupported:
                run = self.store.steer(run, pace=1.0, note=unsupported, state={}) or run
            return run, False
        decision = impact.step(impact.State.from_json(run.impact_state), reading, run.pace, run.tuning.impact_budget)
        steered = self.store.steer(
            run, pace=decision.pace, note=decision.note or run.impact_note, state=decision.state.to_json()
        )
        if steered is None:  # another process's monitor stepped it first: its decision stands
            current = self.store.get_run(run.id)
            return current, current.held_reason == impact.RESTING
        return steered, decision.rest

    def _adapt(self, run: Run) -> Run:
        """Steer the batch size towards the target batch duration, every ADAPT_EVERY batches
        of the main sweep, from the time per row of the last ADAPT_WINDOW (the policy itself:
        ``sizing.next_batch_size``). The write is guarded by the size it started from: an
        operator's ``tune`` always wins.
        """
        tuning = run.tuning
        if not tuning.target_batch_seconds or run.phase is not Phase.MAIN:
            return run
        if run.batches_done - self._adapted_at.get(run.id, 0) < ADAPT_EVERY:
            return run
        self._adapted_at[run.id] = run.batches_done
        recent = [
            (b.rows, b.duration_ms)
            for b in reversed(self.store.recent_batches(run.id, ADAPT_WINDOW))
            if b.rows and b.duration_ms
        ]
        per_row = sizing.ms_per_row(recent)
        if len(recent) < ADAPT_EVERY or per_row is None:
            return run
        proposed = sizing.next_batch_size(tuning.batch_size, per_row, tuning, run.pace_in_force)
        if proposed == tuning.batch_size or not self.store.adapt_batch_size(run, proposed):
            return run
        return dataclasses.replace(run, tuning=dataclasses.replace(tuning, batch_size=proposed))

    def _plan(self, run: Run, count: int) -> tuple[Run, list[BatchRecord]] | None:
        """Plan up to ``count`` batches; (run, []) once the phase has no keys left, or None when
        another planner changed the run first."""
        target = self.targets.for_run(run)
        catchup = run.phase is Phase.CATCHUP
        size = sizing.planned_size(run.tuning)
        if not catchup and run.end_key is None:
            spans = []  # the table was empty at the start: everything belongs to the final pass
        else:
            with self._planning(run), self.store.reading() as connection:
                spans = keyset.next_spans(
                    connection,
                    target.key_columns,
                    cursor=target.decode(run.cursor),
                    end=None if catchup else target.decode(run.end_key),
                    size=size,
                    count=count,
                    where=target.definition.pending_clause(target.table) if catchup else None,
                )
        if any(None in span.first or None in span.last for span in spans):
            # Refused when the definition is checked; here if the column came to allow NULL since.
            raise PlanningError(
                f"table '{run.table_name}' has rows whose key ({', '.join(run.key_columns)}) is NULL: they can be "
                f"neither ordered nor batched: set their keys and make the column NOT NULL, then "
                f"`backfill retry {run.name}`"
            )
        if not spans:
            if not self.store.mark_planned_all(run):
                return None
            return dataclasses.replace(run, planned_all=True), []
        batches = self.store.record_batches(run, spans)
        if batches is None:
            return None
        return dataclasses.replace(run, cursor=encode_key(spans[-1].last), next_seq=run.next_seq + len(spans)), batches

    @contextmanager
    def _planning(self, run: Run) -> Iterator[None]:
        """Errors of the user's table or predicate while planning: transient ones propagate (the
        caller retries), any other ends the run, named."""
        try:
            yield
        except DBAPIError as exc:
            if failures.is_transient(exc):
                raise
            phase = "the final pass" if run.phase is Phase.CATCHUP else "the next batches"
            raise PlanningError(
                f"planning {phase} failed: {failures.error_text(exc, 300).splitlines()[0]}: fix the definition "
                f"(its table, key or pending predicate), then `backfill retry {run.name}`"
            ) from None
