"""How long a backfill would take, measured by running a few of its batches in transactions
that are rolled back: the real work on the real table, and nothing changed."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass

from sqlalchemy import Connection, Table, func, literal_column, select, text

from backfill import keyset
from backfill.definition import Batch, Key, Tuning
from backfill.keyset import Span
from backfill.limits import Bounded
from backfill.status import Phase
from backfill.store import Store
from backfill.target import Target


@dataclass(frozen=True)
class Estimate:
    name: str
    rows: int
    rows_is_estimate: bool
    tuning: Tuning
    sample_ms: tuple[float, ...]
    sample_rows: tuple[int, ...]

    @property
    def batches(self) -> int:
        return math.ceil(self.rows / self.tuning.batch_size)

    @property
    def batch_ms(self) -> float:
        """Median time of a full batch, scaled from the samples' rows."""
        if not self.sample_ms:
            return 0.0
        per_row = [ms / rows for ms, rows in zip(self.sample_ms, self.sample_rows, strict=True) if rows]
        return statistics.median(per_row) * self.tuning.batch_size if per_row else 0.0

    @property
    def seconds(self) -> float:
        """The work alone, spread over the run's parallelism: scheduling adds to it."""
        return self.batches * self.batch_ms / 1000 / self.tuning.parallelism

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "rows": self.rows,
            "rows_is_estimate": self.rows_is_estimate,
            "batch_size": self.tuning.batch_size,
            "parallelism": self.tuning.parallelism,
            "batches": self.batches,
            "sampled_batches": len(self.sample_ms),
            "sample_ms": [round(ms, 2) for ms in self.sample_ms],
            "batch_ms": round(self.batch_ms, 2),
            "seconds": round(self.seconds, 1),
        }


def sample_spans(store: Store, target: Target, tuning: Tuning, samples: int) -> list[Span]:
    """Batches to try: spread over the key range for a one-column integer key (the cost of a
    batch should not depend on where it is: this checks), else the first ones."""
    columns = target.key_columns
    with store.reading() as connection:
        first = keyset.next_spans(connection, columns, cursor=None, end=None, size=tuning.batch_size, count=1)
        if not first:
            return []
        low, high = first[0].first[0], keyset.last_key(connection, columns)
        if len(columns) == 1 and isinstance(low, int) and high is not None and isinstance(high[0], int) and samples > 1:
            spans = list(first)
            for i in range(1, samples):
                cursor: Key = (low + (high[0] - low) * i // samples,)
                spans += keyset.next_spans(connection, columns, cursor=cursor, end=None, size=tuning.batch_size)
            return spans
        return keyset.next_spans(connection, columns, cursor=None, end=None, size=tuning.batch_size, count=samples)


def estimate(store: Store, target: Target, tuning: Tuning, *, samples: int = 3) -> Estimate:
    spans = sample_spans(store, target, tuning, samples)
    timings: list[float] = []
    with store.engine.connect() as connection:
        rows, is_estimate = estimate_rows(connection, target.table)
        connection.rollback()  # end the read's transaction: each sample has its own
        with Bounded(connection, tuning.statement_timeout, tuning.lock_timeout) as limits:
            for seq, span in enumerate(spans):
                batch = Batch(0, 0, seq, Phase.MAIN, target.definition.key, span.first, span.last, span.rows)
                transaction = connection.begin()
                try:
                    limits.batch()
                    started = time.perf_counter()
                    target.definition.run_work(connection, batch)
                    timings.append((time.perf_counter() - started) * 1000)
                finally:
                    transaction.rollback()
    return Estimate(
        name=target.definition.name,
        rows=rows,
        rows_is_estimate=is_estimate,
        tuning=tuning,
        sample_ms=tuple(timings),
        sample_rows=tuple(s.rows for s in spans),
    )


EXACT_COUNT_BELOW = 200_000
"""Below this many estimated rows an exact count is cheap, and worth having."""


def estimate_rows(connection: Connection, table: Table) -> tuple[int, bool]:
    """Rows in the table and whether that figure is an estimate.

    PostgreSQL's planner and MySQL's catalog give a row estimate that costs nothing to read;
    counting a table of hundreds of millions of rows would take minutes. A small table, or one
    with no estimate (SQLite), is counted.
    """
    estimate: int | None = None
    name = connection.dialect.name
    if name == "postgresql":
        estimate = _live_rows(connection, table)
        if not estimate:
            # The planner scales the last ANALYZE by the table's current size in pages, which
            # dead rows inflate: second best, for a table whose statistics were reset.
            query = select(literal_column("1")).select_from(table).compile(dialect=connection.dialect)
            plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {query}").scalar_one()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            estimate = int(plan[0]["Plan"]["Plan Rows"])
    elif name in ("mysql", "mariadb"):
        found = connection.execute(
            text(
                "SELECT table_rows FROM information_schema.tables "
                "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name"
            ),
            {"schema": table.schema, "name": table.name},
        ).scalar()
        estimate = int(found) if found is not None else None
    if estimate is not None and estimate >= EXACT_COUNT_BELOW:
        return estimate, True
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one()), False


def _live_rows(connection: Connection, table: Table) -> int | None:
    """PostgreSQL's count of live rows, kept by every insert and delete as it commits: after
    full-table updates it stays right where the page-based estimate grows with the dead rows
    (2.3 million for a 300,000-row table, seen). Zero when statistics were reset."""
    qualified = connection.dialect.identifier_preparer.format_table(table)
    found = connection.execute(
        text("SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = to_regclass(:name)"), {"name": qualified}
    ).scalar()
    return int(found) if found is not None else None
