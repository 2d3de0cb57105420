"""The errors a user can cause, each carrying the fix.

Every error that reaches the command line is one of these: the CLI prints its message as a
single line and exits with its ``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class BackfillError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = 2


class DefinitionError(BackfillError):
    """A backfill definition is malformed (caught at import, before the database is touched)."""


class AppError(BackfillError):
    """The user's definitions module cannot be loaded, or does not define the name asked for."""


class ConfigurationError(BackfillError):
    """A missing or malformed setting: database URL, driver, environment variable."""


class TargetError(BackfillError):
    """The definition does not match the database: missing table or column, non-unique key."""


class PlanningError(BackfillError):
    """Planning a run hit an error in the definition's own SQL (its table, key or ``pending``
    predicate) that planning again would hit again: the run stops, failed, with it."""


class StoreMissingError(BackfillError):
    """The checkpoint tables do not exist yet."""


class RunStateError(BackfillError):
    """The requested action does not fit the run's current state (a second start, resuming a
    finished run, ...)."""


class DatabaseUnavailableError(BackfillError):
    """The database cannot be reached; nothing was changed."""

    exit_code = 1


class BackfillNotFinished(BackfillError):
    """Application code asked for a backfill's data (``require_finished``) before it is complete."""

    exit_code = 1


class RunFailedError(BackfillError):
    """A run ended failed or cancelled."""

    exit_code = 1


def __getattr__(name: str) -> Any:
    """The Alembic operations' errors subclass Alembic's ``CommandError``; they are made on
    first use, so that every ``backfill`` command does not pay for importing Alembic."""
    if name not in _MIGRATION_ERRORS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from alembic.util import CommandError

    class MigrationError(BackfillError, CommandError):
        """A mistake met inside an Alembic operation. Alembic's command line prints its own
        ``CommandError`` as one ``FAILED: <message>`` line, and anything else as a traceback."""

    class UnfinishedBackfillError(MigrationError):
        """A revision needs a backfill to be finished and it is not."""

        exit_code = 1

    class NullValuesError(MigrationError):
        """NOT NULL was asked for while rows still hold NULL."""

    class OfflineModeError(MigrationError):
        """The operation cannot be written down as SQL for ``alembic upgrade --sql``."""

    made = {c.__name__: c for c in (MigrationError, UnfinishedBackfillError, NullValuesError, OfflineModeError)}
    for made_name, made_class in made.items():
        made_class.__module__ = __name__
        globals()[made_name] = made_class
    return made[name]


_MIGRATION_ERRORS = ("MigrationError", "UnfinishedBackfillError", "NullValuesError", "OfflineModeError")
