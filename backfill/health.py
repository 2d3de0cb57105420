"""Whether the database can take a backfill's load right now.

Checked by the planner before it starts more batches: while any check says no, the run is
held — nothing new starts, batches in flight finish — and it carries on by itself once every
check passes again. The database's own signals come first (replica lag, an old transaction,
the share of connections in use); the application can add its own (``Backfill.health_checks``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from backfill.definition import Backfill, Tuning

logger = logging.getLogger(__name__)

Probe = Callable[[Connection, Tuning], str | None]


def _scalar(connection: Connection, sql: str) -> Any:
    return connection.execute(text(sql)).scalar()


def _pg_replica_lag(connection: Connection, tuning: Tuning) -> str | None:
    if not tuning.max_replica_lag:
        return None
    lag = _scalar(connection, "SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication")
    if lag is not None and lag > tuning.max_replica_lag:
        return f"a replica lags {lag:.0f}s behind (limit {tuning.max_replica_lag:g}s)"
    return None


def _pg_old_transaction(connection: Connection, tuning: Tuning) -> str | None:
    if not tuning.max_transaction_age:
        return None
    age = _scalar(
        connection,
        "SELECT max(extract(epoch FROM clock_timestamp() - xact_start)) FROM pg_stat_activity "
        # Only this database's transactions keep vacuum from the dead rows of its tables.
        "WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND datname = current_database()",
    )
    if age is not None and age > tuning.max_transaction_age:
        return f"a transaction has been open {age:.0f}s (limit {tuning.max_transaction_age:g}s): vacuum is held back"
    return None


def _pg_connections(connection: Connection, tuning: Tuning) -> str | None:
    if not tuning.max_connections_used:
        return None
    active, limit = connection.execute(
        text(
            "SELECT count(*) FILTER (WHERE state = 'active'), current_setting('max_connections')::int "
            "FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
    ).one()
    if active > tuning.max_connections_used * limit:
        return f"{active} of {limit} connections are active (limit {tuning.max_connections_used:.0%})"
    return None


def _mysql_old_transaction(connection: Connection, tuning: Tuning) -> str | None:
    if not tuning.max_transaction_age:
        return None
    age = _scalar(
        connection,
        "SELECT MAX(TIMESTAMPDIFF(SECOND, trx_started, NOW())) FROM information_schema.innodb_trx "
        "WHERE trx_mysql_thread_id <> CONNECTION_ID()",
    )
    if age is not None and age > tuning.max_transaction_age:
        return f"a transaction has been open {age}s (limit {tuning.max_transaction_age:g}s): purge is held back"
    return None


def _mysql_connections(connection: Connection, tuning: Tuning) -> str | None:
    if not tuning.max_connections_used:
        return None
    running = int(connection.execute(text("SHOW GLOBAL STATUS LIKE 'Threads_running'")).one()[1])
    limit = int(_scalar(connection, "SELECT @@GLOBAL.max_connections"))
    if running > tuning.max_connections_used * limit:
        return f"{running} of {limit} connections are running (limit {tuning.max_connections_used:.0%})"
    return None


PROBES: dict[str, tuple[Probe, ...]] = {
    "postgresql": (_pg_replica_lag, _pg_old_transaction, _pg_connections),
    # Replica lag on MySQL is read on the replica (SHOW REPLICA STATUS): add a health check
    # that connects to it.
    "mysql": (_mysql_old_transaction, _mysql_connections),
    "mariadb": (_mysql_old_transaction, _mysql_connections),
}


def unhealthy(connection: Connection, definition: Backfill, tuning: Tuning) -> str | None:
    """The first reason to leave the database alone now, or None when every check passes.

    A check that cannot run (no privilege to read the statistics, say) is logged and passed
    over: a missing grant must not hold a backfill forever.
    """
    for probe in PROBES.get(connection.dialect.name, ()):
        try:
            with connection.begin_nested() if connection.in_transaction() else connection.begin():
                reason = probe(connection, tuning)
        except DBAPIError as exc:
            logger.warning("health check %s cannot run: %s", probe.__name__.lstrip("_"), exc.orig)
            continue
        if reason:
            return reason
    for check in definition.health_checks:
        reason = check(connection)
        if reason:
            return f"{getattr(check, '__name__', 'health check')}: {reason}"
    return None
