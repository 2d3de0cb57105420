"""Resumable, batched, observable data migrations for large tables."""

import logging

from backfill.app import App
from backfill.definition import Backfill, Batch, Tuning, define
from backfill.errors import BackfillError, BackfillNotFinished
from backfill.fleet import Member
from backfill.params import Param
from backfill.prometheus import PrometheusCheck
from backfill.readiness import require_finished
from backfill.registry import Registry
from backfill.status import BatchStatus, Phase, RunStatus

# A library logs; the application decides where it goes (``backfill.events.configure`` for ours).
logging.getLogger("backfill").addHandler(logging.NullHandler())

__all__ = [
    "App",
    "Backfill",
    "BackfillError",
    "BackfillNotFinished",
    "Batch",
    "BatchStatus",
    "Member",
    "Param",
    "Phase",
    "PrometheusCheck",
    "Registry",
    "RunStatus",
    "Tuning",
    "define",
    "require_finished",
]
