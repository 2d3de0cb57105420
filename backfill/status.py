"""The status sets of runs and batches, one Enum each."""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    """Recorded (by ``start`` or a migration) but not yet picked up: its end is not fixed yet."""
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_active(self) -> bool:
        """Active runs hold their backfill's name: at most one exists per name."""
        return self in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED)

    @property
    def is_over(self) -> bool:
        return not self.is_active


class BatchStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SPLIT = "split"
    """Failed, then replaced by smaller batches over the same keys (``backfill retry --split``)."""


class Phase(enum.StrEnum):
    """Which sweep of the key space a batch belongs to.

    ``main`` walks the key range fixed at the run's start; ``catchup`` is the final pass over
    rows that still match the ``pending`` predicate (or, without one, keys past the end).
    """

    MAIN = "main"
    CATCHUP = "catchup"


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    """Worth retrying as it is: deadlock, serialization failure, lock timeout, lost connection."""
    TIMEOUT = "timeout"
    """The batch ran past its statement timeout: retrying the same batch would likely fail again."""
    PERMANENT = "permanent"
