"""Prometheus metrics, read from the checkpoint store at scrape time.

Every worker, runner and dashboard reports the same figures because they all come from the
store: a scrape of any ``backfill metrics`` endpoint, or of any worker's, describes every run,
and nothing is lost when the process that did the work is gone.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from backfill.progress import measure
from backfill.status import BatchStatus, RunStatus
from backfill.store import Store

BUCKETS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        labels = ["backfill", "run"]
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
        for run in self.store.list_runs():
            progress = measure(self.store, run)
            values = [run.name, str(run.id)]
            rows.add_metric(values, run.rows_done)
            affected.add_metric(values, run.rows_affected)
            counts = self.store.batch_counts(run.id)
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
            buckets, seconds = self._durations(run.id)
            durations.add_metric(values, buckets=buckets, sum_value=seconds)
        yield from (rows, affected, batches, size, parallelism, rate, eta, total, status, held, pace, durations)

    def _durations(self, run_id: int) -> tuple[list[tuple[str, float]], float]:
        counts, count, seconds = self.store.duration_counts(run_id, BUCKETS_SECONDS)
        buckets = [(str(bound), float(n)) for bound, n in zip(BUCKETS_SECONDS, counts, strict=True)]
        buckets.append(("+Inf", float(count)))
        return buckets, seconds


def serve(store: Store, port: int, addr: str = "0.0.0.0") -> None:
    """Expose the store's metrics over HTTP at /metrics, in a background thread."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    start_http_server(port, addr=addr, registry=registry)
