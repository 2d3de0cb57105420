"""A running run's settings, changed in place: an operator's ``tune`` and ``throttle``, the
planner's own batch size adaptation, and the hold its monitor puts on it. None of them moves the
run's status, and each writes only its own columns, so they cannot undo one another."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, case, select, update

from backfill.clock import plus_seconds
from backfill.errors import RunStateError
from backfill.events import Event
from backfill.status import RunStatus
from backfill.store.base import StoreBase, runs
from backfill.store.records import Run

RUNNING = RunStatus.RUNNING


class SettingsMixin(StoreBase):
    def hold(self, run: Run, reason: str | None) -> Run:
        """Mark a running run held (nothing new starts) with its reason, or released (None)."""
        with self.begin() as conn:
            changed = conn.execute(
                update(runs)
                .where(runs.c.id == run.id, runs.c.status == RUNNING.value)
                .values(
                    held_reason=reason,
                    held_since=case((runs.c.held_reason.is_(None), self.now()), else_=runs.c.held_since)
                    if reason
                    else None,
                    updated_at=self.now(),
                )
            ).rowcount
            if changed and reason != run.held_reason:
                note = f"held: {reason}" if reason else f"released after: {run.held_reason}"
                self._record(conn, Event(backfill=run.name, run_id=run.id, after=RUNNING, before=RUNNING, note=note))
            return self._run(conn, run.id)

    def tune(self, run: Run, settings: Mapping[str, Any], *, actor: str | None = None) -> Run:
        """An operator's change of some of a run's settings: only those columns are written,
        so nothing else a planner or another operator set is undone. Kept in the history."""
        with self.begin() as conn:
            changed = conn.execute(
                update(runs)
                .where(runs.c.id == run.id, runs.c.active_name.is_not(None))
                .values(**settings, updated_at=self.now())
            ).rowcount
            if not changed:
                raise RunStateError(f"backfill '{run.name}': run {run.id} is over; nothing to tune")
            tuned = self._run(conn, run.id)
            note = "tuned: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
            self._record(
                conn,
                Event(
                    backfill=run.name, run_id=run.id, after=tuned.status, before=tuned.status, worker=actor, note=note
                ),
            )
            return tuned

    def adapt_batch_size(self, run: Run, size: int) -> bool:
        """The planner's own change of the batch size, made only if nobody changed it since
        ``run`` was read: an operator's ``tune`` always wins."""
        with self.begin() as conn:
            return bool(
                conn.execute(
                    update(runs)
                    .where(runs.c.id == run.id, runs.c.batch_size == run.tuning.batch_size)
                    .values(batch_size=size, updated_at=self.now())
                ).rowcount
            )

    def throttle(
        self,
        run: Run,
        *,
        seconds: float | None,
        query: str | None,
        reason: str | None,
        actor: str | None = None,
    ) -> Run:
        """An operator's throttle: no batch starts for ``seconds`` (the database's clock), and
        none while ``query`` returns a row, until ``unthrottle``. It takes effect at every
        worker's next claim (``claimable``); the run's monitor says so as its hold."""
        values = {
            "throttled_until": plus_seconds(self.now(), seconds) if seconds is not None else None,
            "throttle_query": query,
            "throttle_reason": reason,
            "updated_at": self.now(),
        }
        with self.begin() as conn:
            changed = conn.execute(
                update(runs).where(runs.c.id == run.id, runs.c.active_name.is_not(None)).values(values)
            ).rowcount
            if not changed:
                raise RunStateError(f"backfill '{run.name}': run {run.id} is over; nothing to throttle")
            throttled = self._run(conn, run.id)
            parts = [f"for {seconds:g}s" if seconds is not None else None, f"while: {query}" if query else None]
            note = "throttled " + ", ".join(p for p in parts if p) + (f" ({reason})" if reason else "")
            self._record(
                conn,
                Event(
                    backfill=run.name,
                    run_id=run.id,
                    after=throttled.status,
                    before=throttled.status,
                    worker=actor,
                    note=note,
                ),
            )
            return throttled

    def unthrottle(self, run: Run, *, actor: str | None = None) -> Run:
        """The operator's throttle lifted; a hold it caused goes with it (any other reason to
        hold is found again by the run's monitor within a moment)."""
        with self.begin() as conn:
            before = self._run(conn, run.id)
            changed = conn.execute(
                update(runs)
                .where(runs.c.id == run.id, runs.c.active_name.is_not(None))
                .values(
                    throttled_until=None,
                    throttle_query=None,
                    throttle_reason=None,
                    held_reason=case((runs.c.held_reason.like("throttled%"), None), else_=runs.c.held_reason),
                    updated_at=self.now(),
                )
            ).rowcount
            if not changed:
                raise RunStateError(f"backfill '{run.name}': run {run.id} is over; nothing to unthrottle")
            after = self._run(conn, run.id)
            notes = ["throttle lifted"] if before.throttled_until is not None or before.throttle_query else []
            if before.held_reason and not after.held_reason:
                notes.append(f"released after: {before.held_reason}")
            self._record(
                conn,
                *(
                    Event(backfill=run.name, run_id=run.id, after=after.status, before=after.status, worker=actor,
                          note=note)
                    for note in notes
                ),
            )  # fmt: skip
            return after

    def throttle_in_force(self, run: Run, connection: Connection) -> str | None:
        """The operator's throttle as a hold reason, while its time runs (the database's clock);
        its query, if any, is the monitor's to run (``health``)."""
        row = connection.execute(
            select(runs.c.throttled_until, runs.c.throttle_reason, self.now()).where(runs.c.id == run.id)
        ).first()
        if row is None or row[0] is None or row[0] <= row[2]:
            return None
        left = (row[0] - row[2]).total_seconds()
        why = f": {row[1]}" if row[1] else ""
        return f"throttled by an operator for {left:.0f}s more{why}"

    def steer(self, run: Run, *, pace: float, note: str | None, state: dict[str, Any]) -> Run | None:
        """The impact budget's controller moves the run's pace (and keeps its memory and its
        last decision), only if no other process's controller moved it since ``run`` was read:
        two monitors of one run never interleave their windows. None when it lost that race."""
        with self.begin() as conn:
            changed = conn.execute(
                update(runs)
                .where(
                    runs.c.id == run.id,
                    runs.c.status == RUNNING.value,
                    runs.c.pace.is_not_distinct_from(run.pace),
                    runs.c.impact_note.is_not_distinct_from(run.impact_note),
                )
                .values(pace=pace, impact_note=note, impact_state=state)
            ).rowcount
            if not changed:
                return None
            if note != run.impact_note and note and note.startswith("backing off"):
                self._record(conn, Event(backfill=run.name, run_id=run.id, after=RUNNING, before=RUNNING, note=note))
            return self._run(conn, run.id)
