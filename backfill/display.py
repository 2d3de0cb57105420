"""Terminal output shared by the CLI and the demo."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

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
        self.task = self.progress.add_task(name, total=None, batches=0)

        self.started = False

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
