"""Private database servers a test starts for itself: a PostgreSQL primary with a streaming
replica (``pg_basebackup -R``), a MariaDB primary with a replica, each on free ports in the
test's own directory, stopped at the end whatever happens.

They are real servers from the machine's own binaries, so a test can do to them what it must
not do to the shared ones: pause replay, stop replication, take them down.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.helpers import free_port


def _pg_bin(name: str) -> str:
    found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return str(Path(found.stdout.strip()) / name)


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL's tools refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _wait(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in {timeout:.0f}s")
        time.sleep(0.2)


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    directory: Path


@contextmanager
def postgres_with_replica() -> Iterator[tuple[Server, Server]]:
    """A PostgreSQL primary and its streaming replica, both started here; yields their URLs
    (database ``postgres``, user ``postgres``, trust). Their directory is one the ``postgres``
    user can reach (a pytest directory is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="backfill-pg-"))
    if os.geteuid() == 0:
        uid = pwd.getpwnam("postgres")
        os.chown(base, uid.pw_uid, uid.pw_gid)
    primary, replica = base / "primary", base / "replica"
    ports = free_port(), free_port()
    started: list[Path] = []
    try:
        subprocess.run(
            _as_postgres([_pg_bin("initdb"), "-D", str(primary), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        _postgres_conf(primary, ports[0], base, "wal_level = replica\nmax_wal_senders = 4\n")
        _pg_ctl(primary, "start")
        started.append(primary)
        subprocess.run(
            _as_postgres(
                [
                    _pg_bin("pg_basebackup"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(ports[0]),
                    "-U",
                    "postgres",
                    "-D",
                    str(replica),
                    "-R",
                    "-X",
                    "stream",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        _postgres_conf(replica, ports[1], base, "hot_standby = on\n")
        _pg_ctl(replica, "start")
        started.append(replica)
        yield (
            Server(f"postgresql+psycopg://postgres@127.0.0.1:{ports[0]}/postgres", ports[0], primary),
            Server(f"postgresql+psycopg://postgres@127.0.0.1:{ports[1]}/postgres", ports[1], replica),
        )
    finally:
        for directory in reversed(started):
            subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(directory), "stop", "-m", "immediate"]),
                           capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def _postgres_conf(directory: Path, port: int, sockets: Path, extra: str) -> None:
    settings = (
        f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sockets}'\n"
        "fsync = off\nshared_buffers = 32MB\nmax_connections = 40\n" + extra
    )
    with (directory / "postgresql.conf").open("a") as conf:
        conf.write(settings)


def _pg_ctl(directory: Path, verb: str) -> None:
    subprocess.run(
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(directory), "-l", str(directory / "server.log"), "-w", verb]),
        check=True,
        capture_output=True,
    )


@contextmanager
def mariadb_with_replica() -> Iterator[tuple[Server, Server]]:
    """A MariaDB primary (binary log on) and a replica of it, both started here without grant
    tables; yields their URLs (database ``test``)."""
    base = Path(tempfile.mkdtemp(prefix="backfill-mariadb-"))
    processes: list[subprocess.Popen[bytes]] = []
    servers: list[Server] = []
    try:
        for server_id, role in ((1, "primary"), (2, "replica")):
            directory = base / role
            directory.mkdir()
            subprocess.run(
                [
                    "mariadb-install-db",
                    "--no-defaults",
                    f"--datadir={directory / 'data'}",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                check=True,
                capture_output=True,
            )
            port = free_port()
            argv = ["mariadbd", "--no-defaults", f"--datadir={directory / 'data'}", f"--port={port}"]
            argv += [f"--socket={directory / 'sock'}", "--user=root", f"--server-id={server_id}"]
            argv += ["--bind-address=127.0.0.1", "--skip-grant-tables", "--innodb-buffer-pool-size=64M"]
            argv += [f"--log-bin={directory / 'data' / 'bin'}"] if role == "primary" else ["--read-only"]
            with (directory / "server.log").open("wb") as log:
                processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            url = f"mariadb+pymysql://root@127.0.0.1:{port}/test"
            admin = create_engine(f"mariadb+pymysql://root@127.0.0.1:{port}/")
            _wait(lambda admin=admin: admin.connect().close() or True, f"MariaDB {role}")  # type: ignore[misc]
            admin.dispose()
            servers.append(Server(url, port, directory))
        primary, replica = servers
        on_replica = create_engine(f"mariadb+pymysql://root@127.0.0.1:{replica.port}/", isolation_level="AUTOCOMMIT")
        with on_replica.connect() as c:
            c.execute(
                text(
                    f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='root', "
                    "MASTER_PASSWORD='', MASTER_USE_GTID=current_pos"
                )
            )
            c.execute(text("START SLAVE"))
        on_replica.dispose()
        on_primary = create_engine(f"mariadb+pymysql://root@127.0.0.1:{primary.port}/", isolation_level="AUTOCOMMIT")
        with on_primary.connect() as c:
            c.execute(text("CREATE DATABASE test"))
        on_primary.dispose()
        yield primary, replica
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Outage:
    """A private server a test may take down and bring back (same port, same data)."""

    server: Server
    down: Callable[[], None]
    up: Callable[[], None]


@contextmanager
def postgres_to_take_down() -> Iterator[Outage]:
    """A PostgreSQL server of its own (database ``postgres``, trust): ``down`` is a fast
    shutdown (sessions cut, transactions rolled back), ``up`` starts it again."""
    base = Path(tempfile.mkdtemp(prefix="backfill-pg-"))
    if os.geteuid() == 0:
        uid = pwd.getpwnam("postgres")
        os.chown(base, uid.pw_uid, uid.pw_gid)
    directory, port = base / "data", free_port()
    try:
        subprocess.run(
            _as_postgres([_pg_bin("initdb"), "-D", str(directory), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        _postgres_conf(directory, port, base, "")
        _pg_ctl(directory, "start")
        server = Server(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", port, directory)
        stop = [_pg_bin("pg_ctl"), "-D", str(directory), "-m", "fast", "-w", "stop"]
        yield Outage(
            server,
            down=lambda: subprocess.run(_as_postgres(stop), check=True, capture_output=True) and None,
            up=lambda: _pg_ctl(directory, "start"),
        )
    finally:
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(directory), "stop", "-m", "immediate"]),
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def mariadb_to_take_down() -> Iterator[Outage]:
    """A MariaDB server of its own (database ``test``, root, no grant tables): ``down`` stops
    it (SIGTERM: a clean shutdown), ``up`` starts it again on the same port and data."""
    base = Path(tempfile.mkdtemp(prefix="backfill-mariadb-"))
    data, port = base / "data", free_port()
    argv = ["mariadbd", "--no-defaults", f"--datadir={data}", f"--port={port}", f"--socket={base / 'sock'}"]
    argv += ["--user=root", "--bind-address=127.0.0.1", "--skip-grant-tables", "--innodb-buffer-pool-size=64M"]
    running: list[subprocess.Popen[bytes]] = []

    def up() -> None:
        with (base / "server.log").open("ab") as log:
            running.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        admin = create_engine(f"mariadb+pymysql://root@127.0.0.1:{port}/")
        _wait(lambda: admin.connect().close() or True, "MariaDB")
        admin.dispose()

    def down() -> None:
        process = running.pop()
        process.terminate()
        process.wait(60)

    try:
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )  # fmt: skip
        up()
        admin = create_engine(f"mariadb+pymysql://root@127.0.0.1:{port}/", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text("CREATE DATABASE test"))
        admin.dispose()
        yield Outage(Server(f"mariadb+pymysql://root@127.0.0.1:{port}/test", port, base), down=down, up=up)
    finally:
        for process in running:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)
