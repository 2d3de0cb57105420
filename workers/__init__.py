"""The deployment's entry point for Celery's own command line (``celery -A workers ...``), as
the compose stack's health check uses it; the app itself is ``backfill.workers``."""

from backfill.workers import celery_app

__all__ = ["celery_app"]
