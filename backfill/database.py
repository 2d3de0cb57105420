"""Turning a database URL into an engine, with the per-dialect connection setup the engine
relies on, and without ever showing a password."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import URL, Connection, Engine, Table, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SAWarning

from backfill import environment
from backfill.errors import ConfigurationError

DATABASE_URL_ENV = "BACKFILL_DATABASE_URL"
CONNECT_TIMEOUT_ENV = "BACKFILL_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 10
"""Seconds to wait for a server to accept and answer a new connection: a server that takes the
connection but never answers would otherwise hold a command (``status`` in a deploy script, a
worker's start) for ever."""
COMMAND_TIMEOUT_ENV = "BACKFILL_COMMAND_TIMEOUT"
DEFAULT_COMMAND_TIMEOUT = 60
"""Seconds an operator's command (``status``, ``pause``, ``retry``, ...) lets one statement run
or wait for a lock: behind a migration holding a run's row, it says so instead of hanging."""

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

APPLICATION_NAME = "backfill"
"""PostgreSQL's ``application_name`` of every session of ours (unless the URL names another): the
load and lock-wait checks leave the run's own sessions out by it."""

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
        # An unescaped @ in a password leaves the rest of it in the host name, which a failed
        # lookup would print: refuse it here, as the port that is not a port.
        if "@" in (url.host or "") or not 1 <= (url.port or 1) <= 65_535:
            raise ValueError
    except (ArgumentError, ValueError):
        # The text may hold a password: never echo any of it back.
        raise ConfigurationError(
            "the database URL cannot be parsed: expected dialect[+driver]://user:password@host[:port]/dbname, "
            "with a numeric port, and @ : / in a user or password written %40 %3A %2F"
        ) from None
    if url.drivername in _DRIVERS:
        url = url.set(drivername=_DRIVERS[url.drivername])
    return url


def connect_timeout() -> int:
    return _whole_seconds(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT)


def command_timeout() -> int:
    return _whole_seconds(COMMAND_TIMEOUT_ENV, DEFAULT_COMMAND_TIMEOUT)


def _whole_seconds(name: str, default: int) -> int:
    return environment.whole(name, default, least=1, most=3600, what="a whole number of seconds")


def display_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection that only reads: on SQLite it reads a snapshot beside the writer (a running
    batch) rather than queueing for the write lock (``BEGIN IMMEDIATE``)."""
    with engine.connect() as connection:
        connection.info[READ_ONLY] = True
        try:
            yield connection
        finally:
            connection.info.pop(READ_ONLY, None)


def options_refused(url: URL, exc: Exception) -> ConfigurationError:
    """The error for options of the URL's query (``?charset=bogus``, ``?connect_timeout=abc``, an
    option the driver does not know) that the dialect or the driver could not use: their names
    and the driver's words (an option's value may be a secret; the words are the driver's)."""
    options = ", ".join(sorted(url.query)) or "none"
    said = " ".join(str(exc).split())[:200]
    return ConfigurationError(
        f"cannot connect to {display_url(url)}: the driver cannot use the URL's options ({options}): "
        f"{type(exc).__name__}: {said}: fix or remove them"
    )


def make_engine(raw: str | URL | None, *, time_limit: int | None = None, **kwargs: Any) -> Engine:
    """An engine for ``raw``; ``time_limit`` (seconds) bounds each statement and lock wait of
    every session it opens — for short commands, never for batches or migrations."""
    url = parse_url(raw)
    if url.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("check_same_thread", False)
    else:
        if url.get_backend_name() == "postgresql":
            kwargs.setdefault("pool_size", 16)
            if "application_name" not in url.query:
                kwargs.setdefault("connect_args", {}).setdefault("application_name", APPLICATION_NAME)
            if time_limit is not None and "options" not in url.query:
                limits = f"-c statement_timeout={time_limit}s -c lock_timeout={time_limit}s"
                kwargs.setdefault("connect_args", {}).setdefault("options", limits)
        if "connect_timeout" not in url.query:
            kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", connect_timeout())
            if url.get_backend_name() == "mysql" and "read_timeout" not in url.query:
                # PyMySQL's connect_timeout covers only the TCP connect; the handshake that
                # follows waits on read_timeout, which is lifted again once connected.
                kwargs["connect_args"].setdefault("read_timeout", connect_timeout())
    # No pre-ping: it would add a round trip to every checkout on the per-batch path. A pooled
    # connection that died is a transient error, which the executor and the runner retry.
    try:
        with warnings.catch_warnings():
            # An option of the URL the driver would ignore (SQLite's ?mode= without ?uri=true):
            # a mistake in the URL, said as one, not a warning to scroll past.
            warnings.simplefilter("error", SAWarning)
            engine = create_engine(url, **kwargs)
    except (TypeError, ValueError) as exc:  # an option's value the dialect cannot convert
        raise options_refused(url, exc) from None
    except SAWarning as warning:
        said = str(warning).split(" (Background", 1)[0]
        raise ConfigurationError(f"bad database URL {display_url(url)}: {said}") from None
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
        _configure_sqlite(engine, SQLITE_BUSY_TIMEOUT_MS if time_limit is None else time_limit * 1000)
    elif engine.dialect.name in {"mysql", "mariadb"} and "read_timeout" not in url.query:
        event.listen(engine, "connect", _no_read_timeout_once_connected)
    if time_limit is not None and engine.dialect.name in {"mysql", "mariadb"}:
        event.listen(engine, "connect", functools.partial(_limit_mysql_session, time_limit))
    return engine


def in_schema(engine: Engine, schema: str) -> Engine:
    """The engine with ``schema`` in place of every table that names none: SQLAlchemy's tables
    (the checkpoint tables, a backfill's reflected table) through ``schema_translate_map``, and
    the SQL of a backfill's ``work`` through the session's ``search_path`` — the schema alone,
    so a table the tenant lacks is an error rather than another schema's table. The name is
    quoted by the server (``quote_ident``), never pasted. The tenant's engine shares ``engine``'s
    pool: a fleet of many tenants of one database holds one pool, not one per tenant."""
    if engine.dialect.name != "postgresql":
        raise ConfigurationError(f"schema {schema!r}: a tenant schema needs PostgreSQL, not {engine.dialect.name}")

    tenant = engine.execution_options(schema_translate_map={None: schema})

    @event.listens_for(tenant, "engine_connect")
    def _search_path(connection: Connection) -> None:
        # At each checkout of the shared pool the connection may have served another tenant;
        # what it was set to is kept with the DBAPI connection (cleared if it is replaced).
        kept = connection.connection.info
        if kept.get(SEARCH_PATH_KEY) != schema:
            connection.execute(SEARCH_PATH, {"schema": schema})
            connection.commit()
            kept[SEARCH_PATH_KEY] = schema

    return tenant


def in_default_schema(engine: Engine) -> Engine:
    """``engine`` for a member without a schema whose pool tenants of the same database share
    (``fleet.engine_for``, which builds the tenants' engines on it): a connection a tenant set
    to its schema is set back to the session's default before this member uses it, never left
    reading the tenant's tables."""
    default = engine.execution_options()

    @event.listens_for(default, "engine_connect")
    def _reset(connection: Connection) -> None:
        kept = connection.connection.info
        if kept.get(SEARCH_PATH_KEY) is not None:
            connection.exec_driver_sql("RESET search_path")
            connection.commit()
            kept[SEARCH_PATH_KEY] = None

    return default


SEARCH_PATH = text("SELECT set_config('search_path', quote_ident(:schema), false)")
"""A session's search_path: one schema, its name quoted by the server."""
SEARCH_PATH_KEY = "backfill_search_path"
"""Where a pooled connection keeps the schema its search_path was set to (None: the default)."""


def in_tenant(connection: Connection, schema: str) -> Connection:
    """A migration's connection (Alembic's ``env.py``, run once per tenant) working in the
    tenant's ``schema``, as a fleet member's engine does (``in_schema``): the revision's
    ``op.queue_backfill``, ``op.ensure_backfill_finished`` and ``op.add_not_null`` then act on
    that tenant's tables and checkpoints. Call it before ``context.configure``."""
    if connection.dialect.name != "postgresql":
        raise ConfigurationError(f"schema {schema!r}: a tenant schema needs PostgreSQL, not {connection.dialect.name}")
    connection.execute(SEARCH_PATH, {"schema": schema})
    connection.commit()
    return connection.execution_options(schema_translate_map={None: schema})


def schema_of(bind: Engine | Connection, table: Table) -> str | None:
    """Where ``table`` is on ``bind``: its own schema, or the tenant's the bind puts it in."""
    translate = bind.get_execution_options().get("schema_translate_map") or {}
    return translate.get(table.schema, table.schema)


def _limit_mysql_session(seconds: int, dbapi_connection: Any, _record: Any) -> None:
    mariadb = "mariadb" in dbapi_connection.get_server_info().lower()
    limit = f"max_statement_time = {seconds}" if mariadb else f"max_execution_time = {seconds * 1000}"
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET SESSION {limit}, innodb_lock_wait_timeout = {seconds}")


def _no_read_timeout_once_connected(dbapi_connection: Any, _record: Any) -> None:
    """A batch's statement may rightly run for longer than a handshake may take: its own limit
    is the statement timeout (``limits``), not the socket's."""
    if hasattr(dbapi_connection, "_read_timeout"):
        dbapi_connection._read_timeout = None


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
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
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        busy_ms = connection.info.get(SQLITE_BUSY_KEY, busy_timeout_ms)
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy_ms)}")
        # A reader (status, a planner's look at the batches) reads a snapshot beside the
        # writer (WAL); taking the write lock would make it queue behind every batch.
        connection.exec_driver_sql("BEGIN" if connection.info.get(READ_ONLY) else "BEGIN IMMEDIATE")
