"""Turning a database URL into an engine, with the per-dialect connection setup the engine
relies on, and without ever showing a password."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from backfill.errors import ConfigurationError

DATABASE_URL_ENV = "BACKFILL_DATABASE_URL"

_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}

SQLITE_BUSY_KEY = "sqlite_busy_timeout_ms"
"""``connection.info`` key: the busy timeout of a SQLite connection's next BEGIN (``limits``)."""

READ_ONLY = "backfill_read_only"
"""``connection.info`` key: the connection only reads (on SQLite, its transactions are deferred)."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for the write lock outside a batch (store bookkeeping)."""


def parse_url(raw: str | URL | None) -> URL:
    """Parse a URL from the option or the environment; bare ``postgresql://`` means psycopg 3."""
    if raw is None:
        raw = os.environ.get(DATABASE_URL_ENV)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise ConfigurationError(
            f"no database URL: pass --database-url or set {DATABASE_URL_ENV} "
            "(for example sqlite:///app.db or postgresql://user@host/db)"
        )
    try:
        url = make_url(raw)
    except ArgumentError:
        # The text may hold a password: never echo it back.
        raise ConfigurationError(
            "the database URL cannot be parsed: expected dialect[+driver]://user:password@host/dbname"
        ) from None
    if url.drivername in _DRIVERS:
        url = url.set(drivername=_DRIVERS[url.drivername])
    return url


def display_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def make_engine(raw: str | URL | None, **kwargs: Any) -> Engine:
    url = parse_url(raw)
    if url.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("check_same_thread", False)
    elif url.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", 16)
    # No pre-ping: it would add a round trip to every checkout on the per-batch path. A pooled
    # connection that died is a transient error, which the executor and the runner retry.
    try:
        engine = create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise ConfigurationError(
            f"no SQLAlchemy dialect or driver for '{url.drivername}' in {display_url(url)}: "
            "use sqlite, postgresql or mysql, and install its driver"
        ) from None
    except ImportError as exc:
        raise ConfigurationError(
            f"the driver for {display_url(url)} is not installed ({exc.name}): pip install it"
        ) from None
    except ArgumentError as exc:
        raise ConfigurationError(f"bad database URL {display_url(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    """Make SQLite transactions take the write lock at BEGIN.

    pysqlite's default deferred transactions upgrade a read lock to a write lock mid-transaction,
    which fails at once (no busy wait) when another connection is writing; with ``BEGIN
    IMMEDIATE`` concurrent batches queue on the lock instead. The busy timeout of a batch's
    connection is its lock timeout (``limits``), applied here, before the lock is taken.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        busy_ms = connection.info.get(SQLITE_BUSY_KEY, SQLITE_BUSY_TIMEOUT_MS)
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy_ms)}")
        # A reader (status, a planner's look at the batches) reads a snapshot beside the
        # writer (WAL); taking the write lock would make it queue behind every batch.
        connection.exec_driver_sql("BEGIN" if connection.info.get(READ_ONLY) else "BEGIN IMMEDIATE")
