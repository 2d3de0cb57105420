"""The Celery application and the per-process ``backfill.App`` its tasks use."""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Iterator

import redis
from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from backfill import App, events, fleet
from backfill.boundary import contained
from backfill.dispatch import Dispatcher, share
from backfill.errors import ConfigurationError
from backfill.fleet import Member
from backfill.metrics import serve
from backfill.planner import Plan
from backfill.registry import APP_ENV
from backfill.store import Store
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
        top_up=member is None or not settings.fleet_parallelism,
    )
    with _lock:
        _open[member] = made
        while len(_open) > OPEN_MEMBERS:
            _, closed = _open.popitem(last=False)
            url = closed.store.engine.url
            if all(kept.store.engine.url != url for kept in _open.values()):  # tenants share a pool
                closed.store.engine.dispose()
    return made


def tick_fleet() -> int:
    """The scheduler's tick over every member (or the one database): each member's runs
    planned, then messages sent — under ``BACKFILL_FLEET_PARALLELISM``, the fleet's free chains
    shared a chain per member per round (``dispatch.share``). A member that is down or failing
    is a warning of its own, and the others are served."""
    nobody: list[str | None] = []  # the declaration unreadable: said, and the next tick reads it again
    names = contained("reading the fleet", _member_names, nobody)
    cap = settings.fleet_parallelism
    if not cap or names == [None]:
        return sum(contained(_ticking(name), lambda: dispatcher(name).tick(), 0) for name in names)  # noqa: B023
    with _one_tick_at_a_time() as mine:
        return _share_the_cap(names, cap) if mine else 0


@contextlib.contextmanager
def _one_tick_at_a_time() -> Iterator[bool]:
    """Whether this tick may start chains under the fleet's cap: two ticks counting at once
    would each see room for the same chains. A lock in the broker's Redis, given back when the
    tick ends and by itself if its worker dies; a tick that finds it taken does nothing."""
    client = redis.Redis.from_url(settings.broker_url)
    lock = client.lock(f"{settings.key_prefix}backfill:fleet-tick:{settings.queue}", timeout=60, blocking=False)
    try:
        mine = lock.acquire()
    except redis.RedisError:
        mine = False
    try:
        yield mine
    finally:
        if mine:
            with contextlib.suppress(redis.RedisError):
                lock.release()
        client.close()


def _share_the_cap(names: list[str | None], cap: int) -> int:
    plans: dict[str, list[Plan]] = {}
    in_flight = 0
    for name in names:
        assert name is not None
        found = contained(_ticking(name), lambda: (dispatcher(name).plans(), dispatcher(name).in_flight()), None)  # noqa: B023
        if found is not None:
            plans[name], busy = found
            in_flight += busy

    def send_one(name: str) -> bool:
        chosen = dispatcher(name)
        return contained(_ticking(name), lambda: any(chosen.dispatch(p, limit=1) for p in plans[name]), False)

    turn = int(time.time() / settings.tick_seconds)
    return share(list(plans), send_one, cap - in_flight, start=turn)


def _ticking(name: str | None) -> str:
    return f"tick {name}" if name else "tick"


def _member_names() -> list[str | None]:
    """The fleet's members, or [None]: the one database."""
    declared = members()
    return [None] if declared is None else list(declared)


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
    return App.from_settings(app=None, database_url=chosen.url, engine=fleet.engine_for(chosen))


def _dispose(**_: object) -> None:
    with _lock:
        for opened in _open.values():
            opened.store.engine.dispose()
        _open.clear()


@functools.cache
def metrics_app() -> App:
    """The main process's own App, for metrics: never the one its children use."""
    return App.from_settings(app=None, database_url=None)


_metrics_stores: dict[str, Store] = {}
"""The main process's stores of a fleet's members, for metrics: never the ones its children use."""


def _serve_metrics(**_: object) -> None:
    events.join_host_logging()
    if settings.metrics_port is None:
        return
    fleet_members = members()
    if fleet_members is None:
        serve(metrics_app().store, settings.metrics_port)
    else:
        _metrics_stores.update({name: Store(fleet.engine_for(m)) for name, m in fleet_members.items()})
        serve(_metrics_stores, settings.metrics_port)


def _forget_parent_connections(**_: object) -> None:
    """A child forked from the main process must not touch the main process's connections."""
    events.join_host_logging()
    if metrics_app.cache_info().currsize:
        metrics_app().store.engine.dispose(close=False)
    for store in _metrics_stores.values():
        store.engine.dispose(close=False)


worker_process_shutdown.connect(_dispose)
worker_init.connect(_serve_metrics)
worker_process_init.connect(_forget_parent_connections)
