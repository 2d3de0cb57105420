"""A health check that asks Prometheus: the application's own service level, as GitLab's
batched migrations read the database's apdex before every batch.

    from backfill import Backfill, PrometheusCheck

    slo = PrometheusCheck(
        "http://prometheus:9090",
        'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))',
        above=0.5,  # hold while the application's p99 is over 500 ms
        name="app p99",
    )
    orders = Backfill(name="orders", table="orders", key="id", work=..., health_checks=(slo,))

The query must come back as one number (a scalar, or a vector whose largest sample is taken).
While it is over ``above`` (or under ``below``: an apdex, a success ratio) the run is held with
the value in its reason. Prometheus unreachable, or a query that returns nothing, holds the run
too: the check cannot say the application is well.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection


@dataclass(frozen=True)
class PrometheusCheck:
    url: str
    """Prometheus's base URL, e.g. ``http://prometheus:9090``."""
    query: str
    above: float | None = None
    below: float | None = None
    name: str = "prometheus"
    timeout: float = 2.0

    def __post_init__(self) -> None:
        from backfill.errors import DefinitionError

        if self.above is None and self.below is None:
            raise DefinitionError(f"PrometheusCheck {self.name!r}: give above= or below= (the threshold)")
        if not self.url.startswith(("http://", "https://")):
            raise DefinitionError(f"PrometheusCheck {self.name!r}: the URL must start with http:// or https://")

    @property
    def __name__(self) -> str:
        return self.name

    def value(self) -> float:
        """The query's value now; raises OSError or ValueError when there is none to read."""
        import urllib.parse  # here: every command imports the package, few ask Prometheus
        import urllib.request

        address = f"{self.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': self.query})}"
        with urllib.request.urlopen(address, timeout=self.timeout) as response:
            body: dict[str, Any] = json.loads(response.read())
        if body.get("status") != "success":
            raise ValueError(body.get("error") or "the query failed")
        data = body["data"]
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        if data["resultType"] == "vector" and data["result"]:
            return max(float(sample["value"][1]) for sample in data["result"])
        raise ValueError("the query returned no sample")

    def __call__(self, connection: Connection) -> str | None:
        try:
            value = self.value()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"cannot read {self.url} ({exc}): holding until it answers"
        if math.isnan(value):
            return "the query's value is NaN: holding until it is a number"
        if self.above is not None and value > self.above:
            return f"{value:g} is above {self.above:g}"
        if self.below is not None and value < self.below:
            return f"{value:g} is below {self.below:g}"
        return None
