"""Backfills used by the tests: each adds one to a ``counter`` column, so the data itself shows
whether every row was processed exactly once."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Uuid,
    bindparam,
    column,
    func,
    select,
    text,
    update,
)

from backfill import Backfill, Batch, Param, Tuning, define
from backfill.database import make_engine

metadata = MetaData()


def _counted(*columns: Column[Any]) -> list[Column[Any]]:
    return [
        *columns,
        Column("counter", Integer, nullable=False, server_default="0"),
        Column("done", Integer, nullable=False, server_default="0"),
    ]


items = Table(
    "items",
    metadata,
    *_counted(Column("id", Integer, primary_key=True, autoincrement=False)),
    Column("note", String(20)),  # NULL until a backfill that names it among its columns fills it
)
items_text = Table("items_text", metadata, *_counted(Column("code", String(40), primary_key=True)))
items_composite = Table(
    "items_composite",
    metadata,
    *_counted(Column("tenant", String(20), nullable=False), Column("seq", Integer, nullable=False)),
    PrimaryKeyConstraint("tenant", "seq"),
)
items_uuid = Table("items_uuid", metadata, *_counted(Column("id", Uuid, primary_key=True)))
poison = Table("poison", metadata, Column("id", Integer, primary_key=True, autoincrement=False))
contacts = Table(
    "contacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(80), nullable=False, unique=True),
)


def create_tables(engine: Engine) -> None:
    metadata.create_all(engine)


def fill(engine: Engine, table: Table, keys: list[Any]) -> None:
    names = [c.name for c in table.primary_key.columns]
    rows = [dict(zip(names, k if isinstance(k, tuple) else (k,), strict=True)) for k in keys]
    with engine.begin() as connection:
        for start in range(0, len(rows), 5000):
            connection.execute(table.insert(), rows[start : start + 5000])


# Fixed batch sizes: these tests check batch boundaries, so the size must not adapt.
small = Tuning(batch_size=50, target_batch_seconds=0)

counter_int = Backfill(
    name="counter_int",
    table="items",
    key="id",
    work="UPDATE items SET counter = counter + 1 WHERE id BETWEEN :first AND :last",
    tuning=small,
)

counter_pending = Backfill(
    name="counter_pending",
    table="items",
    key="id",
    pending="done = 0",
    work="UPDATE items SET counter = counter + 1, done = 1 WHERE id BETWEEN :first AND :last AND done = 0",
    tuning=small,
)

counter_text = Backfill(
    name="counter_text",
    table="items_text",
    key="code",
    work="UPDATE items_text SET counter = counter + 1 WHERE code BETWEEN :first AND :last",
    tuning=small,
)

counter_composite = Backfill(
    name="counter_composite",
    table="items_composite",
    key=("tenant", "seq"),
    work=(
        "UPDATE items_composite SET counter = counter + 1 "
        "WHERE (tenant, seq) >= (:first_tenant, :first_seq) AND (tenant, seq) <= (:last_tenant, :last_seq)"
    ),
    tuning=small,
)

counter_uuid = Backfill(
    name="counter_uuid",
    table="items_uuid",
    key="id",
    work=update(items_uuid)
    # Untyped: SQLite keeps UUIDs as text and hands them back as text, PostgreSQL as UUIDs.
    .where(column("id").between(bindparam("first"), bindparam("last")))
    .values(counter=items_uuid.c.counter + 1),
    tuning=small,
)


@define(table="items", key="id", batch_size=10, target_batch_seconds=0)
def counter_slow(connection: Connection, batch: Batch) -> int:
    """Slow batches, so a test can kill the runner in the middle of a run."""
    result = connection.execute(update(items).where(batch.where(items.c.id)).values(counter=items.c.counter + 1))
    time.sleep(0.03)
    return result.rowcount


@define(table="items", key="id", batch_size=50, max_attempts=2, target_batch_seconds=0)
def poisoned(connection: Connection, batch: Batch) -> int:
    """Fails on batches holding an id listed in ``poison``, after having written its rows."""
    result = connection.execute(update(items).where(batch.where(items.c.id)).values(counter=items.c.counter + 1))
    bad = connection.execute(select(func.min(poison.c.id)).where(batch.where(poison.c.id))).scalar()
    if bad is not None:
        raise ValueError(f"row {bad} is poisoned")
    return result.rowcount


class Contention:
    """Arranges for the first attempt of one batch to lose a real lock conflict.

    An application connection tries to write a row the batch has just written, with a short
    lock timeout; the database refuses it (PostgreSQL: lock_not_available, SQLite: database is
    locked, MySQL/MariaDB: lock wait timeout, 1205) and the work lets that error escape, as a
    batch blocked on a lock would.
    """

    url: str | None = None
    seq = 1
    provoked: list[int] = []
    _engine: Engine | None = None

    @classmethod
    def arm(cls, url: str | None) -> None:
        if cls._engine is not None:
            cls._engine.dispose()
        cls.url, cls._engine, cls.provoked = url, None, []

    @classmethod
    def provoke(cls, batch: Batch) -> None:
        if cls.url is None or batch.seq != cls.seq or cls.provoked:
            return
        cls.provoked.append(batch.id)
        if cls._engine is None:
            cls._engine = make_engine(cls.url)
        with cls._engine.connect() as app_connection:
            app_connection.info["sqlite_busy_timeout_ms"] = 50
            with app_connection.begin():
                if app_connection.dialect.name == "postgresql":
                    app_connection.execute(text("SET LOCAL lock_timeout = '50ms'"))
                elif app_connection.dialect.name in ("mysql", "mariadb"):
                    # InnoDB waits in whole seconds; this engine is the application's alone.
                    app_connection.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
                app_connection.execute(
                    update(items).where(items.c.id == batch.first[0]).values(counter=items.c.counter)
                )


@define(table="items", key="id", batch_size=50, max_attempts=5, target_batch_seconds=0)
def counter_contended(connection: Connection, batch: Batch) -> int:
    """Like counter_int, but one batch meets a lock conflict on its first attempt."""
    result = connection.execute(update(items).where(batch.where(items.c.id)).values(counter=items.c.counter + 1))
    Contention.provoke(batch)
    return result.rowcount


# Definitions that do not match the schema: each must be refused with one clear line.
missing_table = Backfill(name="missing_table", table="no_such_table", key="id", work="SELECT 1")
missing_column = Backfill(name="missing_column", table="items", key="no_such_column", work="SELECT 1")
non_unique_key = Backfill(name="non_unique_key", table="items", key="counter", work="SELECT 1")
bad_pending = Backfill(name="bad_pending", table="items", key="id", pending="no_such_column = 1", work="SELECT 1")


def uuids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


@define(table="items", key="id", batch_size=25, parallelism=2, lock_timeout=0.3, target_batch_seconds=0)
def counter_sleepy(connection: Connection, batch: Batch) -> int:
    """Batches that hold their transaction open a while, so a test can hurt a worker mid-batch."""
    result = connection.execute(update(items).where(batch.where(items.c.id)).values(counter=items.c.counter + 1))
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_sleep(0.4)"))
    else:
        time.sleep(0.4)
    return result.rowcount


# Two backfills that may share their table with other non-exclusive ones.
shared_a = Backfill(name="shared_a", table="items", key="id", work=counter_int.work, exclusive=False)
shared_b = Backfill(name="shared_b", table="items", key="id", work=counter_int.work, exclusive=False)


@define(table="items", key="id", batch_size=10, target_batch_seconds=0.05, min_batch_size=5, max_batch_size=1000)
def counter_adaptive(connection: Connection, batch: Batch) -> int:
    """Work that costs 0.5 ms a row: a 0.05 s target means batches of about 100 rows."""
    result = connection.execute(update(items).where(batch.where(items.c.id)).values(counter=items.c.counter + 1))
    time.sleep(batch.rows * 0.0005)
    return result.rowcount


@define(table="items", key="id", batch_size=200, statement_timeout=0.5, target_batch_seconds=0)
def counter_timeout(connection: Connection, batch: Batch) -> int:
    """Work that costs 4 ms a row in the database: 200 rows overrun a 0.5 s statement timeout."""
    result = connection.execute(update(items).where(batch.where(items.c.id)).values(counter=items.c.counter + 1))
    connection.execute(text("SELECT pg_sleep(:s)"), {"s": batch.rows * 0.004})
    return result.rowcount


maintenance = Table("maintenance", metadata, Column("reason", String(100), nullable=False))


def maintenance_window(connection: Connection) -> str | None:
    """The application's own signal: a row in ``maintenance`` says to leave the database alone."""
    return connection.execute(select(maintenance.c.reason).limit(1)).scalar()


counter_polite = Backfill(
    name="counter_polite",
    table="items",
    key="id",
    work=counter_int.work,
    tuning=small,
    health_checks=(maintenance_window,),
)


# The final pass, with and without a way to tell what is pending.
contacts_merged = Backfill(
    name="contacts_merged",
    table="contacts",
    key="id",
    # Every row of a batch gets one address: the second breaks the unique constraint, and the
    # database names the customer's address in its error.
    work="UPDATE contacts SET email = 'merged.customer@example.com' WHERE id BETWEEN :first AND :last",
    tuning=Tuning(batch_size=5, target_batch_seconds=0, max_attempts=1),
)

counter_noted = Backfill(
    name="counter_noted",
    table="items",
    key="id",
    columns="note",  # no pending predicate: a row is pending while note IS NULL
    work="UPDATE items SET counter = counter + 1, note = 'done' WHERE id BETWEEN :first AND :last AND note IS NULL",
    tuning=small,
)

counter_forgetful = Backfill(
    name="counter_forgetful",
    table="items",
    key="id",
    pending="done = 0",
    work="UPDATE items SET counter = counter + 1 WHERE id BETWEEN :first AND :last AND done = 0",  # done stays 0
    tuning=small,
)

counter_trapped = Backfill(
    name="counter_trapped",
    table="items",
    key="id",
    # A predicate that works until `poison` holds two rows: then its subquery returns two.
    pending="done = 0 AND coalesce((SELECT id FROM poison), 0) >= 0",
    work=counter_pending.work,
    tuning=small,
)

counter_from = Backfill(
    name="counter_from",
    table="items",
    key="id",
    # Run parameters, bound as :low and :step in the work, the predicate and the post-condition.
    params={"low": int, "step": Param("step", int, default=1)},
    pending="done = 0 AND id >= :low",
    work="UPDATE items SET counter = counter + :step, done = 1 WHERE id BETWEEN :first AND :last "
    "AND done = 0 AND id >= :low",
    verify="SELECT count(*) FROM items WHERE done = 0 AND id >= :low",
    tuning=small,
)
