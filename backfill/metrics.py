"""Prometheus metrics, read from the checkpoint store at scrape time.

Every worker, runner and dashboard reports the same figures because they all come from the
store: a scrape of any ``backfill metrics`` endpoint, or of any worker's, describes every run,
and nothing is lost when the process that did the work is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import DBAPIError

from backfill.progress import RunProgress, measure
from backfill.status import BatchStatus, RunStatus
from backfill.store import Run, Store

logger = logging.getLogger(__name__)

BUCKETS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StoreCollector(Collector):
    def __init__(self, store: Store | None = None, *, members: Mapping[str, Store] | None = None) -> None:
        """One store, or a fleet's (``members``: by member name; every metric then carries a
        ``member`` label, and ``backfill_member_up`` says which members answered the scrape)."""
        self.sources: list[tuple[str | None, Store]]
        if store is not None and members is None:
            self.sources = [(None, store)]
        elif members is not None and store is None:
            self.sources = list(members.items())
        else:
            raise ValueError("give one store, or the members' stores")
        self.fleet = members is not None

    def collect(self) -> Iterator[Metric]:
        labels = ["member", "backfill", "run"] if self.fleet else ["backfill", "run"]
        up = GaugeMetricFamily("backfill_member_up", "1 if the fleet member's checkpoints answered.", labels=["member"])
        rows = CounterMetricFamily("backfill_rows_processed", "Rows in the batches that succeeded.", labels=labels)
        affected = CounterMetricFamily("backfill_rows_affected", "Rows the work reported changing.", labels=labels)
        batches = GaugeMetricFamily("backfill_batches", "Batches by status.", labels=[*labels, "status"])
        size = GaugeMetricFamily("backfill_batch_size", "Keys per batch planned from now on.", labels=labels)
        parallelism = GaugeMetricFamily("backfill_parallelism", "Batches allowed in flight.", labels=labels)
        rate = GaugeMetricFamily("backfill_rows_per_second", "Rows per second over the last minute.", labels=labels)
        eta = GaugeMetricFamily("backfill_eta_seconds", "Estimated seconds to the end of the run.", labels=labels)
        total = GaugeMetricFamily("backfill_rows_total", "Rows the run covers (maybe an estimate).", labels=labels)
        status = GaugeMetricFamily("backfill_run_status", "1 for the run's current status.", labels=[*labels, "status"])
        held = GaugeMetricFamily(
            "backfill_run_held", "1 while the run is held (an unhealthy database, a check of yours).", labels=labels
        )
        pace = GaugeMetricFamily(
            "backfill_run_pace",
            "Share of time the run's workers may spend in batches (1: all; below: its impact budget slows it).",
            labels=labels,
        )
        durations = HistogramMetricFamily(
            "backfill_batch_duration_seconds", "Time of the work of succeeded batches.", labels=labels
        )
        families = (rows, affected, batches, size, parallelism, rate, eta, total, status, held, pace, durations)
        for member, store in self.sources:
            try:  # all of a member's figures read first: one that stops answering midway is down, not half-shown
                found = [
                    (run, measure(store, run), store.batch_counts(run.id), self._durations(store, run.id))
                    for run in store.list_runs()
                ]
            except DBAPIError:
                if member is None:
                    raise
                logger.warning("metrics: fleet member %s did not answer", member)
                up.add_metric([member], 0.0)
                continue
            if member is not None:
                up.add_metric([member], 1.0)
            for run, progress, counts, (buckets, seconds) in found:
                values = ([member] if member is not None else []) + [run.name, str(run.id)]
                self._add(run, progress, counts, values, families)
                families[-1].add_metric(values, buckets=buckets, sum_value=seconds)
        yield from (*families, *([up] if self.fleet else []))

    @staticmethod
    def _add(
        run: Run, progress: RunProgress, counts: dict[BatchStatus, int], values: list[str], families: tuple[Any, ...]
    ) -> None:
        rows, affected, batches, size, parallelism, rate, eta, total, status, held, pace, _ = families
        rows.add_metric(values, run.rows_done)
        affected.add_metric(values, run.rows_affected)
        counts[BatchStatus.FAILED] = run.batches_failed
        for batch_status in BatchStatus:
            batches.add_metric([*values, batch_status.value], counts[batch_status])
        size.add_metric(values, progress.batch_size)
        parallelism.add_metric(values, run.tuning.parallelism)
        rate.add_metric(values, progress.rate)
        if progress.eta_seconds is not None:
            eta.add_metric(values, progress.eta_seconds)
        if progress.rows_total is not None:
            total.add_metric(values, progress.rows_total)
        for run_status in RunStatus:
            status.add_metric([*values, run_status.value], 1.0 if run.status is run_status else 0.0)
        held.add_metric(values, 1.0 if run.status is RunStatus.RUNNING and run.held_reason else 0.0)
        pace.add_metric(values, run.pace_in_force)

    @staticmethod
    def _durations(store: Store, run_id: int) -> tuple[list[tuple[str, float]], float]:
        counts, count, seconds = store.duration_counts(run_id, BUCKETS_SECONDS)
        buckets = [(str(bound), float(n)) for bound, n in zip(BUCKETS_SECONDS, counts, strict=True)]
        buckets.append(("+Inf", float(count)))
        return buckets, seconds


def serve(store: Store | Mapping[str, Store], port: int, addr: str = "0.0.0.0") -> None:
    """Expose the store's metrics (or a fleet's: its members' stores by name) over HTTP at
    /metrics, in a background thread."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(StoreCollector(store) if isinstance(store, Store) else StoreCollector(members=store))
    start_http_server(port, addr=addr, registry=registry)
