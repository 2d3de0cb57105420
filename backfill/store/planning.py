"""Planning: adding a run's next batches and moving its cursor, guarded against other planners."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, update

from backfill.events import Event
from backfill.keyset import Span, encode_key
from backfill.status import BatchStatus, RunStatus
from backfill.store.base import StoreBase, batches, runs
from backfill.store.records import BatchRecord, Run, batch_values


def _unchanged_since(run: Run) -> tuple[ColumnElement[bool], ...]:
    """The run's planning state is still what ``run`` saw: same phase, same next batch number
    (the cursor moves only with one of them), and still running."""
    return (
        runs.c.id == run.id,
        runs.c.next_seq == run.next_seq,
        runs.c.phase == run.phase.value,
        runs.c.status == RunStatus.RUNNING.value,
    )


class PlanningMixin(StoreBase):
    def record_batches(self, run: Run, spans: Sequence[Span]) -> list[BatchRecord] | None:
        """Add the next batches and move the cursor past them, in one transaction.

        Guarded by the planning state ``run`` was read with: if another planner moved the run
        on, or began the final pass, nothing is written and None comes back, so batches never
        overlap and no batch of a finished phase is added.
        """
        with self.begin() as conn:
            moved = conn.execute(
                update(runs)
                .where(*_unchanged_since(run))
                .values(cursor=encode_key(spans[-1].last), next_seq=run.next_seq + len(spans), updated_at=self.now())
            ).rowcount
            if not moved:
                return None
            rows = [batch_values(run.id, run.next_seq + i, run.phase, span) for i, span in enumerate(spans)]
            insert = (
                batches.insert().values(created_at=self.now()).returning(batches.c.id, sort_by_parameter_order=True)
            )
            ids = conn.execute(insert, rows).scalars().all()
            self._record(
                conn,
                *(
                    Event(run.name, run.id, BatchStatus.PENDING, None, i, r["seq"])
                    for i, r in zip(ids, rows, strict=True)
                ),
            )
        # Built from what was written (its time of creation is the database's, and unread).
        return [
            BatchRecord.from_mapping({**row, "id": i, "created_at": None}) for i, row in zip(ids, rows, strict=True)
        ]

    def mark_planned_all(self, run: Run) -> bool:
        """The phase has no keys left to plan: only while nobody moved the run on since."""
        with self.begin() as conn:
            return bool(
                conn.execute(
                    update(runs).where(*_unchanged_since(run)).values(planned_all=True, updated_at=self.now())
                ).rowcount
            )
