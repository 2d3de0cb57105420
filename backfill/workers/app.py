"""The Celery application and the per-process ``backfill.App`` its tasks use."""

from __future__ import annotations

import functools

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from backfill import App, events
from backfill.dispatch import Dispatcher
from backfill.metrics import serve
from backfill.workers.settings import Settings

settings = Settings.from_env()
celery_app = Celery("backfill", include=["backfill.workers.tasks"])
celery_app.conf.update(settings.celery_config())


@functools.cache
def backfill_app() -> App:
    """Built on first use in each worker process (after the fork: no engine crosses it), from
    BACKFILL_APP and BACKFILL_DATABASE_URL."""
    return App.from_settings(app=None, database_url=None)


@functools.cache
def dispatcher() -> Dispatcher:
    from backfill.workers.tasks import execute_batch

    app = backfill_app()
    return Dispatcher(
        app.store,
        app.targets,
        lambda batch_id: execute_batch.apply_async((batch_id,), queue=settings.queue),
        redispatch_after=settings.redispatch_seconds,
        chain_seconds=settings.chain_seconds,
    )


def _dispose(**_: object) -> None:
    if backfill_app.cache_info().currsize:
        backfill_app().store.engine.dispose()


@functools.cache
def metrics_app() -> App:
    """The main process's own App, for metrics: never the one its children use."""
    return App.from_settings(app=None, database_url=None)


def _serve_metrics(**_: object) -> None:
    events.join_host_logging()
    if settings.metrics_port is not None:
        serve(metrics_app().store, settings.metrics_port)


def _forget_parent_connections(**_: object) -> None:
    """A child forked from the main process must not touch the main process's connections."""
    events.join_host_logging()
    if metrics_app.cache_info().currsize:
        metrics_app().store.engine.dispose(close=False)


worker_process_shutdown.connect(_dispose)
worker_init.connect(_serve_metrics)
worker_process_init.connect(_forget_parent_connections)
