"""The checkpoint store: every state a run or a batch can be in, and every move between them.

Each move is one guarded statement (``WHERE status IN ...``, or the lease token a claim handed
out), along an edge of ``backfill.transitions``, so two processes racing for the same move cannot
both win: the loser sees a rowcount of zero. That is what makes a duplicate delivery, a second
planner or a resumed runner harmless. The package is one ``Store``, in parts: ``runs`` (a
run's life), ``retries`` (an operator's retry), ``settings`` (tune, hold and the adapted
batch size of a running run), ``planning`` (adding batches), ``leases``
(batches in workers' hands), ``completion`` (how a claim ends; on PostgreSQL in one statement,
``completion_sql``) and ``reads``.
"""

from __future__ import annotations

from backfill.store.completion import CompletionMixin
from backfill.store.planning import PlanningMixin
from backfill.store.reads import ReadsMixin
from backfill.store.records import (
    BatchRecord,
    BatchStats,
    Carry,
    Claim,
    Completed,
    EventRecord,
    FinalPass,
    Refusal,
    Refused,
    Run,
    new_run_values,
    utcnow,
)
from backfill.store.retries import RetriesMixin
from backfill.store.settings import SettingsMixin


class Store(RetriesMixin, SettingsMixin, PlanningMixin, CompletionMixin, ReadsMixin):
    """The checkpoint tables, through an engine or through one borrowed connection (see
    ``StoreBase``); ``time`` says whose clock stamps and compares its times (the database's)."""


__all__ = [
    "BatchRecord",
    "BatchStats",
    "Carry",
    "Claim",
    "Completed",
    "EventRecord",
    "FinalPass",
    "Refusal",
    "Refused",
    "Run",
    "Store",
    "new_run_values",
    "utcnow",
]
