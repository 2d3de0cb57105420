"""Celery delivery of backfill batches: ``backfill worker`` and ``backfill scheduler``, or
``celery -A backfill.workers worker``."""

from backfill.workers.app import celery_app

__all__ = ["celery_app"]
