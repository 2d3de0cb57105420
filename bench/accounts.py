"""The OLTP scenario's migration: fill a new column of ``pgbench_accounts`` while the application
keeps updating the same table.

The table is pgbench's (``pgbench -i`` on PostgreSQL; the same tables, loaded here, on MariaDB).
``region`` is added empty before every approach and must end up ``MOD(bid, 10) + 1`` on every
row. Three ways to fill it:

- ``accounts_region``, the backfill definition (``BACKFILL_APP=bench.accounts``), at its
  default tuning;
- ``python -m bench.hand_written loop``: the loop a careful engineer writes by hand — the next
  1,000 keys read from the primary key, one ``UPDATE`` over them, commit, repeat;
- ``python -m bench.hand_written update``: one ``UPDATE`` of the whole table in one transaction, what a
  migration's ``upgrade()`` does when nobody thought about it.
"""

from __future__ import annotations

import os

from sqlalchemy import URL, Engine, create_engine, text

from backfill import Backfill
from bench.hand_written import FILL

accounts_region = Backfill(
    name="accounts_region",
    table="pgbench_accounts",
    key="aid",
    work=f"UPDATE pgbench_accounts SET region = {FILL} WHERE aid BETWEEN :first AND :last AND region IS NULL",
    columns="region",
)

ACCOUNTS_PER_SCALE = 100_000

MARIADB_TABLES = (
    "CREATE TABLE pgbench_branches (bid INT NOT NULL PRIMARY KEY, bbalance INT, filler CHAR(88))",
    "CREATE TABLE pgbench_tellers (tid INT NOT NULL PRIMARY KEY, bid INT, tbalance INT, filler CHAR(84))",
    "CREATE TABLE pgbench_accounts (aid INT NOT NULL PRIMARY KEY, bid INT, abalance INT, filler CHAR(84))",
    "CREATE TABLE pgbench_history (tid INT, bid INT, aid INT, delta INT, mtime DATETIME, filler CHAR(22))",
)
"""pgbench's tables, as ``pgbench -i`` makes them, in InnoDB."""


def is_mariadb(url: URL) -> bool:
    return url.get_backend_name() in ("mysql", "mariadb")


def autocommit_engine(url: URL) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT")


def initialise(url: URL, scale: int) -> None:
    """pgbench's tables at ``scale`` (100,000 accounts each), with the empty ``region`` column."""
    if is_mariadb(url):
        engine = autocommit_engine(url)
        try:
            with engine.connect() as c:
                for statement in MARIADB_TABLES:
                    c.execute(text(statement))
                n = int(scale)
                c.execute(text(f"INSERT INTO pgbench_branches SELECT seq, 0, '' FROM seq_1_to_{n}"))
                c.execute(text(f"INSERT INTO pgbench_tellers SELECT seq, (seq - 1) DIV 10 + 1, 0, '' FROM seq_1_to_{n * 10}"))  # fmt: skip
                c.execute(
                    text(
                        "INSERT INTO pgbench_accounts SELECT seq, (seq - 1) DIV 100000 + 1, 0, '' "
                        f"FROM seq_1_to_{n * ACCOUNTS_PER_SCALE}"
                    )
                )
        finally:
            engine.dispose()
    else:
        import subprocess

        argv = ["pgbench", "--initialize", "--quiet", "--scale", str(int(scale))]
        argv += ["--host", url.host or "127.0.0.1", "--port", str(url.port or 5432)]
        argv += ["--username", url.username or "postgres", url.database or "postgres"]
        env = {**os.environ, **({"PGPASSWORD": str(url.password)} if url.password else {})}
        subprocess.run(argv, env=env, check=True, capture_output=True)
    reset(url)


def reset(url: URL) -> None:
    """The same start for every approach: ``region`` dropped and added again (empty), the table
    rewritten compact, no application history, fresh statistics, and no checkpoint due."""
    engine = autocommit_engine(url)
    try:
        with engine.connect() as c:
            if is_mariadb(url):
                c.execute(text("ALTER TABLE pgbench_accounts DROP COLUMN IF EXISTS region"))
                c.execute(text("ALTER TABLE pgbench_accounts ADD COLUMN region INT, FORCE"))
                c.execute(text("TRUNCATE pgbench_history"))
                c.execute(text("ANALYZE TABLE pgbench_accounts, pgbench_tellers, pgbench_branches")).all()
            else:
                c.execute(text("ALTER TABLE pgbench_accounts DROP COLUMN IF EXISTS region"))
                c.execute(text("ALTER TABLE pgbench_accounts ADD COLUMN region integer"))
                c.execute(text("TRUNCATE pgbench_history"))
                c.execute(text("VACUUM FULL pgbench_accounts"))
                c.execute(text("VACUUM ANALYZE pgbench_accounts, pgbench_tellers, pgbench_branches"))
                c.execute(text("CHECKPOINT"))
    finally:
        engine.dispose()


def verify(url: URL) -> dict[str, int]:
    """The result on the data: every account's ``region`` filled, and filled right."""
    engine = autocommit_engine(url)
    try:
        with engine.connect() as c:
            accounts = c.execute(text("SELECT count(*) FROM pgbench_accounts")).scalar_one()
            missing = c.execute(text("SELECT count(*) FROM pgbench_accounts WHERE region IS NULL")).scalar_one()
            wrong = c.execute(text(f"SELECT count(*) FROM pgbench_accounts WHERE region <> {FILL}")).scalar_one()
    finally:
        engine.dispose()
    return {"accounts": accounts, "missing": missing, "wrong": wrong}
