"""Application code that must not run before a backfill's data is complete: a feature flag, a
code path that reads the new column, a job that assumes every row is filled.

``require_finished(NAME, engine)`` raises until the backfill's latest run is finished. A finished
backfill stays finished, so the positive answer is kept for the life of the process (per database
and name) and costs nothing after the first call; a negative one is asked again every time.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine

from backfill.database import display_url
from backfill.errors import BackfillNotFinished
from backfill.status import RunStatus
from backfill.store import Store

_finished: set[tuple[str, str]] = set()


def require_finished(name: str, bind: Engine | Connection) -> None:
    """Return once backfill ``name`` is finished in this database; raise ``BackfillNotFinished``
    (one line: its state, and the command that finishes it) until then."""
    key = (display_url(bind.engine.url), name)
    if key in _finished:
        return
    run = Store(bind).latest_run(name)
    if run is None:
        raise BackfillNotFinished(
            f"backfill '{name}' has never run: `backfill run {name}` (or start it for the workers)"
        )
    if run.status is not RunStatus.FINISHED:
        done = f"{run.rows_done:,} rows done" + (f" of ~{run.rows_total:,}" if run.rows_total else "")
        raise BackfillNotFinished(
            f"backfill '{name}' is not finished (run {run.id} is {run.status}, {done}): "
            f"`backfill status {name}`, and `backfill run {name}` or the workers finish it"
        )
    _finished.add(key)
