"""The per-batch fixed cost of the framework, against a hand-written keyset loop.

All walk the same PostgreSQL table with the same per-batch UPDATE, one batch in flight. The
hand-written loop keeps its own checkpoint row, committed with each batch, as a careful engineer
would. The framework runs it twice: with the inline runner (``backfill run``), and as one Celery
worker's chain (``Dispatcher.execute`` in this process: what a worker does between two batches,
without the broker, which a chain does not touch between batches). The difference in time per
batch, start to end of the whole run, is what the framework adds: claims, planning, checkpoints,
events, counters. Statements and commits per batch are counted on the connection.

    python -m bench.fixed_cost                       # 100- and 1,000-row batches, median of 3
    python -m bench.fixed_cost --batch-sizes 100 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from backfill import App, Backfill, Registry, Tuning
from backfill.database import make_engine
from backfill.dispatch import Dispatcher
from bench.scenario import bench_database

WORK = "UPDATE bench_items SET v = v + 1 WHERE id BETWEEN :first AND :last"
TARGETS = {100: 1.5, 1000: 1.15}


def hand_loop(engine: Engine, batch_size: int) -> int:
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


def inline(app: App) -> int:
    return app.run("bench").batches_done


def chain(app: App) -> int:
    """A worker's chain, started the way the tick starts one: its first batch's message."""
    sent: list[int] = []
    dispatcher = Dispatcher(app.store, app.targets, sent.append, chain_seconds=3600.0)
    app.start("bench")
    dispatcher.tick()
    dispatcher.execute(sent[0])
    while (run := app.store.latest_run("bench")) is not None and not run.status.is_over:
        dispatcher.tick()  # the final pass, if the chain's own ticks left it
        for batch_id in sent[1:]:
            dispatcher.execute(batch_id)
        sent[:] = sent[:1]
    assert run is not None and run.status.value == "finished", run
    return run.batches_done


@dataclass
class Counts:
    statements: int = 0
    commits: int = 0
    works: list[float] = field(default_factory=list)
    """When each batch's work statement ran: from the first to the last is the steady state."""

    def listen(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._executed)
        event.listen(engine, "commit", lambda *a: self._add("commits"))

    def _executed(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements += 1
        if statement.startswith("UPDATE bench_items"):
            self.works.append(time.perf_counter())

    @property
    def steady_ms(self) -> float:
        """Time per batch between the first batch's work and the last's: what each batch costs
        once the run is going, without the run's own start (checking the definition, the first
        planning) and end (the final pass, the conclusion)."""
        return (self.works[-1] - self.works[0]) * 1000 / max(1, len(self.works) - 1)

    def _add(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)


@dataclass
class Measure:
    name: str
    ms: list[float] = field(default_factory=list)
    steady: list[float] = field(default_factory=list)
    statements: float = 0.0
    commits: float = 0.0


def vacuum(url: Any) -> None:
    """Every approach starts from the same clean table: no dead tuples left by the one before."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text("VACUUM ANALYZE bench_items"))
    engine.dispose()


def measure(url: Any, batch_size: int, repeat: int) -> dict[str, Measure]:
    definition = Backfill(
        name="bench", table="bench_items", key="id", work=WORK,
        tuning=Tuning(batch_size=batch_size, target_batch_seconds=0),
    )  # fmt: skip
    approaches: dict[str, Callable[[Engine], int]] = {
        "hand-written loop": lambda engine: hand_loop(engine, batch_size),
        "backfill inline": lambda engine: inline(App(engine, Registry.of(definition))),
        "backfill Celery chain": lambda engine: chain(App(engine, Registry.of(definition))),
    }
    results = {name: Measure(name) for name in approaches}
    for _ in range(repeat):  # interleaved, so a slow moment of the machine hits every approach
        for name, run in approaches.items():
            vacuum(url)
            engine = make_engine(url)
            try:
                if name != "hand-written loop":
                    App(engine, Registry.of(definition)).store.drop_tables()
                    App(engine, Registry.of(definition)).init_db()
                counts = Counts()
                counts.listen(engine)
                started = time.perf_counter()
                batches = run(engine)
                results[name].ms.append((time.perf_counter() - started) * 1000 / batches)
                results[name].steady.append(counts.steady_ms)
                results[name].statements = counts.statements / batches
                results[name].commits = counts.commits / batches
            finally:
                engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-sizes", default="100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with bench_database() as database:
        url = database.url
        engine = make_engine(url)
        with engine.begin() as c:
            c.execute(text("CREATE TABLE bench_items (id bigint primary key, v int not null default 0)"))
            c.execute(text("INSERT INTO bench_items (id) SELECT g FROM generate_series(1, :n) g"), {"n": args.rows})
        engine.dispose()
        print(
            f"{args.rows:,} rows, one batch in flight, median of {args.repeat} interleaved runs, whole run per batch\n"
        )
        print(
            "| batch | approach | ms/batch | x hand loop | steady ms/batch | x hand loop | statements/batch | commits/batch |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for size in (int(s) for s in args.batch_sizes.split(",")):
            results = measure(url, size, args.repeat)
            hand = statistics.median(results["hand-written loop"].ms)
            hand_steady = statistics.median(results["hand-written loop"].steady)
            for m in results.values():
                ms, steady = statistics.median(m.ms), statistics.median(m.steady)
                target = TARGETS.get(size) if m.name != "hand-written loop" else None
                ratio = f"{ms / hand:.2f}x" + (f" (target <= {target})" if target else "")
                print(
                    f"| {size:,} | {m.name} | {ms:.3f} | {ratio} | {steady:.3f} | {steady / hand_steady:.2f}x "
                    f"| {m.statements:.2f} | {m.commits:.2f} |"
                )


if __name__ == "__main__":
    main()
