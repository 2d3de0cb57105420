"""Planning: adding a run's next batches and moving its cursor, guarded against other planners."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Integer,
    Select,
    Text,
    bindparam,
    cast,
    exists,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from backfill import tables
from backfill.events import Event
from backfill.keyset import Span, encode_key
from backfill.status import BatchStatus, RunStatus
from backfill.store.base import StoreBase, batches, runs
from backfill.store.records import BatchRecord, Run, batch_values


def _unchanged_since(run: Run) -> tuple[ColumnElement[bool], ...]:
    """The run's planning state is still what ``run`` saw: same phase, same next batch number
    (the cursor moves only with one of them), and still running."""
    return (
        runs.c.id == run.id,
        runs.c.next_seq == run.next_seq,
        runs.c.phase == run.phase.value,
        runs.c.status == RunStatus.RUNNING.value,
    )


class PlanningMixin(StoreBase):
    def record_batches(self, run: Run, spans: Sequence[Span]) -> list[BatchRecord] | None:
        """Add the next batches and move the cursor past them, in one transaction.

        Guarded by the planning state ``run`` was read with: if another planner moved the run
        on, or began the final pass, nothing is written and None comes back, so batches never
        overlap and no batch of a finished phase is added.
        """
        rows = [batch_values(run.id, run.next_seq + i, run.phase, span) for i, span in enumerate(spans)]
        with self.begin() as conn:
            if conn.dialect.name == "postgresql":
                found = self._record_in_one(conn, run, rows)
                if found is None:
                    return None
                ids: Sequence[int] = found
                self._will_log(conn, *self._planned_events(run, ids, rows))
                return _records(ids, rows)
            move = (
                update(runs)
                .where(*_unchanged_since(run))
                .values(cursor=encode_key(spans[-1].last), next_seq=run.next_seq + len(spans), updated_at=self.now())
            )
            if not conn.execute(move).rowcount:
                return None
            insert = (
                batches.insert().values(created_at=self.now()).returning(batches.c.id, sort_by_parameter_order=True)
            )
            ids = conn.execute(insert, rows).scalars().all()
            self._record(conn, *self._planned_events(run, ids, rows))
        return _records(ids, rows)

    @staticmethod
    def _planned_events(run: Run, ids: Sequence[int], rows: list[dict[str, Any]]) -> list[Event]:
        return [
            Event(backfill=run.name, run_id=run.id, after=BatchStatus.PENDING, batch_id=i, seq=r["seq"])
            for i, r in zip(ids, rows, strict=True)
        ]

    def mark_planned_all(self, run: Run) -> bool:
        """The phase has no keys left to plan: only while nobody moved the run on since."""
        with self.begin() as conn:
            return bool(
                conn.execute(
                    update(runs).where(*_unchanged_since(run)).values(planned_all=True, updated_at=self.now())
                ).rowcount
            )

    def _record_in_one(self, conn: Connection, run: Run, rows: list[dict[str, Any]]) -> list[int] | None:
        """PostgreSQL: the cursor moved, the batches added and their events, in one statement
        (the batches arrive as arrays: one statement, prepared once, for any number of them)."""
        statement = self._statements.get("record")
        if statement is None:
            statement = self._statements["record"] = self._record_statement()
        found = conn.execute(
            statement,
            {
                "bf_run": run.id,
                "bf_seen": run.next_seq,
                "bf_phase": run.phase.value,
                "bf_cursor": rows[-1]["last_key"],
                "bf_next": run.next_seq + len(rows),
                "bf_seqs": [r["seq"] for r in rows],
                "bf_firsts": [json.dumps(r["first_key"]) for r in rows],
                "bf_lasts": [json.dumps(r["last_key"]) for r in rows],
                "bf_rows": [r["rows"] for r in rows],
            },
        ).all()
        if not found:
            return None
        assert found[0][1] == len(rows)
        return [row[0] for row in found]

    def _record_statement(self) -> Select[Any]:
        now = self.now()
        moved = (
            update(runs)
            .where(
                runs.c.id == bindparam("bf_run"),
                runs.c.next_seq == bindparam("bf_seen"),
                runs.c.phase == bindparam("bf_phase"),
                runs.c.status == RunStatus.RUNNING.value,
            )
            .values(
                cursor=bindparam("bf_cursor", type_=runs.c.cursor.type), next_seq=bindparam("bf_next"), updated_at=now
            )
            .returning(runs.c.id)
            .cte("moved")
        )
        planned = (
            func.unnest(
                bindparam("bf_seqs", type_=ARRAY(Integer())),
                bindparam("bf_firsts", type_=ARRAY(Text())),
                bindparam("bf_lasts", type_=ARRAY(Text())),
                bindparam("bf_rows", type_=ARRAY(Integer())),
            )
            .table_valued("seq", "first_key", "last_key", "rows")
            .render_derived(name="planned")
        )
        added = (
            batches.insert()
            .from_select(
                ["run_id", "seq", "phase", "first_key", "last_key", "rows", "status", "attempts", "created_at"],
                select(
                    bindparam("bf_run", type_=batches.c.run_id.type),
                    planned.c.seq,
                    bindparam("bf_phase", type_=batches.c.phase.type),
                    cast(planned.c.first_key, JSON()),
                    cast(planned.c.last_key, JSON()),
                    planned.c.rows,
                    literal(BatchStatus.PENDING.value, batches.c.status.type),
                    literal(0, batches.c.attempts.type),
                    now,
                ).where(exists(select(moved.c.id))),
            )
            .returning(batches.c.id, batches.c.seq)
            .cte("added")
        )
        ev = tables.events
        logged = (
            ev.insert()
            .from_select(
                ["run_id", "batch_id", "after", "at"],
                select(
                    bindparam("bf_run", type_=ev.c.run_id.type),
                    added.c.id,
                    literal(BatchStatus.PENDING.value, ev.c.after.type),
                    now,
                ),
            )
            .returning(ev.c.id)
            .cte("logged")
        )
        return select(added.c.id, select(func.count()).select_from(logged).scalar_subquery()).order_by(added.c.seq)


def _records(ids: Sequence[int], rows: list[dict[str, Any]]) -> list[BatchRecord]:
    """The new batches, built from what was written (their time of creation is the database's,
    and unread)."""
    return [BatchRecord.from_mapping({**row, "id": i, "created_at": None}) for i, row in zip(ids, rows, strict=True)]
