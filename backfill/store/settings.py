"""A running run's settings, changed in place: an operator's ``tune``, the planner's own batch
size adaptation, and the hold a health check puts on it. None of them moves the run's status,
and each writes only its own columns, so they cannot undo one another."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import case, update

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
                self._record(conn, Event(backfill=run.name, run_id=run.id, after=RUNNING, before=RUNNING, error=note))
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
                    backfill=run.name, run_id=run.id, after=tuned.status, before=tuned.status, worker=actor, error=note
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
