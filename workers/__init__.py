"""Celery delivery of backfill batches: ``celery -A workers worker`` / ``backfill worker``."""

from workers.app import celery_app

__all__ = ["celery_app"]
