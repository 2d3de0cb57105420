"""What a run's checkpoint rows (``backfill_batches``) say about where its time went."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from sqlalchemy import Engine, select

from backfill.tables import batches, runs


def tenths(durations: list[float], rows: list[int] | None = None) -> dict[str, float | None]:
    """Median batch duration over the batches in the first and in the last tenth of the table
    (by rows, in key order, so batches of adapted sizes count by what they cover), and their
    ratio: 1.0 means a batch costs the same wherever it is in the table. Also per 1,000 rows."""
    empty: dict[str, float | None] = {
        "first_tenth_ms": None,
        "last_tenth_ms": None,
        "last_over_first": None,
        "first_tenth_ms_per_1k_rows": None,
        "last_tenth_ms_per_1k_rows": None,
    }
    if not durations:
        return empty
    sizes = rows or [1] * len(durations)
    total = sum(sizes)
    first: list[int] = []
    last: list[int] = []
    before = 0
    for i, n in enumerate(sizes):
        if before < total / 10:
            first.append(i)
        if before + n > total * 9 / 10:
            last.append(i)
        before += n
    f = statistics.median(durations[i] for i in first)
    la = statistics.median(durations[i] for i in last)
    return {
        "first_tenth_ms": round(f, 2),
        "last_tenth_ms": round(la, 2),
        "last_over_first": round(la / f, 3) if f else None,
        "first_tenth_ms_per_1k_rows": round(
            statistics.median(1000 * durations[i] / max(1, sizes[i]) for i in first), 3
        ),
        "last_tenth_ms_per_1k_rows": round(statistics.median(1000 * durations[i] / max(1, sizes[i]) for i in last), 3),
        "first_tenth_batch_rows": statistics.median(sizes[i] for i in first),
        "last_tenth_batch_rows": statistics.median(sizes[i] for i in last),
    }


def analyse(engine: Engine, run_id: int, wall_seconds: float) -> dict[str, Any]:
    with engine.connect() as c:
        run = c.execute(select(runs).where(runs.c.id == run_id)).mappings().one()
        rows = (
            c.execute(
                select(
                    batches.c.seq,
                    batches.c.phase,
                    batches.c.status,
                    batches.c.rows,
                    batches.c.duration_ms,
                    batches.c.attempts,
                    batches.c.created_at,
                    batches.c.started_at,
                    batches.c.finished_at,
                )
                .where(batches.c.run_id == run_id)
                .order_by(batches.c.seq)
            )
            .mappings()
            .all()
        )
    main = [r for r in rows if r["phase"] == "main" and r["duration_ms"] is not None]
    catchup = [r for r in rows if r["phase"] != "main"]
    durations = [float(r["duration_ms"]) for r in main]
    held = [
        (r["finished_at"] - r["started_at"]).total_seconds() * 1000
        for r in main
        if r["started_at"] and r["finished_at"]
    ]
    # Between one batch's commit and the next one's claim (in seq order): delivery, planning.
    gaps = [
        (b["started_at"] - a["finished_at"]).total_seconds() * 1000
        for a, b in itertools.pairwise(main)
        if a["finished_at"] and b["started_at"]
    ]
    ends = [r["finished_at"] for r in rows if r["finished_at"]]
    starts = [r["started_at"] for r in rows if r["started_at"]]
    catchup_ends = [r["finished_at"] for r in catchup if r["finished_at"]]
    main_ends = [r["finished_at"] for r in main if r["finished_at"]]
    result: dict[str, Any] = {
        "status": run["status"],
        "batch_size": run["batch_size"],
        "parallelism": run["parallelism"],
        "batches": len(rows),
        "main_batches": len(main),
        "catchup_batches": len(catchup),
        "retried_batches": sum(1 for r in rows if (r["attempts"] or 0) > 1),
        "work_ms_total": round(sum(durations), 1),
        "work_ms_median": round(statistics.median(durations), 2) if durations else None,
        "claim_to_commit_ms_median": round(statistics.median(held), 2) if held else None,
        "gap_ms_median": round(statistics.median(gaps), 2) if gaps else None,
        "gap_ms_p90": round(statistics.quantiles(gaps, n=10)[-1], 2) if len(gaps) >= 10 else None,
        "wall_ms_per_batch": round(wall_seconds * 1000 / len(rows), 2) if rows else None,
        "first_claim_after_start_s": round((min(starts) - run["started_at"]).total_seconds(), 2)
        if starts and run["started_at"]
        else None,
        "batches_span_s": round((max(ends) - min(starts)).total_seconds(), 2) if starts and ends else None,
        "catchup_s": round((max(catchup_ends) - max(main_ends)).total_seconds(), 2)
        if catchup_ends and main_ends
        else 0.0,
        **tenths(durations, [int(r["rows"]) for r in main]),
    }
    return result
