"""Finishing a backfill inside a migration, and deciding whether it may: the remaining work runs
inline only while it is small, since inside a migration it holds the deploy, and its locks, for as
long as it takes."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alembic.operations import Operations

from backfill import environment
from backfill.alembic_ops.context import (
    MIGRATION_ACTOR,
    logger,
    x_arguments,
)
from backfill.app import App
from backfill.errors import (
    ConfigurationError,
    UnfinishedBackfillError,
)
from backfill.estimate import estimate_rows
from backfill.progress import measure
from backfill.status import RunStatus
from backfill.store import Run

PROGRESS_EVERY_SECONDS = 5.0
"""How often inline finalization logs its progress: enough to see it move, not a flood."""


class Finalize(enum.StrEnum):
    """Whether a migration may run a backfill's remaining batches itself."""

    AUTO = "auto"
    """Only while little is left (``BACKFILL_FINALIZE_MAX_ROWS``): a development database, a
    small table, an empty one. A large remainder is refused with the command to run, since
    inside a migration it holds the deploy, and the locks, for as long as the work takes."""
    ALWAYS = "always"
    NEVER = "never"


FINALIZE_ENV = "BACKFILL_FINALIZE"

FINALIZE_MAX_ROWS_ENV = "BACKFILL_FINALIZE_MAX_ROWS"

DEFAULT_FINALIZE_MAX_ROWS = 100_000

_LEGACY = {"true": Finalize.ALWAYS, "false": Finalize.NEVER}


@dataclass(frozen=True)
class FinalizePolicy:
    mode: Finalize
    max_rows: int


def finalize_policy(operations: Operations, explicit: bool | None) -> FinalizePolicy:
    """The choice from, first to last: the op's own ``finalize=`` argument, ``alembic -x
    backfill_finalize=…`` (or the older ``-x finalize=true|false``), ``BACKFILL_FINALIZE``,
    else ``auto``; the threshold from ``-x backfill_finalize_max_rows=…`` or
    ``BACKFILL_FINALIZE_MAX_ROWS``."""
    x = x_arguments(operations)
    raw_max = x.get("backfill_finalize_max_rows")
    env = {**os.environ, FINALIZE_MAX_ROWS_ENV: raw_max} if raw_max is not None else os.environ
    max_rows = environment.whole(
        FINALIZE_MAX_ROWS_ENV, DEFAULT_FINALIZE_MAX_ROWS, least=0, most=2**62, what="a number of rows", env=env
    )
    if explicit is not None:
        return FinalizePolicy(Finalize.ALWAYS if explicit else Finalize.NEVER, max_rows)
    if "backfill_finalize" in x:
        raw = x["backfill_finalize"]
    elif "finalize" in x:
        legacy = _LEGACY.get(x["finalize"].strip().lower())
        if legacy is None:
            raise ConfigurationError(f"-x finalize must be true or false, got {x['finalize']!r}")
        return FinalizePolicy(legacy, max_rows)
    else:
        raw = os.environ.get(FINALIZE_ENV, "")
    choices = tuple(m.value for m in Finalize)
    mode = environment.choice(FINALIZE_ENV, Finalize.AUTO.value, choices, env={FINALIZE_ENV: raw})
    return FinalizePolicy(Finalize(mode), max_rows)


def rows_left(app: App, name: str, run: Run | None) -> int:
    """The work left, by the same total ``status`` shows (refined as the run goes); for a run
    not started yet, the table's own row estimate."""
    if run is not None and run.rows_total is not None:
        progress = measure(app.store, run)
        return max(0, (progress.rows_total or 0) - run.rows_done)
    target = app.targets.get(name)
    with app.store.reading() as connection:
        return estimate_rows(connection, target.table)[0]


def run_inline(app: App, name: str, why: str, *, params: Mapping[str, Any] | None = None, **overrides: Any) -> Run:
    logger.info("backfill %s: %s", name, why)
    started = time.monotonic()
    final = app.run(
        name,
        on_progress=_ProgressLog(app, name, started).report,
        started_by=MIGRATION_ACTOR,
        params=params,
        **overrides,
    )
    if final.status is not RunStatus.FINISHED:
        raise UnfinishedBackfillError(unfinished(app, name, final))
    logger.info(
        "backfill %s finished: %s rows in %s batches, %.1fs",
        name,
        f"{final.rows_done:,}",
        final.batches_done,
        time.monotonic() - started,
    )
    return final


@dataclass
class _ProgressLog:
    app: App
    name: str
    started: float
    last: float = 0.0

    def report(self, run: Run) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        logger.info("backfill %s: %s (%.0fs)", self.name, progress_text(self.app, run), now - self.started)


def progress_text(app: App, run: Run) -> str:
    """The run's progress in the words and the total ``status`` uses: one total everywhere."""
    progress = measure(app.store, run)
    total = progress.rows_total
    shown = "?" if total is None else f"{'~' if progress.to_json()['rows_total_is_estimate'] else ''}{total:,}"
    percent = "" if progress.fraction is None else f" ({100 * progress.fraction:.1f}%)"
    return f"{run.rows_done:,} of {shown} rows{percent}, {run.batches_done} batch(es) done, {run.batches_failed} failed"


def unfinished(app: App, name: str, run: Run | None, why: str = "") -> str:
    if run is None:
        state = "it has never run"
        fix = f"run it with `backfill run {name}` (or `backfill start {name}` for the workers)"
    else:
        state = f"run {run.id} is {run.status}: {progress_text(app, run)}"
        if run.last_error:
            state += f"; last error: {' '.join(run.last_error.split())[:200]}"
        fix = {
            RunStatus.PAUSED: f"`backfill resume {name}`, then `backfill run {name}` or let the workers finish it",
            RunStatus.FAILED: f"fix the error, then `backfill retry {name}` and `backfill run {name}`",
            RunStatus.CANCELLED: f"`backfill run {name}` starts a new run",
        }.get(run.status, f"finish it with `backfill run {name}`, or let the workers finish it")
    because = f"; {why}" if why else ""
    return (
        f"backfill '{name}' is not finished ({state}{because}): {fix}; "
        f"watch it with `backfill status {name}`, then migrate again"
    )
