"""Alembic's offline SQL of a project: ``alembic -c INI upgrade heads --sql``, in a child process
(``python -m backfill.lint.offline INI``), for squawk to read.

The database URL comes from ``BACKFILL_DATABASE_URL`` in the child's environment and is also
set as the ini's ``sqlalchemy.url`` and as ``config.attributes["database_url"]``: an ``env.py``
made by ``alembic init`` reads the first, this project's reads the others, and all of them then
render PostgreSQL's SQL. Nothing connects: offline, only the URL's dialect is used.

A child process, because rendering imports and runs the project's ``env.py`` and revisions,
which the linter itself never does; whatever they do to logging, ``sys.path`` or a module's
state stays in the child. The URL travels in the environment, not the command line, where
any user of the machine could read its password.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from backfill.database import DATABASE_URL_ENV


def main(argv: Sequence[str] | None = None) -> int:
    from alembic import command
    from alembic.config import Config

    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1:
        print("usage: python -m backfill.lint.offline ALEMBIC_INI", file=sys.stderr)
        return 2
    config = Config(arguments[0])
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        config.attributes["database_url"] = url
    command.upgrade(config, "heads", sql=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
