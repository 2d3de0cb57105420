"""The Celery application and the per-process ``backfill.App`` its tasks use."""

from __future__ import annotations

import collections
import functools
import math
import os
import threading
import time

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from backfill import App, events, fleet
from backfill.dispatch import Dispatcher
from backfill.errors import ConfigurationError
from backfill.fleet import Member
from backfill.metrics import serve
from backfill.registry import APP_ENV
from backfill.workers.settings import Settings

settings = Settings.from_env()
celery_app = Celery("backfill", include=["backfill.workers.tasks"])
celery_app.conf.update(settings.celery_config())


OPEN_MEMBERS = 32
"""Fleet members a worker process keeps an engine open to at once (least recently used first
out): a worker's memory and connections stay flat however many members the fleet has."""
FLEET_REFRESH_SECONDS = 60.0
"""How often the fleet's declaration is read again: a callable's tenants come and go."""

_open: collections.OrderedDict[str | None, Dispatcher] = collections.OrderedDict()
_lock = threading.Lock()
_fleet: tuple[float, dict[str, Member] | None] = (-math.inf, None)


def members(*, refresh: bool = False) -> dict[str, Member] | None:
    """The fleet's members by name (BACKFILL_FLEET), read again every ``FLEET_REFRESH_SECONDS``
    or when asked; None: one database (BACKFILL_DATABASE_URL)."""
    global _fleet
    read_at, found = _fleet
    if refresh or time.monotonic() - read_at >= FLEET_REFRESH_SECONDS:
        declared = fleet.load(None, os.environ.get(APP_ENV))
        found = None if declared is None else {m.name: m for m in declared}
        _fleet = (time.monotonic(), found)
    return found


def dispatcher(member: str | None = None) -> Dispatcher:
    """The dispatcher for one fleet member (None: the one database), built on first use in each
    worker process (after the fork: no engine crosses it)."""
    with _lock:
        found = _open.get(member)
        if found is not None:
            _open.move_to_end(member)
            return found
    app = _member_app(member)
    from backfill.workers.tasks import execute_batch

    def send(batch_id: int) -> None:
        execute_batch.apply_async((batch_id,) if member is None else (batch_id, member), queue=settings.queue)

    made = Dispatcher(
        app.store,
        app.targets,
        send,
        redispatch_after=settings.redispatch_seconds,
        chain_seconds=settings.chain_seconds,
    )
    with _lock:
        _open[member] = made
        while len(_open) > OPEN_MEMBERS:
            _, closed = _open.popitem(last=False)
            closed.store.engine.dispose()
    return made


def _member_app(member: str | None) -> App:
    if member is None:
        return App.from_settings(app=None, database_url=None)
    known = members()
    if known is None or member not in known:
        known = members(refresh=True)
    if known is None or member not in known:
        raise ConfigurationError(
            f"fleet member '{member}' is not in the fleet this worker reads ({fleet.FLEET_ENV}): give every "
            "worker and the scheduler the same fleet"
        )
    chosen = known[member]
    return App.from_settings(app=None, database_url=chosen.url, schema=chosen.schema)


def _dispose(**_: object) -> None:
    with _lock:
        for opened in _open.values():
            opened.store.engine.dispose()
        _open.clear()


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
