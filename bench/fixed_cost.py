"""The per-batch fixed cost of the framework, against a hand-written keyset loop.

Both walk the same PostgreSQL table with the same per-batch UPDATE; the hand-written loop keeps
its own checkpoint row, committed with each batch, as a careful engineer would. The difference
in time per batch is what the framework adds: claim, plan, checkpoint, bookkeeping.

    python -m bench.fixed_cost --rows 200000 --batch-size 1000
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from backfill import App, Backfill, Registry, Tuning
from backfill.database import make_engine

ADMIN_URL = os.environ.get("BACKFILL_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
WORK = "UPDATE bench_items SET v = v + 1 WHERE id BETWEEN :first AND :last"


def hand_loop(engine, batch_size: int) -> int:  # type: ignore[no-untyped-def]
    batches = 0
    with engine.connect() as c:
        c.execute(text("DROP TABLE IF EXISTS bench_checkpoint"))
        c.execute(text("CREATE TABLE bench_checkpoint (id int primary key, cursor bigint)"))
        c.execute(text("INSERT INTO bench_checkpoint VALUES (1, 0)"))
        c.commit()
        cursor = 0
        while True:
            upper = c.execute(
                text("SELECT id FROM bench_items WHERE id > :c ORDER BY id LIMIT 1 OFFSET :n"),
                {"c": cursor, "n": batch_size - 1},
            ).scalar()
            if upper is None:
                upper = c.execute(text("SELECT max(id) FROM bench_items WHERE id > :c"), {"c": cursor}).scalar()
                if upper is None:
                    break
            c.execute(text("UPDATE bench_items SET v = v + 1 WHERE id > :c AND id <= :u"), {"c": cursor, "u": upper})
            c.execute(text("UPDATE bench_checkpoint SET cursor = :u WHERE id = 1"), {"u": upper})
            c.commit()
            cursor = upper
            batches += 1
    return batches


def admin_of(url):  # type: ignore[no-untyped-def]
    return create_engine(url, isolation_level="AUTOCOMMIT")


def vacuum(engine) -> None:  # type: ignore[no-untyped-def]
    """Both loops start from the same clean table: no dead tuples left by the previous one."""
    with engine.connect() as c:
        c.execute(text("VACUUM ANALYZE bench_items"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"backfill_bench_{secrets.token_hex(3)}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name)
    engine = make_engine(url)
    try:
        with engine.begin() as c:
            c.execute(text("CREATE TABLE bench_items (id bigint primary key, v int not null default 0)"))
            c.execute(text("INSERT INTO bench_items (id) SELECT g FROM generate_series(1, :n) g"), {"n": args.rows})
        definition = Backfill(
            name="bench",
            table="bench_items",
            key="id",
            work=WORK,
            tuning=Tuning(batch_size=args.batch_size, target_batch_seconds=0),
        )
        app = App(engine, Registry.of(definition))
        app.init_db()
        hand, framework = [], []
        for _ in range(args.repeat):
            vacuum(admin_of(url))
            started = time.perf_counter()
            batches = hand_loop(engine, args.batch_size)
            hand.append((time.perf_counter() - started) / batches)
            vacuum(admin_of(url))
            started = time.perf_counter()
            run = app.run("bench")
            framework.append((time.perf_counter() - started) / run.batches_done)
        h, f = statistics.median(hand) * 1000, statistics.median(framework) * 1000
        print(f"rows={args.rows} batch_size={args.batch_size} batches={batches}")
        print(f"hand-written loop: {h:.3f} ms/batch")
        print(f"backfill inline:   {f:.3f} ms/batch")
        print(f"fixed cost added:  {f - h:.3f} ms/batch ({f / h:.2f}x the hand-written loop)")
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
