"""Resumable, batched, observable data migrations for large tables."""

from backfill.app import App
from backfill.definition import Backfill, Batch, Tuning, define
from backfill.errors import BackfillError
from backfill.registry import Registry
from backfill.status import BatchStatus, Phase, RunStatus

__all__ = [
    "App",
    "Backfill",
    "BackfillError",
    "Batch",
    "BatchStatus",
    "Phase",
    "Registry",
    "RunStatus",
    "Tuning",
    "define",
]
