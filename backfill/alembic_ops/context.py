"""What an operation knows of the migration it runs in: the definitions, online or offline,
the dialect, the ``-x`` arguments; and the one boundary every implementation goes through."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from alembic.operations import Operations
from alembic.util import CommandError
from sqlalchemy import (
    inspect,
)

from backfill import tables
from backfill.definition import Backfill
from backfill.errors import (
    BackfillError,
    ConfigurationError,
    MigrationError,
)
from backfill.registry import APP_ENV, Registry, load

logger = logging.getLogger("backfill.alembic")

MIGRATION_ACTOR = "migration"
"""Who a run queued by a revision was started by, and who acts in the operations' events."""

APP_ATTRIBUTE = "backfill_app"
"""The key in ``config.attributes`` that names the definitions (see the module docstring)."""


def migration_definitions(operations: Operations) -> Registry:
    config = operations.migration_context.config
    found: Any = config.attributes.get(APP_ATTRIBUTE) if config is not None else None
    if found is None:
        if not os.environ.get(APP_ENV):
            raise ConfigurationError(
                f"the migration does not know the backfill definitions: set "
                f'config.attributes["{APP_ATTRIBUTE}"] = "myapp.backfills" in env.py, or set {APP_ENV}'
            )
        return load(None)
    if isinstance(found, str):
        return load(found)
    if isinstance(found, Registry):
        return found
    if isinstance(found, Mapping) and all(isinstance(d, Backfill) for d in found.values()):
        return Registry(dict(found), source=f'config.attributes["{APP_ATTRIBUTE}"]')
    raise ConfigurationError(
        f'config.attributes["{APP_ATTRIBUTE}"] must be a module name or a mapping of backfill '
        f"definitions, not {type(found).__name__}"
    )


def for_alembic(implementation: Callable[[Operations, Any], None]) -> Callable[[Operations, Any], None]:
    """Alembic's command line prints its own ``CommandError`` as one ``FAILED: <message>`` line
    and anything else as a traceback: a mistake met inside an operation (an unknown backfill,
    a missing column, NULL rows) is re-raised as one, keeping its message and its class."""

    @functools.wraps(implementation)
    def implement(operations: Operations, operation: Any) -> None:
        try:
            implementation(operations, operation)
        except CommandError:
            raise
        except BackfillError as exc:
            raise MigrationError(" ".join(str(exc).split())) from exc

    return implement


def offline(operations: Operations) -> bool:
    return bool(operations.migration_context.as_sql)


def dialect_name(operations: Operations) -> str:
    return str(operations.migration_context.dialect.name)


def existing_tables(operations: Operations) -> set[str]:
    """Which checkpoint tables exist already; offline, none are assumed to."""
    if offline(operations):
        return set()
    inspector = inspect(operations.get_bind())
    return {t.name for t in tables.metadata.sorted_tables if inspector.has_table(t.name)}


def x_arguments(operations: Operations) -> dict[str, str]:
    config = operations.migration_context.config
    given = getattr(getattr(config, "cmd_opts", None), "x", None) or []
    return dict(arg.split("=", 1) for arg in given if "=" in arg)
