"""Fixtures: a fresh database per test on SQLite and on the real PostgreSQL and MariaDB servers.

Server tests get a database of their own per test run (``backfill_test_<pid>_<random>``),
dropped at the end, so runs never collide. Under ``CI=true`` an unreachable server fails the
run; elsewhere those tests are skipped with the command that starts it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from backfill import App, Registry
from backfill.database import READ_ONLY, make_engine
from tests.apps import counters

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "BACKFILL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
MARIADB_ADMIN_URL = os.environ.get("BACKFILL_TEST_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306/test")
MARIADB_START = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(service: str, how_to_start: str, error: Exception) -> None:
    message = f"{service} is not reachable ({str(error).splitlines()[0]}); start it with: {how_to_start}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class Server:
    """A database server the suite creates a database of its own on."""

    name: str
    admin_url: str
    how_to_start: str
    create: str
    drop: str
    autocommit: bool


SERVERS = {
    "postgres": Server(
        "PostgreSQL", POSTGRES_ADMIN_URL, POSTGRES_START,
        'CREATE DATABASE "{name}"', 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', autocommit=True,
    ),
    "mariadb": Server(
        "MariaDB", MARIADB_ADMIN_URL, MARIADB_START,
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS `{name}`", autocommit=False,
    ),
}  # fmt: skip


def database_of_this_run(server: Server) -> Iterator[str]:
    """A database of this test run's own on ``server``, dropped at the end; yields its URL."""
    admin = create_engine(server.admin_url, **({"isolation_level": "AUTOCOMMIT"} if server.autocommit else {}))
    name = f"backfill_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with admin.begin() as connection:
            connection.execute(text(server.create.format(name=name)))
    except OperationalError as exc:
        admin.dispose()
        service_missing(server.name, server.how_to_start, exc)
    yield make_url(server.admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.begin() as connection:
        connection.execute(text(server.drop.format(name=name)))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    yield from database_of_this_run(SERVERS["postgres"])


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[str]:
    yield from database_of_this_run(SERVERS["mariadb"])


@dataclass
class Database:
    """One test's database: its URL, an engine, and an App over the test definitions."""

    url: str
    engine: Engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def app(self, *definitions: object) -> App:
        registry = Registry.of(*definitions) if definitions else Registry.from_module(counters)  # type: ignore[arg-type]
        return App(self.engine, registry)

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as connection:
            connection.info[READ_ONLY] = True  # on SQLite: beside a running backfill, not behind it
            return connection.execute(text(sql), params).scalar()

    def cli(
        self, *args: str, app: str | None = "tests.apps.counters", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``backfill`` command in a subprocess, as a user would (``app`` None: with
        the database URL alone, as an operator on a bastion host)."""
        env = {**os.environ, "BACKFILL_DATABASE_URL": self.url, "COLUMNS": "200"}
        env.pop("BACKFILL_APP", None)
        if app is not None:
            env["BACKFILL_APP"] = app
        return subprocess.run(
            [sys.executable, "-m", "backfill", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _clean(engine: Engine) -> None:
    metadata = MetaData()
    metadata.reflect(engine)
    metadata.drop_all(engine)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    else:
        url = request.getfixturevalue(f"{request.param.replace('postgresql', 'postgres')}_server")
    engine = make_engine(url)
    _clean(engine)
    counters.create_tables(engine)
    App(engine, Registry.from_module(counters)).init_db()
    yield Database(url, engine)
    engine.dispose()


@pytest.fixture
def empty(db: Database) -> Iterator[Database]:
    """The test database with nothing in it: a migration chain builds everything itself."""
    _clean(db.engine)
    yield db
