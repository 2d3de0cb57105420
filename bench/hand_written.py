"""The OLTP scenario's hand-written approaches, each run as a process of its own with nothing but
its database driver imported, as a script someone writes for the job would be:

    python -m bench.hand_written loop      # the next 1,000 keys, one UPDATE over them, commit, repeat
    python -m bench.hand_written update    # one UPDATE of the whole table, in one transaction

The database URL arrives in ``BENCH_DATABASE_URL``; the rows updated are printed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

FILL = "MOD(bid, 10) + 1"
"""What ``region`` must hold on every account."""
URL_ENV = "BENCH_DATABASE_URL"


def is_mariadb(url: str) -> bool:
    return url.startswith(("mysql", "mariadb"))


def _parts(url: str) -> dict[str, Any]:
    """Host, port, user, password and database of a SQLAlchemy URL (no SQLAlchemy needed)."""
    parsed = urlsplit(url)
    return {
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port,
        "user": unquote(parsed.username) if parsed.username else None,
        "password": unquote(parsed.password) if parsed.password else None,
        "database": parsed.path.lstrip("/") or None,
    }


def _connect(url: str) -> tuple[Any, Callable[[], None]]:
    """A plain DB-API connection, as a hand-written script opens one; and how to commit."""
    parts = _parts(url)
    if is_mariadb(url):
        import pymysql

        connection = pymysql.connect(
            host=parts["host"],
            port=parts["port"] or 3306,
            user=parts["user"] or "root",
            password=parts["password"] or "",
            database=parts["database"],
            autocommit=False,
        )
    else:
        import psycopg

        connection = psycopg.connect(
            host=parts["host"],
            port=parts["port"] or 5432,
            user=parts["user"] or "postgres",
            password=parts["password"],
            dbname=parts["database"],
        )
    return connection, connection.commit


def hand_loop(url: str, batch_size: int) -> int:
    """The next ``batch_size`` keys from the primary key, one UPDATE over them, commit; returns
    the rows updated."""
    connection, commit = _connect(url)
    updated = 0
    cursor_key = 0
    try:
        with connection.cursor() as cursor:
            while True:
                cursor.execute(
                    "SELECT aid FROM pgbench_accounts WHERE aid > %s ORDER BY aid LIMIT 1 OFFSET %s",
                    (cursor_key, batch_size - 1),
                )
                row = cursor.fetchone()
                if row is None:
                    cursor.execute("SELECT max(aid) FROM pgbench_accounts WHERE aid > %s", (cursor_key,))
                    row = cursor.fetchone()
                    if row is None or row[0] is None:
                        commit()
                        break
                upper = row[0]
                cursor.execute(
                    f"UPDATE pgbench_accounts SET region = {FILL} WHERE aid > %s AND aid <= %s AND region IS NULL",
                    (cursor_key, upper),
                )
                updated += cursor.rowcount
                commit()
                cursor_key = upper
    finally:
        connection.close()
    return updated


def single_update(url: str) -> int:
    connection, commit = _connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE pgbench_accounts SET region = {FILL}")
            updated = int(cursor.rowcount)
        commit()
    finally:
        connection.close()
    return updated


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the OLTP scenario's hand-written approaches")
    parser.add_argument("approach", choices=("loop", "update"))
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    url = os.environ[URL_ENV]
    rows = hand_loop(url, args.batch_size) if args.approach == "loop" else single_update(url)
    print(rows)


if __name__ == "__main__":
    main()
