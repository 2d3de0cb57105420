"""Whether the database can take a backfill's load right now.

Looked at by the run's monitor (``Planner.watch``) every ``HEALTH_SECONDS``, between batches and at
every tick: while any check says no, the run is *held* — every claim refuses, so nothing new
starts in any worker, and the batches in flight finish — and it carries on by itself once every
check passes again. Past a critical limit the run pauses itself instead, and says why: that
needs an operator.

The database's own signals come first: replica lag (on the primary's ``pg_stat_replication``,
and on every replica of ``BACKFILL_REPLICA_URLS``, see ``replicas``), an old transaction, the
share of connections in use, the server's load, a VACUUM on the run's table. Then an operator's
throttle query, then the definition's own checks (``Backfill.health_checks``: any callable, such
as ``prometheus.PrometheusCheck`` for the application's SLO).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from backfill import replicas
from backfill.database import APPLICATION_NAME
from backfill.definition import Backfill, Tuning

logger = logging.getLogger(__name__)

HEALTH_SECONDS = 0.5
"""How often a run's health is looked at, per process running it: a hold starts within about
this long of its cause (and a batch), a handful of catalog queries each time."""


@dataclass(frozen=True)
class Subject:
    """What the checks look at: a run's definition, its settings as they are now, and an
    operator's throttle query if one is in force."""

    definition: Backfill
    tuning: Tuning
    throttle_query: str | None = None


@dataclass(frozen=True)
class Verdict:
    hold: str | None = None
    """Why nothing new should start now (None: go on)."""
    pause: str | None = None
    """Why the run should stop until an operator resumes it: past a critical limit."""


Probe = Callable[[Connection, Subject], str | None]


def _scalar(connection: Connection, sql: str, **params: Any) -> Any:
    return connection.execute(text(sql), params).scalar()


def _pg_replica_lag(connection: Connection, subject: Subject) -> str | None:
    limit = subject.tuning.max_replica_lag
    if not limit:
        return None
    lag = _scalar(connection, "SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication")
    if lag is not None and lag > limit:
        return f"a replica lags {lag:.1f}s behind (limit {limit:g}s)"
    return None


def _pg_old_transaction(connection: Connection, subject: Subject) -> str | None:
    limit = subject.tuning.max_transaction_age
    if not limit:
        return None
    age = _scalar(
        connection,
        "SELECT max(extract(epoch FROM clock_timestamp() - xact_start)) FROM pg_stat_activity "
        # Only this database's transactions keep vacuum from the dead rows of its tables.
        "WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND datname = current_database()",
    )
    if age is not None and age > limit:
        return f"a transaction has been open {age:.0f}s (limit {limit:g}s): vacuum is held back"
    return None


def _pg_connections(connection: Connection, subject: Subject) -> str | None:
    share = subject.tuning.max_connections_used
    if not share:
        return None
    active, limit = connection.execute(
        text(
            "SELECT count(*) FILTER (WHERE state = 'active'), current_setting('max_connections')::int "
            "FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
    ).one()
    if active > share * limit:
        return f"{active} of {limit} connections are active (limit {share:.0%})"
    return None


def pg_load(connection: Connection) -> int:
    """Sessions running a statement, the run's own (and this one) left out."""
    return int(
        _scalar(
            connection,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active' "
            "AND pid <> pg_backend_pid() AND application_name <> :ours",
            ours=APPLICATION_NAME,
        )
    )


def mysql_load(connection: Connection) -> int:
    """``Threads_running``, less this session's own."""
    running = int(connection.execute(text("SHOW GLOBAL STATUS LIKE 'Threads_running'")).one()[1])
    return max(0, running - 1)


LOAD: dict[str, Callable[[Connection], int]] = {"postgresql": pg_load, "mysql": mysql_load, "mariadb": mysql_load}


def _load(connection: Connection, subject: Subject) -> str | None:
    limit = subject.tuning.max_load
    if not limit:
        return None
    load = LOAD[connection.dialect.name](connection)
    if load > limit:
        return f"the server is busy: {load} sessions running (limit max_load={limit:g})"
    return None


def critical_load(connection: Connection, subject: Subject) -> str | None:
    """Past ``critical_load`` the run pauses itself: a verdict of its own, checked first."""
    limit = subject.tuning.critical_load
    if not limit or connection.dialect.name not in LOAD:
        return None
    load = LOAD[connection.dialect.name](connection)
    if load > limit:
        return (
            f"critical load: {load} sessions running, over critical_load={limit:g}; "
            f"`backfill resume {subject.definition.name}` once the server has recovered"
        )
    return None


def _pg_vacuum(connection: Connection, subject: Subject) -> str | None:
    if not subject.tuning.hold_during_vacuum:
        return None
    row = connection.execute(
        text(
            "SELECT a.backend_type, p.phase FROM pg_stat_progress_vacuum p "
            "JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_stat_activity a ON a.pid = p.pid "
            "WHERE c.relname = :table AND n.nspname = coalesce(:schema, current_schema()) LIMIT 1"
        ),
        {"table": subject.definition.table, "schema": subject.definition.schema},
    ).first()
    if row is None:
        return None
    who = "autovacuum" if row.backend_type == "autovacuum worker" else "a VACUUM"
    return f"{who} is working on {subject.definition.table} ({row.phase})"


def _mysql_old_transaction(connection: Connection, subject: Subject) -> str | None:
    limit = subject.tuning.max_transaction_age
    if not limit:
        return None
    age = _scalar(
        connection,
        "SELECT MAX(TIMESTAMPDIFF(SECOND, trx_started, NOW())) FROM information_schema.innodb_trx "
        "WHERE trx_mysql_thread_id <> CONNECTION_ID()",
    )
    if age is not None and age > limit:
        return f"a transaction has been open {age}s (limit {limit:g}s): purge is held back"
    return None


def _mysql_connections(connection: Connection, subject: Subject) -> str | None:
    share = subject.tuning.max_connections_used
    if not share:
        return None
    running = int(connection.execute(text("SHOW GLOBAL STATUS LIKE 'Threads_running'")).one()[1])
    limit = int(_scalar(connection, "SELECT @@GLOBAL.max_connections"))
    if running > share * limit:
        return f"{running} of {limit} connections are running (limit {share:.0%})"
    return None


PROBES: dict[str, tuple[Probe, ...]] = {
    "postgresql": (_pg_replica_lag, _pg_old_transaction, _pg_connections, _load, _pg_vacuum),
    # Replica lag on MySQL/MariaDB is read on the replicas themselves (``replicas``).
    "mysql": (_mysql_old_transaction, _mysql_connections, _load),
    "mariadb": (_mysql_old_transaction, _mysql_connections, _load),
}


def throttle_query_holds(connection: Connection, query: str) -> str | None:
    """An operator's throttle query holds the run while it returns a row (gh-ost's
    ``--throttle-query``), and while it fails: the operator asked to be asked."""
    try:
        with connection.begin_nested() if connection.in_transaction() else connection.begin():
            found = connection.execute(text(query)).first()
    except DBAPIError as exc:
        return f"throttled: the throttle query fails ({str(exc.orig).splitlines()[0]}): {query}"
    return f"throttled: the throttle query returned a row: {query}" if found is not None else None


def _guarded(connection: Connection, probe: Probe, subject: Subject) -> str | None:
    """One check in a transaction (or savepoint) of its own; one that cannot run (no privilege
    to read the statistics, say) is logged and passed over: a missing grant must not hold a
    backfill forever."""
    try:
        with connection.begin_nested() if connection.in_transaction() else connection.begin():
            return probe(connection, subject)
    except DBAPIError as exc:
        logger.warning("health check %s cannot run: %s", probe.__name__.lstrip("_"), exc.orig)
        return None


def has_checks(dialect: str, subject: Subject, replica_urls: Sequence[str] = ()) -> bool:
    """Whether ``verdict`` has anything to look at (SQLite alone, with none of the definition's
    own checks and no throttle query, has nothing: the monitor then costs no transaction)."""
    return bool(
        PROBES.get(dialect) or subject.throttle_query or subject.definition.health_checks
        or (replica_urls and subject.tuning.max_replica_lag)
    )  # fmt: skip


def verdict(connection: Connection, subject: Subject, replica_urls: Sequence[str] = ()) -> Verdict:
    """The first reason to pause, else the first reason to hold, else go on."""
    critical = _guarded(connection, critical_load, subject)
    if critical:
        return Verdict(pause=critical)
    for probe in PROBES.get(connection.dialect.name, ()):
        reason = _guarded(connection, probe, subject)
        if reason:
            return Verdict(hold=reason)
    if subject.tuning.max_replica_lag:
        reason = replicas.lagging(replica_urls, subject.tuning.max_replica_lag)
        if reason:
            return Verdict(hold=reason)
    reason = throttle_query_holds(connection, subject.throttle_query) if subject.throttle_query else None
    if reason:
        return Verdict(hold=reason)
    for check in subject.definition.health_checks:
        reason = check(connection)
        if reason:
            return Verdict(hold=f"{getattr(check, '__name__', 'health check')}: {reason}")
    return Verdict()
