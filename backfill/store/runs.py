"""Runs: recording them, and every move of a run's status — by planners (activate, conclude,
stop) and by operators (pause, resume, cancel; retry: ``retries``; hold and tune: ``settings``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, exists, func, select, true, update
from sqlalchemy.exc import IntegrityError

from backfill.definition import Backfill, Key, Tuning
from backfill.errors import RunStateError
from backfill.events import Event
from backfill.keyset import encode_key
from backfill.status import BatchStatus, Phase, RunStatus
from backfill.store.base import StoreBase, batches, runs
from backfill.store.records import Run, new_run_values
from backfill.transitions import Move, run_move

PENDING, RUNNING, PAUSED = RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED
ACTIVATE = run_move(PENDING, to=RUNNING)
PAUSE = run_move(PENDING, RUNNING, to=PAUSED)
RESUME = run_move(PAUSED, to=RUNNING)
RESUME_UNSTARTED = run_move(PAUSED, to=PENDING)
CANCEL = run_move(PENDING, RUNNING, PAUSED, to=RunStatus.CANCELLED)
FINISH = run_move(RUNNING, to=RunStatus.FINISHED)
STOP = run_move(RUNNING, to=RunStatus.FAILED)

OPEN = [BatchStatus.PENDING.value, BatchStatus.RUNNING.value]


def no_open_batch(run_id: int) -> Any:
    return ~exists().where(batches.c.run_id == run_id, batches.c.status.in_(OPEN))


def has_failed_batch(run_id: int) -> Any:
    return exists().where(batches.c.run_id == run_id, batches.c.status == BatchStatus.FAILED.value)


class RunsMixin(StoreBase):
    def create_run(
        self,
        definition: Backfill,
        tuning: Tuning,
        *,
        connection: Connection | None = None,
        started_by: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Run:
        """Record a new pending run; refuses when the name already has an active one."""
        values = new_run_values(definition, tuning, self.now(), started_by, arguments)
        try:
            with self._borrowed_or_new(connection) as conn:
                run_id = conn.execute(runs.insert().values(values).returning(runs.c.id)).scalar_one()
                self._record(
                    conn,
                    Event(backfill=definition.name, run_id=run_id, after=RunStatus.PENDING, worker=started_by),
                )
                return self._run(conn, run_id)
        except IntegrityError:
            active = self.active_run(definition.name, connection=connection)
            if active is None:
                raise
            raise RunStateError(_already_active(active)) from None

    def get_run(self, run_id: int, *, connection: Connection | None = None) -> Run:
        with self._read_borrowed_or_new(connection) as conn:
            return self._run(conn, run_id)

    def active_run(self, name: str, *, connection: Connection | None = None) -> Run | None:
        with self._read_borrowed_or_new(connection) as conn:
            row = conn.execute(select(runs).where(runs.c.active_name == name)).first()
            return Run.from_row(row) if row else None

    def latest_run(self, name: str, *, connection: Connection | None = None) -> Run | None:
        with self._read_borrowed_or_new(connection) as conn:
            row = conn.execute(select(runs).where(runs.c.name == name).order_by(runs.c.id.desc()).limit(1)).first()
            return Run.from_row(row) if row else None

    def list_runs(self, name: str | None = None, *, latest_only: bool = True) -> list[Run]:
        """Runs, newest first; by default only the newest run of each name."""
        query = select(runs).order_by(runs.c.id.desc())
        if name is not None:
            query = query.where(runs.c.name == name)
        if latest_only:
            newest = select(func.max(runs.c.id)).group_by(runs.c.name).scalar_subquery()
            query = query.where(runs.c.id.in_(newest))
        with self.reading() as conn:
            return [Run.from_row(r) for r in conn.execute(query)]

    def runnable_runs(self) -> list[Run]:
        """Runs a planner should look after: queued or running."""
        query = select(runs).where(runs.c.status.in_([PENDING.value, RUNNING.value])).order_by(runs.c.id)
        with self.reading() as conn:
            return [Run.from_row(r) for r in conn.execute(query)]

    def active_runs_on(self, table_name: str, schema_name: str | None) -> list[Run]:
        query = select(runs).where(
            runs.c.active_name.is_not(None),
            runs.c.table_name == table_name,
            runs.c.schema_name.is_(None) if schema_name is None else runs.c.schema_name == schema_name,
        )
        with self.reading() as conn:
            return [Run.from_row(r) for r in conn.execute(query.order_by(runs.c.id))]

    # -- moves --------------------------------------------------------------------------------

    def _transition(
        self,
        run_id: int,
        move: Move[RunStatus],
        *,
        error: str | None = None,
        note: str | None = None,
        guard: Any = None,
        actor: str | None = None,
        **changes: Any,
    ) -> Run | None:
        """Move a run along ``move`` (with ``changes`` to its other columns) and record it, with
        its ``error`` (kept as the run's last error too) or a ``note``; None when the run was not
        in one of the move's sources, or ``guard`` did not hold."""
        if error is not None:
            changes["last_error"] = error
        with self.begin() as conn:
            before = self._run(conn, run_id)
            if before.status not in move.sources:
                return None
            statement = self._move_run(run_id, move, **changes).where(runs.c.status == before.status.value)
            if guard is not None:
                statement = statement.where(guard)
            if not conn.execute(statement).rowcount:
                return None
            self._record(
                conn,
                Event(
                    backfill=before.name,
                    run_id=run_id,
                    after=move.target,
                    before=before.status,
                    worker=actor,
                    error=error,
                    note=note,
                ),
            )
            return self._run(conn, run_id)

    def activate(self, run: Run, *, end: Key | None, rows_total: int, estimated: bool) -> Run | None:
        """pending -> running, fixing the run's end; None if another process got there first."""
        return self._transition(
            run.id,
            ACTIVATE,
            end_key=encode_key(end),
            rows_total=rows_total,
            rows_total_estimated=estimated,
            started_at=self.now(),
        )

    def pause(self, run: Run, *, actor: str | None = None, reason: str | None = None) -> Run | None:
        """running (or pending) -> paused; with ``reason`` (the run pausing itself past a critical
        limit), kept as why it is held until an operator resumes it."""
        if reason is None:  # an operator's: a hold the monitor had put on it no longer says why it waits
            return self._transition(run.id, PAUSE, actor=actor, held_reason=None, held_since=None)
        return self._transition(
            run.id, PAUSE, actor=actor, note=f"paused: {reason}", held_reason=reason, held_since=self.now()
        )

    def resume(self, run: Run, *, actor: str | None = None) -> Run | None:
        """paused -> running (or pending, if it never started)."""
        with self.begin() as conn:
            current = self._run(conn, run.id)
            if current.status is not PAUSED:
                return None
            move = RESUME if current.started_at is not None else RESUME_UNSTARTED
            resumed = self._move_run(run.id, move, held_reason=None, held_since=None).where(
                runs.c.status == PAUSED.value
            )
            if not conn.execute(resumed).rowcount:
                return None
            self._forget_dispatches(conn, run.id)
            self._record(
                conn, Event(backfill=current.name, run_id=run.id, after=move.target, before=PAUSED, worker=actor)
            )
            return self._run(conn, run.id)

    @staticmethod
    def _forget_dispatches(conn: Connection, run_id: int) -> None:
        """The run runs again: its planned batches are marked as never sent, so the next tick
        sends them at once — a message that arrived while it did not run was spent."""
        conn.execute(
            update(batches)
            .where(batches.c.run_id == run_id, batches.c.status == BatchStatus.PENDING.value)
            .values(dispatched_at=None)
        )

    def cancel(self, run: Run, *, actor: str | None = None) -> Run | None:
        return self._transition(run.id, CANCEL, actor=actor)

    def stop(self, run: Run, error: str) -> Run | None:
        """running -> failed, for a reason of the planner's (too many failures, an error that
        planning would hit again)."""
        return self._transition(run.id, STOP, error=error)

    def stop_if(self, run: Run, reason: Callable[[Run], str | None]) -> Run | None:
        """running -> failed when ``reason`` says so of the run as it is under its row's lock:
        a policy judged on counters read earlier could stop a run an operator just retried."""
        with self.begin() as conn:
            self._lock_run(conn, run.id)
            current = self._run(conn, run.id)
            error = reason(current) if current.status is RUNNING else None
            if error is None:
                return None
            if not conn.execute(self._move_run(run.id, STOP, last_error=error)).rowcount:
                return None
            self._record(
                conn, Event(backfill=current.name, run_id=run.id, after=STOP.target, before=RUNNING, error=error)
            )
            return self._run(conn, run.id)

    def conclude(
        self, run: Run, catchup_cursor: Key | None, verify: Callable[[Connection], str | None] | None = None
    ) -> Run:
        """End a phase whose batches are all planned, if the database agrees that none is open.

        With failed batches the run fails; else the main sweep hands over to the final pass, or
        the final pass finishes the run — unless ``verify`` (the definition's post-condition,
        checked in the same transaction, under the run's lock) says what is still wrong: then
        the run fails with that. Each is one guarded statement, decided under the run row's lock
        from the batch rows as they are — never from a list read earlier.
        """
        with self.begin() as conn:
            self._lock_run(conn, run.id)
            current = self._run(conn, run.id)
            if current.status is not RUNNING or not current.planned_all:
                return current
            ready = (runs.c.planned_all == true(), no_open_batch(run.id))
            failed = conn.execute(
                select(func.count())
                .select_from(batches)
                .where(batches.c.run_id == run.id, batches.c.status == BatchStatus.FAILED.value)
            ).scalar_one()
            if failed:
                error = current.last_error or f"{failed} batch(es) failed"
                statement = self._move_run(run.id, STOP, last_error=error).where(*ready)
                if conn.execute(statement).rowcount:
                    self._record(
                        conn,
                        Event(backfill=current.name, run_id=run.id, after=STOP.target, before=RUNNING, error=error),
                    )
            elif current.phase is Phase.MAIN:
                begun = conn.execute(
                    update(runs)
                    .where(runs.c.id == run.id, runs.c.status == RUNNING.value, runs.c.phase == Phase.MAIN.value)
                    .where(*ready, ~has_failed_batch(run.id))
                    .values(
                        phase=Phase.CATCHUP.value,
                        cursor=encode_key(catchup_cursor),
                        planned_all=False,
                        updated_at=self.now(),
                    )
                ).rowcount
                if begun:
                    note = f"final pass: {current.final_pass.value.replace('_', ' ')}"
                    self._record(
                        conn, Event(backfill=current.name, run_id=run.id, after=RUNNING, before=RUNNING, note=note)
                    )
            elif (wrong := verify(conn) if verify is not None and current.phase is Phase.CATCHUP else None) is not None:
                statement = self._move_run(run.id, STOP, last_error=wrong).where(
                    runs.c.phase == Phase.CATCHUP.value, *ready, ~has_failed_batch(run.id)
                )
                if conn.execute(statement).rowcount:
                    self._record(
                        conn,
                        Event(backfill=current.name, run_id=run.id, after=STOP.target, before=RUNNING, error=wrong),
                    )
            else:
                statement = self._move_run(
                    run.id, FINISH, rows_total=runs.c.rows_done, rows_total_estimated=False
                ).where(runs.c.phase == Phase.CATCHUP.value, *ready, ~has_failed_batch(run.id))
                if conn.execute(statement).rowcount:
                    self._record(conn, Event(backfill=current.name, run_id=run.id, after=FINISH.target, before=RUNNING))
            return self._run(conn, run.id)


def _already_active(run: Run) -> str:
    return (
        f"backfill '{run.name}' already has an active run (run {run.id}, {run.status}): "
        f"see `backfill status {run.name}`; `backfill cancel {run.name}` to drop it"
    )
