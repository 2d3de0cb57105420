"""The ``backfill`` command: parse, call one ``App`` method, print.

Exit codes: 0 success, 1 a run failed or was cancelled, or the environment failed (the database
unreachable or lost, a permission missing, a timeout), 2 a usage error, 3 ``wait`` timed out,
130 interrupted. A user's mistake or a fault of the environment is one line on stderr
(``backfill.boundary``); only a bug prints a traceback.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table

from backfill import events, fleet, fleet_status
from backfill import params as run_params
from backfill.app import App
from backfill.boundary import Cause, bug_report_line, judge, one_line
from backfill.database import DATABASE_URL_ENV, command_timeout
from backfill.display import OutageNotice, ProgressBar, details_view, estimate_view, fleet_table, status_table
from backfill.errors import ConfigurationError, DefinitionError, RunFailedError, RunStateError
from backfill.fleet import Member
from backfill.progress import RunProgress, measure
from backfill.registry import APP_ENV, load
from backfill.status import RunStatus
from backfill.store import Store

F = TypeVar("F", bound=Callable[..., Any])

PIPED_WIDTH = 400
"""Columns for output that is not a terminal (a deploy log, ``grep``): rich's default of 80 would
cut a run's name and status to ``backfi… pendi…``. ``COLUMNS`` still wins."""
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--app", "app_module", envvar=APP_ENV, metavar="MODULE", help=f"Module with the definitions [env {APP_ENV}]."
)
@click.option(
    "--database-url", envvar=DATABASE_URL_ENV, metavar="URL", help=f"Application database [env {DATABASE_URL_ENV}]."
)
@click.option(
    "--fleet",
    envvar=fleet.FLEET_ENV,
    metavar="SPEC",
    help="Many databases or tenant schemas: a TOML file, :callable in the app module, or NAME=URL pairs "
    f"[env {fleet.FLEET_ENV}].",
)
@click.pass_context
def main(ctx: click.Context, app_module: str | None, database_url: str | None, fleet: str | None) -> None:
    """Resumable, batched data migrations for large tables."""
    events.configure("ERROR")
    ctx.obj = {"app": app_module, "database_url": database_url, "fleet": fleet}


def _app(ctx: click.Context, needed_by: str | None = None, *, short: bool = True, member: Member | None = None) -> App:
    """The app over the database (or over one ``member`` of a fleet); ``needed_by`` names a
    command that needs the definitions too (every other command works with the database URL
    alone). A ``short`` command's statements are bounded by ``BACKFILL_COMMAND_TIMEOUT``;
    batches and servers set their own limits."""
    time_limit = command_timeout() if short else None
    return App.from_settings(
        app=ctx.obj["app"],
        database_url=member.url if member is not None else ctx.obj["database_url"],
        needed_by=needed_by,
        time_limit=time_limit,
        engine=fleet.engine_for(member, time_limit) if member is not None else None,
    )


MEMBER = click.option(
    "--member",
    "members",
    multiple=True,
    metavar="NAME",
    help="Act on these fleet members only: a name or a glob (shard0*), repeatable [default: all].",
)


def _members(ctx: click.Context, patterns: Sequence[str]) -> list[Member | None]:
    """What a command acts on: the fleet's members ``--member`` selects, or [None]: the one
    database of a backfill without a fleet."""
    members = fleet.load(ctx.obj["fleet"], ctx.obj["app"] or os.environ.get(APP_ENV))
    if members is None:
        if patterns:
            raise click.UsageError(f"--member needs a fleet: declare it with --fleet or {fleet.FLEET_ENV}")
        return [None]
    return list(fleet.select(members, patterns))


def _each(
    ctx: click.Context,
    patterns: Sequence[str],
    action: Callable[[Member | None], None],
    *,
    where_it_applies: bool = False,
) -> None:
    """``action`` for each member a command acts on. Without a fleet, once, as ever. In a fleet
    a member's mistake or outage is its own: one line with its name, the other members go on,
    and the command leaves by the worst exit code once all were tried. ``where_it_applies``: an
    operator's action over the fleet (pause, retry...) skips, in a line, the members whose run
    is not in a state it applies to (finished already, nothing failed), and is a mistake only
    when it applies to none."""
    targets = _members(ctx, patterns)
    if targets == [None]:
        action(None)
        return
    worst = 0
    skipped: list[str] = []
    for member in targets:
        assert member is not None
        try:
            action(member)
        except SystemExit as exc:
            if exc.code == 130:  # interrupted: the operator stops the whole command
                raise
            worst = max(worst, exc.code if isinstance(exc.code, int) else 1)
        except click.ClickException:
            raise
        except Exception as exc:
            if where_it_applies and isinstance(exc, RunStateError):
                click.echo(f"{member.name}: skipped: {one_line(str(exc))}")
                skipped.append(str(exc))
                continue
            verdict = judge(exc)
            if verdict.cause is Cause.BUG:
                raise
            click.echo(f"error: {member.name}: {verdict.message}", err=True)
            worst = max(worst, verdict.exit_code)
    if skipped and len(skipped) == len(targets):
        raise RunStateError(f"on no member of the fleet: {skipped[0]}")
    if worst:
        sys.exit(worst)


def _on(member: Member | None) -> str:
    """A line's prefix: the member it is about, in a fleet."""
    return f"{member.name}: " if member is not None else ""


def _actor() -> str:
    """Who an operator's action is recorded as: the command, the user and the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def tuning_options(command: F) -> F:
    for option in reversed(
        [
            click.option("--batch-size", type=click.IntRange(min=1), help="Rows per batch."),
            click.option("--parallelism", type=click.IntRange(min=1), help="Batches in flight at once."),
            click.option("--max-attempts", type=click.IntRange(min=1), help="Attempts per batch before it fails."),
            click.option(
                "--statement-timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per batch statement."
            ),
            click.option(
                "--lock-timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds a batch waits for a lock."
            ),
            click.option(
                "--target-batch-seconds",
                type=click.FloatRange(min=0),
                help="Batch duration the batch size adapts to (0: fixed size).",
            ),
            click.option("--min-batch-size", type=click.IntRange(min=1), help="Smallest adapted batch size."),
            click.option("--max-batch-size", type=click.IntRange(min=1), help="Largest adapted batch size."),
            click.option("--max-rows-per-second", type=click.FloatRange(min=0), help="Rate cap for the run (0: none)."),
            click.option("--pause-seconds", type=click.FloatRange(min=0), help="Sleep after each batch."),
            click.option(
                "--nice-ratio", type=click.FloatRange(min=0), help="Sleep after each batch, times its duration."
            ),
            click.option(
                "--impact-budget",
                type=click.FloatRange(min=0, max=0.9),
                help="What the run may cost the application: 0.1 is at most 10%% slower (0: off).",
            ),
            click.option(
                "--max-replica-lag", type=click.FloatRange(min=0), help="Hold while a replica lags more (seconds)."
            ),
            click.option(
                "--max-transaction-age",
                type=click.FloatRange(min=0),
                help="Hold while a transaction is open longer (seconds).",
            ),
            click.option(
                "--max-connections-used",
                type=click.FloatRange(min=0, max=1),
                help="Hold while more of the connections are active.",
            ),
            click.option(
                "--max-load", type=click.FloatRange(min=0), help="Hold while more sessions are running (0: off)."
            ),
            click.option(
                "--critical-load",
                type=click.FloatRange(min=0),
                help="Pause the run while more sessions are running (0: off).",
            ),
            click.option(
                "--hold-during-vacuum/--no-hold-during-vacuum",
                default=None,
                help="Hold while a VACUUM works on the table (PostgreSQL).",
            ),
        ]
    ):
        command = option(command)
    return command


@main.command("list")
@click.pass_context
def list_command(ctx: click.Context) -> None:
    """List the backfills the app defines."""
    registry = load(ctx.obj["app"], needed_by="backfill list")
    table = Table("name", "table", "key", "batch size", "parallelism", "parameters", "description", box=None)
    for name in registry:
        d = registry.require(name)
        where = f"{d.schema}.{d.table}" if d.schema else d.table
        table.add_row(
            name,
            where,
            ", ".join(d.key),
            str(d.tuning.batch_size),
            str(d.tuning.parallelism),
            ", ".join(p.describe() for p in d.parameters),
            d.description,
        )
    console.print(table)


@main.command("init-db")
@MEMBER
@click.pass_context
def init_db(ctx: click.Context, members: tuple[str, ...]) -> None:
    """Create the checkpoint tables (backfill_runs, backfill_batches, backfill_events)."""

    def init(member: Member | None) -> None:
        _app(ctx, member=member).init_db()
        click.echo(f"{_on(member)}checkpoint tables ready")

    _each(ctx, members, init)


BY = click.option("--by", metavar="TEXT", help="Who starts the run, kept on it (default: cli:user@host).")


def _assignments(ctx: click.Context, param: click.Parameter, pairs: tuple[str, ...]) -> dict[str, str]:
    try:
        return run_params.parse_assignments(pairs)
    except DefinitionError as exc:
        raise click.BadParameter(str(exc)) from None


PARAM = click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_assignments,
    help="A run parameter the backfill declares (repeat for each).",
)


@main.command()
@click.argument("name")
@BY
@PARAM
@MEMBER
@tuning_options
@click.pass_context
def start(
    ctx: click.Context, /, name: str, by: str | None, params: dict[str, str], members: tuple[str, ...], **overrides: Any
) -> None:
    """Start a run for workers to execute."""
    load(ctx.obj["app"], needed_by="backfill start").require(name)  # a name no member knows: said once

    def start_on(member: Member | None) -> None:
        run = _app(ctx, "backfill start", member=member).start(
            name, started_by=by or _actor(), params=params, **overrides
        )
        with_params = f" with {run_params.shown(run.params)}" if run.params else ""
        click.echo(
            f"{_on(member)}started {name}: run {run.id}{with_params}, {run.rows_total} rows"
            f"{' (estimate)' if run.rows_total_estimated else ''}"
        )

    _each(ctx, members, start_on)


@main.command()
@click.argument("name")
@click.option("--threads", type=click.IntRange(min=1), help="Threads running batches (default: parallelism).")
@click.option("--progress/--no-progress", default=True, help="Show a live progress bar.")
@BY
@PARAM
@MEMBER
@tuning_options
@click.pass_context
def run(
    ctx: click.Context,
    /,
    name: str,
    threads: int | None,
    progress: bool,
    by: str | None,
    params: dict[str, str],
    members: tuple[str, ...],
    **overrides: Any,
) -> None:
    """Run a backfill to completion in this process (continues its active run); in a fleet,
    on each member in turn."""
    load(ctx.obj["app"], needed_by="backfill run").require(name)

    def run_on(member: Member | None) -> None:
        app = _app(ctx, "backfill run", short=False, member=member)
        with ProgressBar(f"{_on(member)}{name}", enabled=progress) as bar:
            try:
                final = app.run(
                    name,
                    threads=threads,
                    on_progress=bar.update,
                    on_wait=bar.waiting,
                    started_by=by or _actor(),
                    params=params,
                    **overrides,
                )
            except KeyboardInterrupt:
                click.echo(f"interrupted: `backfill run {name}` continues from the last checkpoint", err=True)
                sys.exit(130)
        report_end(measure(app.store, final), member)

    _each(ctx, members, run_on)


def report_end(progress: RunProgress, member: Member | None = None) -> None:
    run = progress.run
    summary = (
        f"{run.name}: run {run.id} {run.status}: {run.rows_done} rows in {run.batches_done} batches, "
        f"{progress.elapsed_seconds or 0:.1f}s, {progress.rate:,.0f} rows/s"
    )
    if run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise RunFailedError(
            f"{summary}; {run.batches_failed} failed batch(es); last error: {run.last_error}; "
            f"fix it, then `backfill retry {run.name}`"
            if run.status is RunStatus.FAILED
            else summary
        )
    click.echo(f"{_on(member)}{summary}")


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@MEMBER
@click.pass_context
def status(ctx: click.Context, /, name: str | None, as_json: bool, members: tuple[str, ...]) -> None:
    """Show runs: progress, rate, ETA, errors; with NAME, its failed and recent batches too. In a
    fleet: a line per member and run, and each backfill's total."""
    targets = _members(ctx, members)
    if targets != [None]:
        _fleet_status(ctx, [m for m in targets if m is not None], name, as_json)
        return
    app = _app(ctx)
    if name is not None:
        details = app.details(name)
        if as_json:
            click.echo(json.dumps(details.to_json(), indent=2))
        else:
            console.print(details_view(details))
        return
    runs = app.progress()
    if as_json:
        click.echo(json.dumps([p.to_json() for p in runs], indent=2))
    elif not runs:
        click.echo("no runs yet")
    else:
        console.print(status_table(runs))


def _fleet_status(ctx: click.Context, members: list[Member], name: str | None, as_json: bool) -> None:
    """Every member's runs (the newest of each backfill), and where a member could not be read,
    why: a member down is a line of the table, not the end of the command (exit 1 after it)."""
    found = fleet_status.gather(members, lambda member: _app(ctx, member=member), name)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
    elif not found.rows and not found.unreadable:
        click.echo("no runs yet")
    else:
        console.print(fleet_table(found))
    if found.unreadable:
        sys.exit(1)


@main.command()
@click.argument("name", required=False)
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Seconds between refreshes."
)
@MEMBER
@click.pass_context
def watch(ctx: click.Context, /, name: str | None, interval: float, members: tuple[str, ...]) -> None:
    """A live view of one run (until it ends) or of all runs (until Ctrl-C); in a fleet, the
    fleet's table (with NAME: until its run has ended on every member)."""
    targets = [m for m in _members(ctx, members) if m is not None]

    def fleet_view() -> tuple[RenderableType, bool]:
        found = fleet_status.gather(targets, lambda member: _app(ctx, member=member), name)
        ended = bool(found.rows) and not found.unreadable and all(p.run.status.is_over for _, p in found.rows)
        return fleet_table(found), name is not None and ended

    app = None if targets else _app(ctx)

    def view() -> tuple[RenderableType, bool]:
        if app is None:
            return fleet_view()
        if name is not None:
            details = app.details(name)
            return details_view(details), details.progress.run.status.is_over
        return status_table(app.progress()), False

    renderable, over = view()
    try:
        with Live(renderable, console=console, refresh_per_second=4) as live:
            while not over:
                time.sleep(interval)
                renderable, over = view()
                live.update(renderable)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many seconds (exit 3).")
@MEMBER
@click.pass_context
def wait(ctx: click.Context, /, names: tuple[str, ...], timeout: float | None, members: tuple[str, ...]) -> None:
    """Block until the runs end: exit 0 all finished, 1 one failed or was cancelled, 3 timeout.
    In a fleet, on every member: 0 only when every member's runs finished, and the members
    that did not are listed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    in_fleet = _members(ctx, members) != [None]
    unfinished: list[str] = []
    """What is not finished: in a fleet, the members and why (an unreadable one's why is its own line)."""
    timed_out = False

    def wait_on(member: Member | None) -> None:
        nonlocal timed_out
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            result = _app(ctx, member=member).wait(names, timeout=left, on_wait=OutageNotice())
        except Exception:
            unfinished.extend([member.name] if member is not None else [])
            raise
        for run in result.runs:
            click.echo(
                f"{_on(member)}{run.name}: run {run.id} {run.status}, {run.rows_done:,} rows, "
                f"{run.batches_failed} failed batches"
            )
            if run.status is not RunStatus.FINISHED:
                unfinished.append(f"{member.name} ({run.name} {run.status})" if member is not None else run.name)
        timed_out = timed_out or result.timed_out

    try:
        _each(ctx, members, wait_on)
    finally:
        if in_fleet and unfinished:
            click.echo(f"not finished on {len(unfinished)} member(s): {', '.join(unfinished)}", err=True)
    if timed_out:
        click.echo(f"timed out after {timeout:g}s", err=True)
        sys.exit(3)
    if unfinished:
        sys.exit(1)


@main.command()
@click.argument("name")
@click.option("--samples", type=click.IntRange(min=1, max=50), default=3, show_default=True, help="Batches to time.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@PARAM
@tuning_options
@click.pass_context
def estimate(
    ctx: click.Context, /, name: str, samples: int, as_json: bool, params: dict[str, str], **overrides: Any
) -> None:
    """Time a few batches in rolled-back transactions and predict the run; changes nothing."""
    result = _app(ctx, "backfill estimate", short=False).estimate(name, samples=samples, params=params, **overrides)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else estimate_view(result))


@main.command()
@click.argument("name")
@MEMBER
@tuning_options
@click.pass_context
def tune(ctx: click.Context, /, name: str, members: tuple[str, ...], **overrides: Any) -> None:
    """Change a running run's settings; batches planned from now on use them."""

    def tune_on(member: Member | None) -> None:
        run = _app(ctx, member=member).tune(name, actor=_actor(), **overrides)
        t = run.tuning
        click.echo(
            f"{_on(member)}{name}: run {run.id} now batch size {t.batch_size}, parallelism {t.parallelism}, "
            f"max attempts {t.max_attempts}, statement timeout {t.statement_timeout:g}s, "
            f"lock timeout {t.lock_timeout:g}s"
        )

    _each(ctx, members, tune_on, where_it_applies=True)


@main.command()
@click.argument("name")
@click.option("--for", "for_", metavar="DURATION", help="How long: 90s, 10m, 2h, 1d (a number alone is seconds).")
@click.option("--until", metavar="TIME", help="Until when: an ISO time, e.g. 2026-12-07T18:00 (local) or ...Z.")
@click.option("--query", metavar="SQL", help="Hold while this query returns a row (checked as the run goes).")
@click.option("--reason", metavar="TEXT", help="Why, kept with the throttle and shown as the run's hold.")
@click.option("--off", is_flag=True, help="Lift the throttle.")
@MEMBER
@click.pass_context
def throttle(
    ctx: click.Context,
    /,
    name: str,
    for_: str | None,
    until: str | None,
    query: str | None,
    reason: str | None,
    off: bool,
    members: tuple[str, ...],
) -> None:
    """Hold a run for a while, or while a query returns a row: no batch starts in any worker."""
    if off and (for_ or until or query):
        raise click.UsageError("--off lifts the throttle: give it alone")
    seconds = None if off else throttle_seconds(for_, until)
    if not off and seconds is None and not query:
        raise click.UsageError("say how long (--for 10m, --until TIME) or while what (--query SQL), or --off")

    def throttle_on(member: Member | None) -> None:
        app = _app(ctx, member=member)
        if off:
            run = app.unthrottle(name, actor=_actor())
            click.echo(f"{_on(member)}{name}: run {run.id} is no longer throttled")
            return
        run = app.throttle(name, seconds=seconds, query=query, reason=reason, actor=_actor())
        parts = [
            f"for {seconds:,.0f}s" if seconds is not None else "",
            f"while {query!r} returns a row" if query else "",
        ]
        click.echo(
            f"{_on(member)}{name}: run {run.id} throttled {' and '.join(p for p in parts if p)}: "
            f"`backfill throttle {name} --off` lifts it"
        )

    _each(ctx, members, throttle_on, where_it_applies=True)


def throttle_seconds(for_: str | None, until: str | None) -> float | None:
    """Seconds from now of ``--for`` or ``--until`` (not both); None when neither is given."""
    if for_ and until:
        raise click.UsageError("--for and --until say the same thing: give one")
    if for_:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", for_)
        if match is None or float(match.group(1)) <= 0:
            raise click.BadParameter("expected a duration such as 90s, 10m, 2h or 1d", param_hint="--for")
        return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if until:
        try:
            when = datetime.fromisoformat(until.strip().replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(
                "expected an ISO time such as 2026-12-07T18:00 or 2026-12-07T18:00Z", param_hint="--until"
            ) from None
        seconds = (when.astimezone() - datetime.now().astimezone()).total_seconds()
        if seconds <= 0:
            raise click.BadParameter(f"{until} has passed already", param_hint="--until")
        return seconds
    return None


@main.command()
@click.option("--port", type=click.IntRange(min=1, max=65535), default=9464, show_default=True)
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.pass_context
def metrics(ctx: click.Context, /, port: int, addr: str) -> None:
    """Serve Prometheus metrics for every run at http://ADDR:PORT/metrics (until Ctrl-C)."""
    from backfill.metrics import serve  # prometheus_client and its HTTP server: this command's alone

    members = _members(ctx, ())
    source: Store | dict[str, Store]
    if members == [None]:
        source = _app(ctx).store
        source.check_tables()
    else:  # a member down answers later: backfill_member_up says which do
        source = {m.name: Store(fleet.engine_for(m)) for m in members if m is not None}
    try:
        serve(source, port, addr)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {addr}:{port}: {exc.strerror}: choose another --port") from None
    click.echo(f"serving metrics on http://{addr}:{port}/metrics")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8700, show_default=True)
@click.pass_context
def dashboard(ctx: click.Context, /, host: str, port: int) -> None:
    """Serve the web dashboard (read-only unless BACKFILL_DASHBOARD_TOKEN is set), until Ctrl-C."""
    from backfill.dashboard import serve as serve_dashboard
    from backfill.dashboard.access import Access

    app = _app(ctx)
    app.store.check_tables()
    mode = "actions allowed with the token" if Access.from_env().actions_enabled else "read-only"
    click.echo(f"dashboard on http://{host}:{port}/ ({mode})")
    with contextlib.suppress(KeyboardInterrupt):
        serve_dashboard(app, host, port)


def _operator(verb: str, help_text: str) -> None:
    @main.command(verb, help=help_text)
    @click.argument("name")
    @MEMBER
    @click.pass_context
    def command(ctx: click.Context, name: str, members: tuple[str, ...]) -> None:
        def act(member: Member | None) -> None:
            run = getattr(_app(ctx, member=member), verb)(name, actor=_actor())
            click.echo(f"{_on(member)}{name}: run {run.id} is {run.status}")

        _each(ctx, members, act, where_it_applies=True)


_operator("pause", "Stop starting new batches; in-flight batches finish.")
_operator("resume", "Continue a paused run from its checkpoint.")
_operator("cancel", "Stop a run for good and mark it cancelled.")


@main.command()
@click.argument("name")
@click.option("--split", is_flag=True, help="Cut each failed batch into two smaller ones.")
@MEMBER
@click.pass_context
def retry(ctx: click.Context, /, name: str, split: bool, members: tuple[str, ...]) -> None:
    """Re-queue the failed batches; a failed run becomes running again."""

    def retry_on(member: Member | None) -> None:
        run, requeued = _app(ctx, member=member).retry(name, split=split, actor=_actor())
        click.echo(
            f"{_on(member)}{name}: {requeued} failed batch(es) re-queued{' in halves' if split else ''}; "
            f"run {run.id} is {run.status} (workers pick it up, or `backfill run {name}` runs it here)"
        )

    _each(ctx, members, retry_on, where_it_applies=True)


FLEET_PARALLELISM_ENV = "BACKFILL_FLEET_PARALLELISM"
FLEET_PARALLELISM = click.option(
    "--fleet-parallelism",
    type=click.IntRange(min=0),
    help=f"Chains in flight over all fleet members at once, shared fairly (0: no cap) [env {FLEET_PARALLELISM_ENV}].",
)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", type=click.IntRange(min=1), help="Worker processes (default: one per core).")
@click.option("--loglevel", default="INFO", show_default=True)
@FLEET_PARALLELISM
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(
    ctx: click.Context,
    /,
    concurrency: int | None,
    loglevel: str,
    fleet_parallelism: int | None,
    celery_args: tuple[str, ...],
) -> None:
    """Start a Celery worker that runs batches (extra arguments go to Celery)."""
    _export(ctx, "backfill worker", fleet_parallelism)
    from backfill.workers.app import celery_app, settings

    argv = ["worker", f"--loglevel={loglevel}", "--queues", settings.queue]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    celery_app.worker_main([*argv, *celery_args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--schedule",
    "schedule_file",
    type=click.Path(dir_okay=False),
    help="Celery beat's schedule file (default: one per broker, queue and key prefix, in the temp directory).",
)
@click.option("--loglevel", default="INFO", show_default=True)
@FLEET_PARALLELISM
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def scheduler(
    ctx: click.Context,
    /,
    schedule_file: str | None,
    loglevel: str,
    fleet_parallelism: int | None,
    celery_args: tuple[str, ...],
) -> None:
    """Start the periodic tick (Celery beat) that plans and sends batches for every run."""
    _export(ctx, "backfill scheduler", fleet_parallelism)
    from backfill.workers.app import celery_app, settings

    schedule = schedule_file or os.path.join(tempfile.gettempdir(), f"backfill-beat-{settings.deployment_id}")
    celery_app.start(["beat", f"--loglevel={loglevel}", f"--schedule={schedule}", *celery_args])


def _export(ctx: click.Context, command: str, fleet_parallelism: int | None = None) -> None:
    """Workers read their settings from the environment: hand them the CLI's options, after
    checking that the definitions load and the database answers. In a fleet the declaration is
    checked; a member that is down is said by the ticks and served once it is back."""
    if _members(ctx, ()) == [None]:
        _app(ctx, command, short=False).store.check_tables()
    else:
        load(ctx.obj["app"], needed_by=command)
        if ctx.obj["fleet"]:
            os.environ[fleet.FLEET_ENV] = ctx.obj["fleet"]
    if fleet_parallelism is not None:
        os.environ[FLEET_PARALLELISM_ENV] = str(fleet_parallelism)
    if ctx.obj["app"]:
        os.environ[APP_ENV] = ctx.obj["app"]
    if ctx.obj["database_url"]:
        os.environ[DATABASE_URL_ENV] = ctx.obj["database_url"]


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Alembic's ini: its versions are linted when no PATHS are given, and squawk reads its offline SQL "
    "[default: alembic.ini].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON for scripts.")
@click.option(
    "--squawk/--no-squawk", default=True, show_default=True, help="Check the offline SQL with squawk (PostgreSQL)."
)
@click.pass_context
def lint(ctx: click.Context, /, paths: tuple[Path, ...], config: Path | None, as_json: bool, squawk: bool) -> None:
    """Find data backfills hidden in Alembic revisions: exit 0 clean, 1 findings, 2 a usage error."""
    from backfill.lint import lint_paths

    report = lint_paths(paths, config=config, squawk=squawk, database_url=ctx.obj["database_url"])
    for note in report.notes:
        click.echo(note, err=True)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.text())
    if not report.clean:
        sys.exit(1)


def entry_point(argv: Sequence[str] | None = None) -> None:
    """The ``backfill`` command (``argv``: the arguments, else the process's own). Click's own
    usage errors come out as one line too, like every other mistake: what is wrong and where the
    help is."""
    try:
        main.main(args=argv, prog_name="backfill", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "backfill"
        click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        verdict = judge(exc)
        if verdict.cause is Cause.BUG:
            traceback.print_exc()
            click.echo(f"error: {bug_report_line(exc)}", err=True)
        else:
            click.echo(f"error: {verdict.message}", err=True)
        sys.exit(verdict.exit_code)
