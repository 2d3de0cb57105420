"""An operator's retry (``backfill retry``): the failed batches of a run queued again, or split
into smaller batches, and a failed run made running again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from backfill.errors import RunStateError
from backfill.events import Event
from backfill.keyset import Span
from backfill.status import BatchStatus, RunStatus
from backfill.store.base import batches, runs
from backfill.store.records import BatchRecord, Run
from backfill.store.runs import PAUSED, RUNNING, RunsMixin
from backfill.transitions import batch_move, run_move

REOPEN = run_move(RunStatus.FAILED, to=RUNNING)
RETRY_BATCH = batch_move(BatchStatus.FAILED, to=BatchStatus.PENDING)
SPLIT_FAILED = batch_move(BatchStatus.FAILED, to=BatchStatus.SPLIT)


class RetriesMixin(RunsMixin):
    def reopen_failed(
        self, run: Run, splits: Mapping[int, Sequence[Span]] | None = None, *, actor: str | None = None
    ) -> tuple[Run, int]:
        """Re-queue the failed batches of a run and make it running again (``backfill retry``).

        A failed batch named in ``splits`` is replaced by new batches over those spans of its
        keys (smaller ones, to get past a timeout or isolate a bad row), and marked split. Done
        under the run row's lock, counting only the batches this call moved: two operators
        retrying at once re-queue each batch once, and the counters stay what the batches say.
        """
        splits = splits or {}
        with self.begin() as conn:
            self._lock_run(conn, run.id)
            current = self._run(conn, run.id)
            if current.status not in (RUNNING, PAUSED, RunStatus.FAILED):
                raise RunStateError(
                    f"backfill '{run.name}': run {run.id} is {current.status}; there is nothing to retry"
                )
            failed = [
                BatchRecord.from_row(r)
                for r in conn.execute(
                    select(batches)
                    .where(batches.c.run_id == run.id, batches.c.status == BatchStatus.FAILED.value)
                    .order_by(batches.c.seq)
                )
            ]
            changes: list[Event] = []
            next_seq = current.next_seq
            requeued = 0
            for batch in failed:
                spans = splits.get(batch.id)
                move = SPLIT_FAILED if spans else RETRY_BATCH
                moved = conn.execute(
                    self._move_batches(move, attempts=0, lease_token=None, dispatched_at=None, finished_at=None).where(
                        batches.c.id == batch.id
                    )
                ).rowcount
                if not moved:
                    continue
                requeued += 1
                changes.append(
                    Event(
                        backfill=run.name,
                        run_id=run.id,
                        after=move.target,
                        before=BatchStatus.FAILED,
                        batch_id=batch.id,
                        seq=batch.seq,
                        worker=actor,
                    )
                )
                next_seq = self._add_batches(conn, run.name, batch, spans or (), next_seq, changes)
            if not requeued and current.status is not RunStatus.FAILED:
                raise RunStateError(
                    f"backfill '{run.name}' has no failed batches to retry (run {run.id} is {current.status})"
                )
            values: dict[str, Any] = {
                "batches_failed": runs.c.batches_failed - requeued,
                "next_seq": next_seq,
                "updated_at": self.now(),
            }
            statement = update(runs).where(runs.c.id == run.id).values(values)
            if current.status is RunStatus.FAILED:
                statement = self._move_run(run.id, REOPEN, **values).values(
                    active_name=run.name, finished_at=None, last_error=None
                )
                changes.append(
                    Event(backfill=run.name, run_id=run.id, after=RUNNING, before=RunStatus.FAILED, worker=actor)
                )
            try:
                conn.execute(statement)
                self._forget_dispatches(conn, run.id)
            except IntegrityError:
                raise RunStateError(
                    f"backfill '{run.name}' has a newer active run: retry that one, or cancel it first"
                ) from None
            self._record(conn, *changes)
            return self._run(conn, run.id), requeued
