"""Terminal output shared by the CLI and the demo."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from backfill import params as run_params
from backfill.app import RunDetails, action
from backfill.estimate import Estimate
from backfill.fleet_status import FleetStatus
from backfill.progress import RunProgress, duration
from backfill.status import RunStatus
from backfill.store import Run


class ProgressBar:
    """A rich progress bar fed by the runner's progress callback."""

    def __init__(self, name: str, *, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("rows  {task.fields[batches]} batches"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self.name = name
        self.enabled = enabled
        self.task = self.progress.add_task(name, total=None, batches=0)
        self.started = False
        self._said = OutageNotice(f"{name}: ", self.progress.console)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.progress.stop()

    def update(self, run: Run) -> None:
        # Shown from the run's first report on, so an error before the run starts stays one line.
        if not self.started:
            self.progress.start()
            self.started = True
        total = max(run.rows_total or 0, run.rows_done) or None
        if run.status is RunStatus.FINISHED:
            total = run.rows_done
        self.progress.update(self.task, completed=run.rows_done, total=total, batches=run.batches_done)

    def waiting(self, why: str | None) -> None:
        """An outage: said in the progress line while it lasts (without one: once, on stderr)."""
        if not self.enabled:
            self._said(why)
            return
        self.progress.update(self.task, description=self.name if why is None else f"{self.name} ({why})")


class OutageNotice:
    """Says "waiting for the database: ..." once per outage, on stderr, for a command without a
    progress line (``run --no-progress``, ``wait`` in a deploy script)."""

    def __init__(self, prefix: str = "", console: Console | None = None) -> None:
        self.prefix = prefix
        self.console = console or Console(stderr=True)
        self.waiting = False

    def __call__(self, why: str | None) -> None:
        if why is not None and not self.waiting:
            self.console.print(f"{self.prefix}{why}", highlight=False, soft_wrap=True)
        self.waiting = why is not None


def _bar(fraction: float | None, width: int = 16) -> str:
    if fraction is None:
        return "?"
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def status_table(runs: list[RunProgress]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("backfill", "run", "status", "progress", "rows", "batches ok/failed/running", "batch size",
                   "rate", "ETA", "elapsed", "last error"):  # fmt: skip
        table.add_column(column, overflow="fold" if column == "last error" else "ellipsis")
    for p in runs:
        run, data = p.run, p.to_json()
        total = (
            "?"
            if data["rows_total"] is None
            else f"{'~' if data['rows_total_is_estimate'] else ''}{data['rows_total']:,}"
        )
        percent = "" if data["percent"] is None else f" {data['percent']:.1f}%"
        status = run.status.value + (" (final pass)" if run.phase.value == "catchup" and run.status.is_active else "")
        if data["held_reason"]:
            status += f" ({'held' if run.status is RunStatus.RUNNING else 'why'}: {data['held_reason']})"
        elif data["rate_cap_wait_seconds"]:
            status += f" (rate cap {run.tuning.max_rows_per_second:g} rows/s)"
        elif p.stalled:
            status += " (stalled)"
        table.add_row(
            f"{run.name} ({run_params.shown(run.params)})" if run.params else run.name,
            str(run.id),
            status,
            _bar(p.fraction) + percent,
            f"{run.rows_done:,} / {total}",
            f"{run.batches_done} / {run.batches_failed} / {p.batches_running}",
            f"{p.batch_size:,}",
            f"{p.rate:,.0f}/s",
            duration(p.eta_seconds),
            duration(p.elapsed_seconds),
            (run.last_error or "")[:80],
        )
    return table


def fleet_table(found: FleetStatus) -> Table:
    """A line per member and run, each backfill's fleet total after its members (the total's
    ETA is its slowest member's), and the members that could not be read, with why."""
    table = Table(box=None, pad_edge=False)
    for column in ("member", "backfill", "run", "status", "progress", "rows", "failed batches", "rate", "ETA",
                   "last error"):  # fmt: skip
        # a member's or a backfill's name is never cut: it is what the operator types next
        table.add_column(column, overflow="fold" if column in ("member", "backfill", "last error") else "ellipsis")
    totals = {t.name: t for t in found.totals}
    for index, (member, p) in enumerate(found.rows):
        run, data = p.run, p.to_json()
        total = "?" if data["rows_total"] is None else f"{data['rows_total']:,}"
        percent = "" if data["percent"] is None else f" {data['percent']:.1f}%"
        status = run.status.value + (f" (held: {data['held_reason']})" if data["held_reason"] else "")
        table.add_row(
            member.name,
            run.name,
            str(run.id),
            status,
            _bar(p.fraction) + percent,
            f"{run.rows_done:,} / {total}",
            str(run.batches_failed),
            f"{p.rate:,.0f}/s",
            duration(p.eta_seconds),
            (run.last_error or "")[:80],
        )
        last_of_name = index + 1 == len(found.rows) or found.rows[index + 1][1].run.name != run.name
        if last_of_name:
            t = totals[run.name]
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(t.statuses.items()))
            table.add_row(
                f"[bold]all {t.members}[/bold]",
                f"[bold]{t.name}[/bold]",
                "",
                f"[bold]{t.finished} of {t.members} finished[/bold]"
                + (f" ({statuses})" if t.finished < t.members else ""),
                _bar(None if t.percent is None else t.percent / 100)
                + ("" if t.percent is None else f" {t.percent:.1f}%"),
                f"{t.rows_done:,} / {'?' if t.rows_total is None else f'{t.rows_total:,}'}",
                str(t.batches_failed),
                f"{t.rate:,.0f}/s",
                duration(t.eta_seconds),
                "",
                end_section=True,
            )
    for member, why in found.unreadable:
        table.add_row(member.name, "", "", "unreadable", "", "", "", "", "", why)
    return table


def details_view(details: RunDetails) -> Group:
    parts: list[RenderableType] = [
        status_table([details.progress]),
        f"final pass: {details.progress.final_pass_covers}",
        f"started by: {details.progress.run.started_by or 'unknown'}",
    ]
    if details.progress.run.params:
        parts.append(f"parameters: {run_params.shown(details.progress.run.params)}")
    throttle = details.progress.throttle_json
    if throttle:
        what = [
            f"until {throttle['until']}" if throttle["until"] else "",
            f"while {throttle['query']}" if throttle["query"] else "",
        ]
        why = f" ({throttle['reason']})" if throttle["reason"] else ""
        parts.append(f"throttled {' and '.join(w for w in what if w)}{why}")
    impact = details.progress.impact_json
    if impact:
        parts.append(
            f"impact budget {impact['budget']:.0%}: pace {impact['pace']:.0%}; {impact['decision'] or 'measuring the application'}"
        )
    if details.progress.stalled:
        parts.insert(1, f"stalled: {details.progress.stalled}")
    if details.failed:
        failed = Table("batch", "first key", "last key", "attempts", "error", title="failed batches", box=None)
        for b in details.failed:
            failed.add_row(str(b.seq), str(b.first_key), str(b.last_key), str(b.attempts), (b.error or "")[:160])
        parts.append(failed)
    if details.recent:
        recent = Table("batch", "rows", "duration", "worker", title="recent batches", box=None)
        for b in details.recent:
            recent.add_row(str(b.seq), str(b.rows), f"{b.duration_ms or 0:.1f} ms", b.worker or "")
        parts.append(recent)
    if details.actions:
        actions = Table("at", "action", "by", title="operator actions", box=None)
        for e in details.actions:
            actions.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), action(e), e.worker or "")
        parts.append(actions)
    if details.errors:
        errors = Table("at", "batch", "became", "error", title="recent errors", box=None)
        for e in details.errors:
            errors.add_row(
                e.at.strftime("%H:%M:%S"), "" if e.seq is None else str(e.seq), e.after, (e.error or "")[:160]
            )
        parts.append(errors)
    return Group(*parts)


def estimate_view(estimate: Estimate) -> str:
    data = estimate.to_json()
    rows = f"{'~' if estimate.rows_is_estimate else ''}{estimate.rows:,}"
    samples = ", ".join(f"{ms:.1f} ms" for ms in estimate.sample_ms) or "none (empty table)"
    return (
        f"{estimate.name}: {rows} rows in {estimate.batches:,} batches of {estimate.tuning.batch_size:,}\n"
        f"sampled batches (rolled back): {samples}\n"
        f"expected: {data['batch_ms']} ms per batch, about {duration(estimate.seconds)} of work "
        f"at parallelism {estimate.tuning.parallelism} (scheduling overhead not included)"
    )
