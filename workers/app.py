"""The Celery application and the per-process ``backfill.App`` its tasks use."""

from __future__ import annotations

import functools

from celery import Celery
from celery.signals import worker_process_shutdown

from backfill import App
from backfill.dispatch import Dispatcher
from workers.settings import Settings

settings = Settings.from_env()
celery_app = Celery("backfill", include=["workers.tasks"])
celery_app.conf.update(settings.celery_config())


@functools.cache
def backfill_app() -> App:
    """Built on first use in each worker process (after the fork: no engine crosses it), from
    BACKFILL_APP and BACKFILL_DATABASE_URL."""
    return App.from_settings(app=None, database_url=None)


@functools.cache
def dispatcher() -> Dispatcher:
    from workers.tasks import execute_batch

    app = backfill_app()
    return Dispatcher(
        app.store,
        app.targets,
        lambda batch_id: execute_batch.apply_async((batch_id,), queue=settings.queue),
        redispatch_after=settings.redispatch_seconds,
    )


def _dispose(**_: object) -> None:
    if backfill_app.cache_info().currsize:
        backfill_app().store.engine.dispose()


worker_process_shutdown.connect(_dispose)
