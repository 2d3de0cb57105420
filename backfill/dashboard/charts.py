"""A run's recent batches as small SVG charts, drawn on the server: no script, no library."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup

from backfill.store import BatchRecord

WIDTH, HEIGHT, PAD = 640, 140, 28


def _polyline(points: Sequence[tuple[float, float]], colour: str) -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>'


def line_chart(title: str, unit: str, series: Sequence[tuple[datetime, float]], colour: str) -> Markup:
    """One series over time; only numbers and fixed text reach the SVG."""
    if len(series) < 2:
        return Markup(f'<p class="muted">{title}: not enough batches yet</p>')
    start, end = series[0][0], series[-1][0]
    span = max((end - start).total_seconds(), 1e-6)
    top = max(v for _, v in series) or 1.0
    points = [
        (PAD + (at - start).total_seconds() / span * (WIDTH - 2 * PAD), HEIGHT - PAD - v / top * (HEIGHT - 2 * PAD))
        for at, v in series
    ]
    return Markup(
        f'<svg class="chart" role="img" aria-label="{title}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}"><text x="{PAD}" y="16" class="chart-title">{title}</text>'
        f'<text x="{WIDTH - PAD}" y="16" text-anchor="end" class="chart-axis">max {top:,.0f} {unit}</text>'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="chart-axis-line"/>'
        f"{_polyline(points, colour)}"
        f'<text x="{PAD}" y="{HEIGHT - 8}" class="chart-axis">{start:%H:%M:%S}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" text-anchor="end" class="chart-axis">{end:%H:%M:%S}</text></svg>'
    )


def batch_charts(batches: Sequence[BatchRecord]) -> list[Markup]:
    """Batch durations and rows/s over time, oldest first, from the run's recent batches."""
    done = sorted((b for b in batches if b.finished_at and b.duration_ms), key=lambda b: b.finished_at)  # type: ignore[arg-type,return-value]
    durations = [(b.finished_at, float(b.duration_ms)) for b in done]  # type: ignore[arg-type]
    rates = [(b.finished_at, b.rows / (float(b.duration_ms) / 1000)) for b in done]  # type: ignore[arg-type,operator]
    return [
        line_chart("batch duration", "ms", durations, "#2a6fdb"),  # type: ignore[arg-type]
        line_chart("rows per second, per batch", "rows/s", rates, "#1e9e5a"),  # type: ignore[arg-type]
    ]
