"""The Celery tasks: each parses its message and calls one library function."""

from __future__ import annotations

from backfill.boundary import contained
from backfill.workers.app import celery_app, dispatcher, tick_fleet


@celery_app.task(name="backfill.tick")
def tick() -> int:
    """Plan and send batches for every queued or running run (sent by beat), on every member
    of a fleet."""
    return tick_fleet()


@celery_app.task(name="backfill.execute_batch")
def execute_batch(batch_id: int, member: str | None = None) -> list[str]:
    """Run a batch (of ``member``'s database, in a fleet) and the run's next ones for a while,
    then send messages for the rest (a batch whose message is dropped here is sent again by a
    later tick)."""
    where = f"batch {batch_id}" + (f" of {member}" if member else "")
    return contained(where, lambda: [o.result.value for o in dispatcher(member).execute(batch_id)], [])
