"""State changes of runs and batches, as structured log lines.

The store keeps every change in ``backfill_events`` (so a failed batch can be diagnosed long
after) and hands it here once its transaction has committed: a line is never logged for a
change that was rolled back. ``BACKFILL_LOG_FORMAT=json`` makes each line one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from datetime import datetime

from backfill import environment
from backfill.status import BatchStatus, RunStatus

LOG_FORMAT_ENV = "BACKFILL_LOG_FORMAT"
LOG_LEVEL_ENV = "BACKFILL_LOG_LEVEL"

logger = logging.getLogger("backfill.events")


@dataclass(frozen=True, kw_only=True)
class Event:
    """One move of a run or a batch (``batch_id`` set), by whom (``worker``: a worker, or an
    operator such as ``cli:ann@host`` or ``dashboard``), and why: an ``error``, or a ``note`` on
    what is no error (a tune, a hold, the final pass beginning), which nothing may alert on."""

    backfill: str
    run_id: int
    after: RunStatus | BatchStatus
    before: RunStatus | BatchStatus | None = None
    batch_id: int | None = None
    seq: int | None = None
    worker: str | None = None
    error: str | None = None
    note: str | None = None

    @property
    def subject(self) -> str:
        return "batch" if self.batch_id is not None else "run"

    def row(self) -> dict[str, object]:
        """Its ``backfill_events`` row, but for the time (the database's, set by the store)."""
        return {
            "run_id": self.run_id,
            "batch_id": self.batch_id,
            "before": None if self.before is None else str(self.before),
            "after": str(self.after),
            "worker": self.worker,
            "error": self.error,
            "note": self.note,
        }


def log(events: list[Event]) -> None:
    for event in events:
        level = logging.WARNING if event.after == "failed" or event.error else logging.INFO
        if event.subject == "batch" and level == logging.INFO:
            level = logging.DEBUG if event.after in ("pending", "running") else logging.INFO
        if logger.isEnabledFor(level):
            fields = {k: v for k, v in asdict(event).items() if v is not None}
            # The fields in the line itself, so any handler shows them (Celery's, an app's own).
            said = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}" for k, v in fields.items())
            logger.log(
                level,
                "%s %s -> %s %s",
                event.subject,
                event.before or "new",
                event.after,
                said,
                extra={"fields": fields},
            )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname.lower()} {record.getMessage()}"
        return f"{line}\n{self.formatException(record.exc_info)}" if record.exc_info else line


def log_format() -> str:
    return environment.choice(LOG_FORMAT_ENV, "text", ("text", "json"))


def log_level(default: str) -> str:
    return environment.choice(LOG_LEVEL_ENV, default.lower(), LEVELS)


LEVELS = ("debug", "info", "warning", "error", "critical")


def join_host_logging() -> None:
    """Inside a process that sets up logging itself (a Celery worker or beat): the library's
    lines go through its handlers — one format, one timestamp, its ``--loglevel`` — rather than
    through a handler of our own on a stderr Celery has redirected into its log at WARNING.
    ``BACKFILL_LOG_FORMAT=json`` keeps a JSON handler of its own, on the real stderr."""
    root = logging.getLogger("backfill")
    if log_format() == "json":
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
        root.propagate = False
    else:
        root.handlers[:] = []
        root.propagate = True
    root.setLevel(log_level("").upper() or logging.NOTSET)


def configure(default_level: str) -> None:
    """Send the library's log lines to stderr: JSON or text per BACKFILL_LOG_FORMAT, at
    BACKFILL_LOG_LEVEL, else ``default_level`` (quiet for the CLI, whose summary says what
    failed; INFO for workers)."""
    handler = logging.StreamHandler(sys.stderr)
    json_format = log_format() == "json"
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root = logging.getLogger("backfill")
    root.handlers[:] = [handler]
    root.setLevel(log_level(default_level).upper())
    root.propagate = False
