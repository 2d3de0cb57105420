"""The completion of a batch on PostgreSQL as one statement: what makes a batch cost its work
plus one round trip. Everything the generic path does in four statements happens here in
data-modifying CTEs, all or nothing; the rows come back as JSON objects, which keeps the
statement under the driver's 4 kB statement cache and the result to a few columns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Float,
    Select,
    bindparam,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    true,
    update,
)

from backfill import tables
from backfill.clock import plus_seconds
from backfill.definition import Tuning
from backfill.status import BatchStatus
from backfill.store.base import StoreBase, batches, claimable, one_of, runs
from backfill.store.leases import CLAIM, SUCCEED
from backfill.transitions import WORKING

WORKING_VALUES = [s.value for s in WORKING]
"""The run statuses in which a batch's end still counts."""

RUN_STATE = (
    "status", "phase", "planned_all", "next_seq", "cursor", "end_key", "held_reason", "throttled_until", "pace",
    "batches_done", *Tuning.__dataclass_fields__,
)  # fmt: skip
"""What a chain goes on by, as the completing statement leaves the run: its status, hold and
throttle, its planning state, its pace, and every setting, since an operator may tune any of
them while the chain runs (its rests, its monitor's limits and the impact budget read them)."""
NEXT_BATCH = ("id", "run_id", "seq", "phase", "first_key", "last_key", "rows", "status", "attempts")


def complete_statement(now: ColumnElement[datetime], done_values: dict[str, Any], carry: bool) -> Select[Any]:
    """PostgreSQL's completion of a batch in one statement of data-modifying CTEs: the batch
    done (under its claim's token), its run counted (only while the run works), its event, and
    with ``carry`` the run's next free batch claimed with its event. Parameters are bound by
    name (``bf_*``), so the statement is built and compiled once per store."""
    # Short aliases keep the statement under the driver's 4 kB cache (see the module's note).
    b: Any = batches.alias("b")
    r: Any = runs.alias("r")
    done = (
        StoreBase._move_batches(SUCCEED, on=b, **done_values)
        .where(b.c.id == bindparam("bf_batch"), b.c.lease_token == bindparam("bf_token"))
        .returning(b.c.id, b.c.run_id)
        .cte("done")
    )
    counted = (
        update(r)
        .where(r.c.id == bindparam("bf_run"), one_of(r.c.status, WORKING_VALUES), exists(select(done.c.id)))
        .values(
            rows_done=r.c.rows_done + bindparam("bf_rows"),
            rows_affected=r.c.rows_affected + bindparam("bf_affected_sum"),
            batches_done=r.c.batches_done + 1,
            updated_at=now,
        )
        .returning(r.c.id, *(r.c[name] for name in RUN_STATE))
        .cte("counted")
    )
    logged = _logged(done, BatchStatus.RUNNING, BatchStatus.SUCCEEDED, "bf_worker", now, "logged")
    # The rows come back as JSON objects: a short statement (PostgreSQL's driver caches
    # statements below 4 kB) and few result columns to describe.
    columns = [
        done.c.id.label("done_id"),
        select(func.count()).select_from(logged).scalar_subquery().label("logged"),
        func.to_jsonb(counted.table_valued()).label("run"),
    ]
    joined: Any = done.join(counted, true())
    if carry:
        stale = plus_seconds(now, -bindparam("bf_redispatch", type_=Float()))
        p = batches.alias("p")
        candidate = (
            select(p.c.id)
            .where(
                p.c.run_id == bindparam("bf_run"),
                p.c.status == BatchStatus.PENDING.value,
                or_(
                    bindparam("bf_redispatch") < 0,
                    p.c.dispatched_at.is_(None),
                    p.c.dispatched_at < stale,
                ),
            )
            .order_by(p.c.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        runs_on = exists(select(counted.c.id).where(*carrying(counted.c, now)))
        following = (
            StoreBase._move_batches(
                CLAIM,
                on=b,
                attempts=b.c.attempts + 1,
                worker=bindparam("bf_next_worker"),
                lease_token=bindparam("bf_next_token"),
                lease_expires_at=plus_seconds(now, bindparam("bf_lease", type_=Float())),
                started_at=now,
            )
            .where(b.c.id == candidate, runs_on)
            .returning(*(b.c[name] for name in NEXT_BATCH))
            .cte("following")
        )
        logged_next = _logged(following, BatchStatus.PENDING, BatchStatus.RUNNING, "bf_next_worker", now, "logged_next")
        columns += [
            func.to_jsonb(following.table_valued()).label("next"),
            select(func.count()).select_from(logged_next).scalar_subquery().label("logged_next"),
        ]
        joined = joined.outerjoin(following, true())
    return select(*columns).select_from(joined)


def _logged(source: CTE, before: BatchStatus, after: BatchStatus, worker: str, now: Any, name: str) -> CTE:
    """The event of the batch move ``source`` returned, inserted by the same statement."""
    ev = tables.events
    return (
        ev.insert()
        .from_select(
            ["run_id", "batch_id", "before", "after", "worker", "error", "at"],
            select(
                source.c.run_id,
                source.c.id,
                literal(before.value, ev.c.before.type),
                literal(after.value, ev.c.after.type),
                bindparam(worker, type_=ev.c.worker.type),
                null(),
                now,
            ),
        )
        .returning(ev.c.id)
        .cte(name)
    )


def carrying(run: Any, now: Any) -> list[ColumnElement[bool]]:
    """A run whose next batch may be claimed in the statement completing this one (PostgreSQL's):
    one that may claim (``claimable``) and is not under a rate cap (a capped claim goes through
    the cap's schedule)."""
    return [*claimable(run, now, "postgresql"), run.max_rows_per_second == 0]
