"""Small things many tests share: the bad rows of the test app, a free port."""

from __future__ import annotations

import socket

from tests.apps import counters
from tests.conftest import Database


def poison(db: Database, *ids: int) -> None:
    """Make the ``poisoned`` backfill fail on the batches holding these ids (none: on none)."""
    with db.engine.begin() as connection:
        connection.execute(counters.poison.delete())
        if ids:
            connection.execute(counters.poison.insert(), [{"id": i} for i in ids])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
