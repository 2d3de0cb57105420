"""The store's values: a run, a batch, a claim, an event, as frozen records built from rows."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Row

from backfill import params
from backfill.definition import Backfill, Tuning
from backfill.events import Event
from backfill.keyset import Span, encode_key
from backfill.status import BatchStatus, Phase, RunStatus

T = TypeVar("T")


def utcnow() -> datetime:
    """This process's clock, for what only this process reads (never for leases or holds)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _build(cls: type[T], values: Mapping[Any, Any], **converted: Any) -> T:
    """A record from a row: every field by its column's name, some converted on the way."""
    names = (f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]  # a dataclass type
    return cls(**{name: converted[name] if name in converted else values.get(name) for name in names})


class FinalPass(enum.StrEnum):
    """What a run's final pass covers, decided when the run is recorded."""

    PENDING = "pending"
    """Every row of the key range still matching the ``pending`` predicate (given, or derived
    from the filled ``columns``)."""
    PAST_END = "past_end"
    """Only the keys added past the end: without a predicate nothing says which rows are pending."""

    @classmethod
    def of(cls, definition: Backfill) -> FinalPass:
        return cls.PENDING if definition.has_pending else cls.PAST_END


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    status: RunStatus
    phase: Phase
    table_name: str
    schema_name: str | None
    key_columns: tuple[str, ...]
    cursor: list[Any] | None
    end_key: list[Any] | None
    planned_all: bool
    next_seq: int
    tuning: Tuning
    held_reason: str | None
    held_since: datetime | None
    rate_next_at: datetime | None
    final_pass: FinalPass
    rows_total: int | None
    rows_total_estimated: bool
    rows_done: int
    rows_affected: int
    batches_done: int
    batches_failed: int
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    last_error: str | None
    started_by: str | None = None
    """Who recorded the run: ``cli:user@host`` (or ``start --by``), ``migration``."""
    params: dict[str, Any] | None = None
    """The run's parameter values in their stored (JSON) form; ``backfill.params.decode`` gives
    them their types."""
    throttled_until: datetime | None = None
    """An operator's throttle: no batch starts before this time (the database's clock)."""
    throttle_reason: str | None = None
    throttle_query: str | None = None
    """An operator's throttle query: while it returns a row, the run is held."""
    pace: float | None = None
    """The impact budget's share of time the run may spend in batches (None: all of it)."""
    impact_note: str | None = None
    """What the impact budget's controller last decided, in words."""
    impact_state: dict[str, Any] | None = None

    @property
    def pace_in_force(self) -> float:
        """The share of its time the run may spend in batches now: the impact budget's pace while
        the run has a budget (one tuned to 0 lets it go full speed at once), else all of it."""
        if self.tuning.impact_budget and self.pace is not None and 0 < self.pace < 1:
            return self.pace
        return 1.0

    @classmethod
    def from_row(cls, row: Row[Any]) -> Run:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> Run:
        return _build(
            cls,
            m,
            status=RunStatus(m["status"]),
            phase=Phase(m["phase"]),
            key_columns=tuple(m["key_columns"]),
            planned_all=bool(m["planned_all"]),
            rows_total_estimated=bool(m["rows_total_estimated"]),
            final_pass=FinalPass(m["final_pass"] or FinalPass.PAST_END),
            # A setting added after the run was recorded is NULL on its row: the default applies.
            tuning=Tuning(**{name: m[name] for name in Tuning.__dataclass_fields__ if m.get(name) is not None}),
        )


@dataclass(frozen=True)
class BatchRecord:
    id: int
    run_id: int
    seq: int
    phase: Phase
    first_key: list[Any]
    last_key: list[Any]
    rows: int
    status: BatchStatus
    attempts: int
    rows_affected: int | None
    duration_ms: float | None
    worker: str | None
    lease_expires_at: datetime | None
    dispatched_at: datetime | None
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> BatchRecord:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> BatchRecord:
        return _build(cls, m, phase=Phase(m["phase"]), status=BatchStatus(m["status"]))


@dataclass(frozen=True)
class BatchStats:
    counts: dict[BatchStatus, int]
    planned_main_rows: int
    """Rows in the batches planned so far by the main sweep."""
    first_key: list[Any] | None
    """The first key of the run's first batch: where the main sweep started."""
    last_moved_at: datetime | None = None
    """When a batch of the run last started or ended: a running run still for long has no runner."""
    oldest_dispatch_at: datetime | None = None
    """When the oldest message for a batch no worker has taken yet went out."""
    first_lease_end: datetime | None = None
    """When the earliest lease of a running batch ends (in the past: its runner stopped answering)."""


@dataclass(frozen=True)
class EventRecord:
    id: int
    run_id: int
    batch_id: int | None
    seq: int | None
    before: str | None
    after: str
    worker: str | None
    error: str | None
    at: datetime
    note: str | None = None


@dataclass(frozen=True)
class Claim:
    """A batch handed to one worker: the token proves ownership when the batch commits."""

    backfill: str
    batch: BatchRecord
    token: str
    worker: str

    def event(
        self,
        after: BatchStatus,
        before: BatchStatus | None = BatchStatus.RUNNING,
        error: str | None = None,
        note: str | None = None,
    ) -> Event:
        return Event(
            backfill=self.backfill,
            run_id=self.batch.run_id,
            after=after,
            before=before,
            batch_id=self.batch.id,
            seq=self.batch.seq,
            worker=self.worker,
            error=error,
            note=note,
        )


class Refusal(enum.Enum):
    """Why a claim, or the commit of a claimed batch, did not happen."""

    NONE = "none"
    """Asked for the run's next batch: none is planned and free (or the run is held)."""
    TAKEN = "taken"
    """Another worker has the batch, or it is done: nothing for this one to do."""
    NOT_RUNNING = "not_running"
    """The run is paused or over: the batch waits (its message is spent; the next tick sends one)."""
    RATE = "rate"
    """The rate cap: no batch may start before ``retry_after``."""
    LOST = "lost"
    """The claim ran out and another worker may hold the batch now."""
    HELD = "held"
    """The run is held or throttled: the batch waits (its message is spent; the next tick after
    the hold sends one)."""


@dataclass(frozen=True)
class Refused:
    reason: Refusal
    retry_after: float = 0.0


@dataclass(frozen=True)
class Carry:
    """Claim the run's next batch in the statement that completes this one: one commit makes the
    batch done and the next one ours (its attempt counts, even if this worker dies next)."""

    worker: str
    lease_seconds: float
    redispatch_after: float | None = None
    """Leave alone batches whose message went out less than this long ago (another worker's
    chain will start from it); None: there are no messages (the inline runner)."""


@dataclass(frozen=True)
class Completed:
    """What completing a batch gave: why not (then roll back), the run as the completing
    statement left it, and the next batch it claimed, if any."""

    refusal: Refusal | None
    run: Run | None = None
    next: Claim | None = None
    planned_left: int | None = None
    """Planned batches of the run still free after this commit (None: not counted)."""


def new_run_values(
    definition: Backfill,
    tuning: Tuning,
    now: Any,
    started_by: str | None = None,
    arguments: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The row of a newly queued run (also rendered into SQL scripts by the Alembic ops);
    ``arguments`` are its parameter values, already checked (``Backfill.bind_arguments``)."""
    return {
        "started_by": started_by,
        "params": params.encode(definition.parameters, arguments or {}),
        "name": definition.name,
        "active_name": definition.name,
        "status": RunStatus.PENDING.value,
        "phase": Phase.MAIN.value,
        "table_name": definition.table,
        "schema_name": definition.schema,
        "key_columns": list(definition.key),
        "planned_all": False,
        "next_seq": 0,
        **tuning_values(tuning),
        "final_pass": FinalPass.of(definition).value,
        "rows_total_estimated": False,
        "rows_done": 0,
        "rows_affected": 0,
        "batches_done": 0,
        "batches_failed": 0,
        "created_at": now,
        "updated_at": now,
    }


def tuning_values(tuning: Tuning) -> dict[str, Any]:
    return {name: getattr(tuning, name) for name in tuning.__dataclass_fields__}


def batch_values(run_id: int, seq: int, phase: Phase, span: Span) -> dict[str, Any]:
    """A new batch's row, but for its time of creation (the database's, set by the store)."""
    return {
        "run_id": run_id,
        "seq": seq,
        "phase": phase.value,
        "first_key": encode_key(span.first),
        "last_key": encode_key(span.last),
        "rows": span.rows,
        "status": BatchStatus.PENDING.value,
        "attempts": 0,
    }
