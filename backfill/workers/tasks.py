"""The Celery tasks: each parses its message and calls one library function."""

from __future__ import annotations

from backfill.boundary import contained
from backfill.workers.app import celery_app, dispatcher, members


@celery_app.task(name="backfill.tick")
def tick() -> int:
    """Plan and send batches for every queued or running run (sent by beat), on every fleet
    member: one that is down or failing is a warning of its own, and the others are served."""
    nobody: list[str | None] = []  # the fleet's declaration unreadable: said, and the next tick reads it again
    names = contained("reading the fleet", _member_names, nobody)
    sent = 0
    for name in names:
        sent += contained(f"tick {name}" if name else "tick", lambda: dispatcher(name).tick(), 0)  # noqa: B023
    return sent


def _member_names() -> list[str | None]:
    """The fleet's members, or [None]: the one database."""
    declared = members()
    return [None] if declared is None else list(declared)


@celery_app.task(name="backfill.execute_batch")
def execute_batch(batch_id: int, member: str | None = None) -> list[str]:
    """Run a batch (of ``member``'s database, in a fleet) and the run's next ones for a while,
    then send messages for the rest (a batch whose message is dropped here is sent again by a
    later tick)."""
    where = f"batch {batch_id}" + (f" of {member}" if member else "")
    return contained(where, lambda: [o.result.value for o in dispatcher(member).execute(batch_id)], [])
