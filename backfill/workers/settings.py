"""Worker settings, all from the environment, so one image serves every deployment."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backfill import environment
from backfill.errors import ConfigurationError

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")
"""What kombu's Redis transport accepts: the key prefix and the visibility timeout are Redis's."""


@dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "backfill"
    key_prefix: str = ""
    """Prefix for every Redis key the broker uses, so several deployments can share one Redis."""
    tick_seconds: float = 2.0
    """How often the scheduler (Celery beat) sends the tick that plans and re-sends batches."""
    chain_seconds: float = 30.0
    """A worker that finished a batch takes the run's next one itself, for this long, before
    handing back to the broker."""
    redispatch_seconds: float = 10.0
    """A pending batch whose message is older than this is sent again: the message may be lost,
    or held unacknowledged by a worker that died (Redis gives those back only after the
    visibility timeout). A message sent twice costs a refused claim; one lost costs this long."""
    metrics_port: int | None = None
    """When set, the worker's main process serves Prometheus metrics on this port."""
    fleet_parallelism: int = 0
    """Chains in flight over all of a fleet's members at once (0: each run's parallelism alone
    bounds them). Shared a chain per member per round, from a member that turns each tick."""
    visibility_timeout: float = 3600.0
    """Redis hands an unacknowledged message to another worker after this long: far longer than
    any batch (statement timeout x attempts), so a live worker's batch is never re-delivered."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """The settings from ``BACKFILL_*`` variables (unset or empty: the default). A value
        that is not what its variable takes is a ``ConfigurationError`` naming the variable,
        so ``backfill worker`` says which one in a line rather than failing in Celery."""

        def seconds(name: str, default: float, *, zero: bool = True) -> float:
            return environment.seconds(name, default, zero=zero, env=env)

        def broker(name: str, default: str) -> str:
            raw = env.get(name, "").strip() or default
            scheme = raw.partition("://")[0].lower() if "://" in raw else ""
            if scheme not in REDIS_SCHEMES:
                # Only the scheme is shown: the rest of the URL may hold a password.
                raise ConfigurationError(
                    f"{name} must be a Redis URL (redis://host:6379/0, rediss:// for TLS, redis+socket:// or "
                    f"sentinel://): got {'scheme ' + repr(scheme) if scheme else 'no scheme'}"
                )
            return raw

        def port(name: str) -> int | None:
            return environment.whole(name, 0, least=1, most=65535, what="a port number", env=env) or None

        defaults = cls()
        return cls(
            broker_url=broker("BACKFILL_BROKER_URL", defaults.broker_url),
            queue=env.get("BACKFILL_QUEUE") or defaults.queue,
            key_prefix=env.get("BACKFILL_REDIS_PREFIX", defaults.key_prefix),
            tick_seconds=seconds("BACKFILL_TICK_SECONDS", defaults.tick_seconds, zero=False),
            redispatch_seconds=seconds("BACKFILL_REDISPATCH_SECONDS", defaults.redispatch_seconds, zero=False),
            chain_seconds=seconds("BACKFILL_CHAIN_SECONDS", defaults.chain_seconds),
            visibility_timeout=seconds("BACKFILL_VISIBILITY_TIMEOUT", defaults.visibility_timeout, zero=False),
            metrics_port=port("BACKFILL_METRICS_PORT"),
            fleet_parallelism=environment.whole(
                "BACKFILL_FLEET_PARALLELISM", 0, least=0, most=100_000, what="a whole number", env=env
            ),
        )

    @property
    def deployment_id(self) -> str:
        """A short name for this deployment (broker, queue, key prefix): two deployments on one
        host keep their beat schedules apart."""
        return hashlib.sha256(f"{self.broker_url}|{self.queue}|{self.key_prefix}".encode()).hexdigest()[:12]

    def celery_config(self) -> dict[str, Any]:
        transport: dict[str, Any] = {"visibility_timeout": self.visibility_timeout}
        if self.key_prefix:
            transport["global_keyprefix"] = self.key_prefix
        return {
            "broker_url": self.broker_url,
            "broker_transport_options": transport,
            "broker_connection_retry_on_startup": True,
            # At-least-once delivery; the claim in the store makes the effect exactly-once.
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "task_default_queue": self.queue,
            "task_ignore_result": True,
            "beat_schedule": {
                "backfill-tick": {
                    "task": "backfill.tick",
                    "schedule": self.tick_seconds,
                    # A tick that waited longer than the next one is worthless.
                    "options": {"expires": max(1.0, self.tick_seconds)},
                }
            },
        }
