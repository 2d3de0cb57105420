"""Reading ``BACKFILL_*`` variables: unset or empty means the default, and a value a variable
cannot take is one ``ConfigurationError`` naming the variable and what it takes — never a
``ValueError`` deep in a worker, never a NaN or a month-long tick."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from backfill.errors import ConfigurationError

MAX_SECONDS = 30 * 86_400.0


def seconds(
    name: str, default: float, *, zero: bool = True, most: float = MAX_SECONDS, env: Mapping[str, str] = os.environ
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero) or value > most:
        least = "0 or more" if zero else "more than 0"
        raise ConfigurationError(f"{name} must be a number of seconds, {least}, at most {_span(most)}: got {raw!r}")
    return value


def whole(name: str, default: int, *, least: int, most: int, what: str, env: Mapping[str, str] = os.environ) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not least <= int(raw) <= most:
        raise ConfigurationError(f"{name} must be {what} from {least} to {most}: got {raw!r}")
    return int(raw)


def choice(name: str, default: str, choices: tuple[str, ...], env: Mapping[str, str] = os.environ) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}: got {raw!r}")
    return raw


def _span(most: float) -> str:
    return "30 days" if most == MAX_SECONDS else f"{most:g} seconds"
