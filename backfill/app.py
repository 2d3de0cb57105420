"""The library's front door: one object per database and set of definitions, with one method
per thing an operator does. The CLI, the Celery tasks and the Alembic operations call these."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL, Connection, Engine, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from backfill import params as run_params
from backfill.clock import SERVER_TIME, DatabaseTime
from backfill.database import display_url, make_engine, options_refused
from backfill.definition import DAY, Backfill
from backfill.errors import DatabaseUnavailableError, RunStateError
from backfill.estimate import Estimate, estimate
from backfill.executor import Outcome
from backfill.failures import error_text, retried
from backfill.host import Host
from backfill.inline import InlineRunner
from backfill.keyset import Span
from backfill.outage import Outage, is_outage, outage_seconds
from backfill.planner import Planner
from backfill.progress import RunProgress, measure
from backfill.registry import Registry, load
from backfill.status import BatchStatus, RunStatus
from backfill.store import BatchRecord, EventRecord, Run, Store
from backfill.target import Targets, halves_by_key


@dataclass(frozen=True)
class WaitResult:
    runs: tuple[Run, ...]
    timed_out: bool

    @property
    def all_finished(self) -> bool:
        return all(r.status is RunStatus.FINISHED for r in self.runs)


@dataclass(frozen=True)
class RunDetails:
    progress: RunProgress
    failed: tuple[BatchRecord, ...]
    recent: tuple[BatchRecord, ...]
    errors: tuple[EventRecord, ...]
    actions: tuple[EventRecord, ...] = ()
    """Who did what to the run (``Store.actions_of``), newest first."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.progress.to_json(),
            "failed_batches": [
                {"seq": b.seq, "first": b.first_key, "last": b.last_key, "attempts": b.attempts, "error": b.error}
                for b in self.failed
            ],
            "recent_batches": [
                {"seq": b.seq, "rows": b.rows, "duration_ms": b.duration_ms, "worker": b.worker} for b in self.recent
            ],
            "recent_errors": [
                {"at": e.at.isoformat() + "Z", "batch": e.seq, "status": e.after, "error": e.error} for e in self.errors
            ],
            "actions": [{"at": e.at.isoformat() + "Z", "action": action(e), "by": e.worker} for e in self.actions],
        }


def action(event: EventRecord) -> str:
    """An operator's action in words: the change it made, or what it noted (a tune's settings)."""
    why = event.note or event.error
    if event.before == event.after and why:
        return why
    change = f"{event.before or 'new'} -> {event.after}"
    return f"{change} ({why})" if why else change


class App:
    def __init__(
        self,
        bind: Engine | Connection,
        definitions: Mapping[str, Backfill],
        *,
        host: Host | None = None,
        time: DatabaseTime = SERVER_TIME,
    ) -> None:
        """``bind`` is an engine, or one connection whose transaction everything joins (an
        Alembic migration's). ``host`` and ``time`` are this process's clock and identity and
        the store's clock: the defaults are the real ones."""
        self.definitions = definitions if isinstance(definitions, Registry) else Registry(definitions)
        self.store = Store(bind, time=time)
        self.targets = Targets(bind, self.definitions)
        self.host = host or Host()

    @classmethod
    def from_settings(
        cls,
        *,
        app: str | None,
        database_url: str | URL | None,
        needed_by: str | None = None,
        time_limit: int | None = None,
        engine: Engine | None = None,
    ) -> App:
        """Build from ``--app``/``BACKFILL_APP`` and ``--database-url``/``BACKFILL_DATABASE_URL``,
        checking that the database answers before anything else happens. Without a definitions
        module the app reads and changes the checkpoint tables only (``needed_by`` names a
        command that needs the definitions; ``time_limit`` bounds each statement, see
        ``make_engine``; ``engine``: one already made for the URL, a fleet member's from
        ``fleet.engine_for``)."""
        definitions = load(app, needed_by=needed_by)
        if engine is None:
            engine = make_engine(database_url, time_limit=time_limit)
        try:
            with engine.connect():
                pass
        except DBAPIError as exc:
            # psycopg: a ProgrammingError for an option it cannot parse; libpq's "connection is
            # bad" for a value it refuses before reaching the server (sslmode=bogus).
            if isinstance(exc, ProgrammingError) or str(exc.orig).startswith("connection is bad:"):
                raise options_refused(engine.url, exc.orig or exc) from None
            raise DatabaseUnavailableError(
                f"cannot connect to {display_url(engine.url)}: {error_text(exc, 300).splitlines()[0]}"
            ) from None
        except (TypeError, ValueError, LookupError, AttributeError, OSError) as exc:
            # The driver choked on an option of the URL before it reached the server (a network
            # fault is a DBAPIError: an OSError here is a file the URL names, ?ssl_ca=...).
            raise options_refused(engine.url, exc) from None
        return cls(engine, definitions)

    # -- schema -------------------------------------------------------------------------------

    def init_db(self) -> None:
        self.store.create_tables()

    # -- starting and running -----------------------------------------------------------------

    def start(
        self,
        name: str,
        *,
        started_by: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Run:
        """Record a run and fix its end; workers (or ``run``) do the batches. ``started_by``
        names who asked (the CLI's ``cli:user@host``, or ``--by``): kept on the run. ``params``
        are the run's parameter values (text is parsed: ``--param k=v``), checked first."""
        definition = self.definitions.require(name)
        tuning = definition.tuning.replace(overrides)
        arguments = definition.bind_arguments(params or {})
        self.store.check_tables()
        self.targets.get(name)
        planner = Planner(self.store, self.targets, clock=self.host.clock)
        busy = planner.conflicting(name, self.store.active_runs_on(definition.table, definition.schema))
        if busy is not None:
            raise RunStateError(
                f"backfill '{busy.name}' (run {busy.id}, {busy.status}) is working on table '{definition.table}', "
                f"and '{name}' may not run beside it: wait for it (`backfill status {busy.name}`), "
                "or mark both definitions exclusive=False"
            )
        run = self.store.create_run(definition, tuning, started_by=started_by, arguments=arguments)
        return planner.activate(run)

    def run(
        self,
        name: str,
        *,
        threads: int | None = None,
        on_progress: Callable[[Run], None] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        on_wait: Callable[[str | None], None] | None = None,
        started_by: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Run:
        """Run a backfill to its end in this process, continuing its active run if it has one
        (with ``overrides``, that run is tuned first, as ``tune`` would; ``params`` must then be
        the ones it was started with). Through a database outage the run waits (``on_wait`` is
        told why, and None once it is over) for up to ``BACKFILL_OUTAGE_SECONDS``."""
        definition = self.definitions.require(name)
        outage_limit = outage_seconds()  # a mistake in the setting is said before a run is recorded
        self.store.check_tables()
        waiting = Planner(self.store, self.targets, clock=self.host.clock).waiting_for(definition)
        if waiting:
            raise RunStateError(f"backfill '{name}' runs after others, and is {waiting}; then run it again")
        run = self.store.active_run(name)
        if run is None:
            run = self.start(name, started_by=started_by, params=params, **overrides)
        elif run.status is RunStatus.PAUSED:
            raise RunStateError(f"backfill '{name}' is paused: `backfill resume {name}` first")
        elif params and run.params != run_params.encode(definition.parameters, definition.bind_arguments(params)):
            raise RunStateError(
                f"backfill '{name}' has an active run (run {run.id}) with other parameters "
                f"({run_params.shown(run.params)}): run it without --param to continue it, "
                f"or `backfill cancel {name}` first"
            )
        else:
            self.targets.get(name)
            if any(v is not None for v in overrides.values()):
                run = self.tune(name, actor=started_by, **overrides)
        runner = InlineRunner(
            self.store,
            self.targets,
            threads=threads,
            on_progress=on_progress,
            on_outcome=on_outcome,
            host=self.host,
            on_wait=on_wait,
            outage_seconds=outage_limit,
        )
        return runner.run(run)

    # -- operating ----------------------------------------------------------------------------

    # ``actor`` names who acts (the CLI's user@host, "dashboard"): kept on the action's event.
    # Each action is one guarded transaction, so one that lost a deadlock to a worker (the
    # database picks a victim) is simply taken again: it re-reads the run under its lock.

    def pause(self, name: str, *, actor: str | None = None) -> Run:
        run = self._active(name)
        return self._done(run, "pause", retried(lambda: self.store.pause(run, actor=actor)))

    def resume(self, name: str, *, actor: str | None = None) -> Run:
        run = self._active(name)
        return self._done(run, "resume", retried(lambda: self.store.resume(run, actor=actor)))

    def cancel(self, name: str, *, actor: str | None = None) -> Run:
        run = self._active(name)
        return self._done(run, "cancel", retried(lambda: self.store.cancel(run, actor=actor)))

    def retry(self, name: str, *, split: bool = False, actor: str | None = None) -> tuple[Run, int]:
        """Re-queue the failed batches of the latest run; a failed run becomes running again.

        With ``split``, each failed batch is replaced by two halves that partition its range:
        the way past a statement timeout, or to narrow a failure down to the rows that cause it.
        """
        self._check_name(name)
        run = self.store.latest_run(name)
        if run is None:
            raise RunStateError(f"backfill '{name}' has never run: `backfill start {name}`")
        if run.status in (RunStatus.FINISHED, RunStatus.CANCELLED):
            raise RunStateError(f"backfill '{name}' has no failed batches to retry (run {run.id} is {run.status})")
        splits: dict[int, list[Span]] = {}
        if split:
            known = name in self.definitions
            with self.store.reading() as connection:
                for batch in self.store.batches_of(run.id, BatchStatus.FAILED):
                    if known:
                        spans = self.targets.for_run(run).halves(connection, batch)
                    else:
                        spans = halves_by_key(connection, run, batch)
                    if len(spans) > 1:
                        splits[batch.id] = spans
        return retried(lambda: self.store.reopen_failed(run, splits, actor=actor))

    def tune(self, name: str, *, actor: str | None = None, **overrides: Any) -> Run:
        """Change a run's settings while it runs; batches planned from now on use them. Only
        the settings given are written: nothing else is put back to what it was."""
        run = self._active(name)
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            raise RunStateError("nothing to change: give --batch-size, --parallelism or another setting")
        tuned = run.tuning.replace(given)  # checks every value, and the settings together
        return retried(lambda: self.store.tune(run, {k: getattr(tuned, k) for k in given}, actor=actor))

    def throttle(
        self,
        name: str,
        *,
        seconds: float | None = None,
        query: str | None = None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> Run:
        """Hold the active run for ``seconds``, and while ``query`` returns a row (an operator's
        throttle, gh-ost's ``--throttle-query``): every worker's next claim waits. The query
        is tried once first: one that cannot run is refused, and nothing is recorded."""
        run = self._active(name)
        if seconds is not None and not 0 < seconds <= 30 * DAY:
            raise RunStateError(f"a throttle lasts more than 0 and at most 30 days, got {seconds:g}s")
        if query is not None:
            self._check_query(query)
        return retried(lambda: self.store.throttle(run, seconds=seconds, query=query, reason=reason, actor=actor))

    def unthrottle(self, name: str, *, actor: str | None = None) -> Run:
        run = self._active(name)
        return retried(lambda: self.store.unthrottle(run, actor=actor))

    def _check_query(self, query: str) -> None:
        with self.store.reading() as connection:
            try:
                with connection.begin():
                    connection.execute(text(query)).first()
            except DBAPIError as exc:
                raise RunStateError(
                    f"the throttle query cannot run ({error_text(exc, 200).splitlines()[0]}): fix it and throttle again"
                ) from None

    def wait(
        self,
        names: Sequence[str],
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        on_wait: Callable[[str | None], None] | None = None,
    ) -> WaitResult:
        """Block until every named run has ended, or one has failed or been cancelled; through
        a database outage of up to ``BACKFILL_OUTAGE_SECONDS`` (``on_wait`` is told why)."""
        runs = [self._latest(name) for name in names]
        deadline = None if timeout is None else time.monotonic() + timeout
        outage = Outage(self.store.engine, self.host.clock, f"backfill wait {' '.join(names)}", outage_seconds())
        while True:
            try:
                runs = [self.store.get_run(run.id) for run in runs]
            except Exception as exc:
                if self.store.borrowed or not is_outage(exc):
                    raise
                outage.wait(exc, on_wait)
                continue
            outage.over(on_wait)
            if any(r.status in (RunStatus.FAILED, RunStatus.CANCELLED) for r in runs):
                return WaitResult(tuple(runs), timed_out=False)
            if all(r.status is RunStatus.FINISHED for r in runs):
                return WaitResult(tuple(runs), timed_out=False)
            if deadline is not None and time.monotonic() >= deadline:
                return WaitResult(tuple(runs), timed_out=True)
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def estimate(
        self, name: str, *, samples: int = 3, params: Mapping[str, Any] | None = None, **overrides: Any
    ) -> Estimate:
        """Time a few batches in transactions that are rolled back; nothing is recorded."""
        definition = self.definitions.require(name)
        tuning = definition.tuning.replace(overrides)
        target = self.targets.bound(name, definition.bind_arguments(params or {}))
        return estimate(self.store, target, tuning, samples=samples)

    def details(self, name: str) -> RunDetails:
        """The newest run of a backfill, with what an operator needs to diagnose it."""
        run = self._latest(name)
        return RunDetails(
            progress=measure(self.store, run),
            failed=tuple(self.store.batches_of(run.id, BatchStatus.FAILED)),
            recent=tuple(self.store.recent_batches(run.id)),
            errors=tuple(self.store.events_of(run.id, errors_only=True, limit=10)),
            actions=tuple(self.store.actions_of(run.id)),
        )

    def progress(self, name: str | None = None) -> list[RunProgress]:
        if name is not None:
            self._check_name(name)
        self.store.check_tables()
        return [measure(self.store, run) for run in self.store.list_runs(name)]

    # -- helpers ------------------------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if name not in self.definitions and self.store.latest_run(name) is None:
            self.definitions.require(name)

    def _latest(self, name: str) -> Run:
        self._check_name(name)
        self.store.check_tables()
        run = self.store.latest_run(name)
        if run is None:
            raise RunStateError(f"backfill '{name}' has never run: `backfill start {name}`")
        return run

    def _active(self, name: str) -> Run:
        self._check_name(name)
        self.store.check_tables()
        run = self.store.active_run(name)
        if run is None:
            latest = self.store.latest_run(name)
            state = f"its latest run ({latest.id}) is {latest.status}" if latest else "it has never run"
            raise RunStateError(f"backfill '{name}' has no active run: {state}")
        return run

    def _done(self, run: Run, verb: str, moved: Run | None) -> Run:
        if moved is None:
            current = self.store.get_run(run.id)
            raise RunStateError(f"cannot {verb} backfill '{run.name}': its run {run.id} is {current.status}")
        return moved


__all__ = ["App"]
