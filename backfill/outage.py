"""Riding through a database outage in the commands that wait on the database.

A worker lives on through an outage by itself (the next message, the next tick); ``backfill run``
is one process with one run to finish, and ``backfill wait`` holds a deploy script until the
data is done, so they wait: when the database goes away ``run`` lets its chains end (a batch in
flight rolls back with its connection), both say "waiting for the database", ask the database
every few seconds whether it is back, and carry on where the checkpoints say — for up to
``BACKFILL_OUTAGE_SECONDS``. Past that they end with one line: what failed, that nothing was
lost, and the command that continues.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, PendingRollbackError

from backfill import environment
from backfill.clock import Clock
from backfill.errors import DatabaseUnavailableError
from backfill.failures import error_text, is_transient

OUTAGE_ENV = "BACKFILL_OUTAGE_SECONDS"
DEFAULT_OUTAGE_SECONDS = 60
PROBE_SECONDS = (0.5, 5.0)
"""The first wait between two looks at the database, and the longest (it doubles)."""


def outage_seconds() -> int:
    return environment.whole(OUTAGE_ENV, DEFAULT_OUTAGE_SECONDS, least=0, most=86_400, what="a whole number of seconds")


def is_outage(exc: BaseException) -> bool:
    """An error that says the database is away or its connection was lost (what a retry after
    it comes back cures), rather than a fault of the definition or of backfill."""
    if isinstance(exc, PendingRollbackError):  # a connection lost inside a transaction
        return True
    return isinstance(exc, DBAPIError) and is_transient(exc)


class Outage:
    """One outage's clock: the first failure starts it, the database's answer ends it."""

    def __init__(self, engine: Engine, clock: Clock, again: str, seconds: float | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.again = again
        """The command that continues, named in the line said past the limit."""
        self.seconds = outage_seconds() if seconds is None else seconds
        self.since: float | None = None

    def wait(self, cause: BaseException, on_wait: Callable[[str | None], None] | None = None) -> None:
        """Wait until the database answers again, or raise ``DatabaseUnavailableError`` once the
        outage has lasted ``seconds``."""
        now = self.clock.monotonic()
        if self.since is None:
            self.since = now
        said = error_text(cause, 200).splitlines()[0]
        pause = PROBE_SECONDS[0]
        while True:
            if on_wait is not None:
                on_wait(f"waiting for the database ({now - self.since:.0f}s of {self.seconds:g}s): {said}")
            try:
                with self.engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except DBAPIError as exc:
                if not is_transient(exc):
                    raise
                said = error_text(exc, 200).splitlines()[0]
            now = self.clock.monotonic()
            left = self.since + self.seconds - now
            if left <= 0:
                raise DatabaseUnavailableError(
                    f"the database did not answer for {now - self.since:.0f}s ({said}): nothing was lost, every "
                    f"batch commits whole or not at all; `{self.again}` continues where it stopped "
                    f"(wait longer with {OUTAGE_ENV})"
                )
            self.clock.sleep(min(pause, left))
            pause = min(pause * 2, PROBE_SECONDS[1])

    def over(self, on_wait: Callable[[str | None], None] | None = None) -> None:
        """The database answered and the runner went on: the next failure starts a new outage."""
        if self.since is not None and on_wait is not None:
            on_wait(None)
        self.since = None
