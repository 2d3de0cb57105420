"""Replica lag read on the replicas themselves, for every database kind.

PostgreSQL's primary knows how far behind its streaming replicas are (``pg_stat_replication``,
``health``); a MySQL or MariaDB primary does not, and a cascading or logical replica is not on
that list either. ``BACKFILL_REPLICA_URLS`` names replicas to ask (comma-separated database
URLs): while any lags more than ``max_replica_lag``, or cannot say (replication stopped, the
replica unreachable), the run is held, with the replica named — its password never shown.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from backfill.database import display_url, make_engine, parse_url
from backfill.errors import ConfigurationError

REPLICA_URLS_ENV = "BACKFILL_REPLICA_URLS"
CONNECT_SECONDS = 3
"""A replica that does not answer within this long is reported as unreachable: a check must not
hold a chain up for the default connect timeout."""

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def urls_from_environment() -> tuple[str, ...]:
    """The replicas to ask, each checked as a database URL now: a mistake in the setting is
    said before a run is recorded, not found by the run's first health check."""
    raw = os.environ.get(REPLICA_URLS_ENV, "")
    urls = tuple(part.strip() for part in raw.split(",") if part.strip())
    for url in urls:
        try:
            parse_url(url)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{REPLICA_URLS_ENV}: {exc}") from None
    return urls


def _engine(url: str) -> Engine:
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = parse_url(url)
            args = {"connect_timeout": CONNECT_SECONDS}
            engine = _engines[url] = make_engine(parsed, pool_size=1, max_overflow=1, connect_args=args)
        return engine


def lag(connection: Connection) -> float | None:
    """Seconds the replica behind ``connection`` lags (inf: replication stopped or replay
    paused with changes waiting), or None when it is not a replica."""
    if connection.dialect.name == "postgresql":
        row = connection.execute(
            text(
                "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn(), "
                "extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
            )
        ).one()
        recovering, caught_up, behind = row
        if not recovering:
            return None
        if caught_up:
            return 0.0
        return float("inf") if behind is None else float(behind)
    status = connection.execute(text("SHOW SLAVE STATUS")).mappings().first()
    if status is None:
        return None
    seconds = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
    running = status.get("Slave_SQL_Running", status.get("Replica_SQL_Running")) == "Yes"
    if seconds is None or not running:
        return float("inf")
    return float(seconds)


def lagging(urls: Sequence[str], limit: float) -> str | None:
    """Why the replicas hold the run back (the first that does), or None."""
    for url in urls:
        engine = _engine(url)
        where = display_url(engine.url)
        try:
            with engine.connect() as connection:
                behind = lag(connection)
        except DBAPIError as exc:
            return f"replica {where} cannot be asked for its lag ({str(exc.orig).splitlines()[0]})"
        if behind is None:
            continue
        if behind == float("inf"):
            return f"replica {where} is not replaying (replication stopped or paused with changes waiting)"
        if behind > limit:
            return f"replica {where} lags {behind:.1f}s behind (limit {limit:g}s)"
    return None
