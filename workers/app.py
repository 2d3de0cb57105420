"""``celery -A workers.app:celery_app``: the same app as ``backfill.workers.app``."""

from backfill.workers.app import celery_app

__all__ = ["celery_app"]
