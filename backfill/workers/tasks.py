"""The Celery tasks: each parses its message and calls one library function."""

from __future__ import annotations

from backfill.boundary import contained
from backfill.workers.app import celery_app, dispatcher


@celery_app.task(name="backfill.tick")
def tick() -> int:
    """Plan and send batches for every queued or running run (sent by beat)."""
    return contained("tick", lambda: dispatcher().tick(), 0)


@celery_app.task(name="backfill.execute_batch")
def execute_batch(batch_id: int) -> list[str]:
    """Run a batch and the run's next ones for a while, then send messages for the rest (a batch
    whose message is dropped here is sent again by a later tick)."""
    return contained(f"batch {batch_id}", lambda: [o.result.value for o in dispatcher().execute(batch_id)], [])
