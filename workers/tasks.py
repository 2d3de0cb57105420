"""The Celery tasks: each parses its message and calls one library function."""

from __future__ import annotations

from workers.app import celery_app, dispatcher


@celery_app.task(name="backfill.tick")
def tick() -> int:
    """Plan and send batches for every queued or running run (sent by beat)."""
    return dispatcher().tick()


@celery_app.task(name="backfill.execute_batch")
def execute_batch(batch_id: int) -> list[str]:
    """Run a batch and the run's next ones for a while, then send messages for the rest."""
    return [outcome.result.value for outcome in dispatcher().execute(batch_id)]
