"""PostgreSQL's plain SQL hazards, left to squawk (``pip install squawk-cli``).

An index built without ``CONCURRENTLY``, a constraint added without ``NOT VALID``, a statement
with no ``lock_timeout``: squawk, a maintained linter of PostgreSQL migrations, knows these and
many more, and a second, weaker copy of its rules here would only drift from it. So the
revisions' offline SQL is rendered with Alembic (no connection: ``upgrade heads --sql``), cut
into one script per revision (each deploys on its own, so squawk judges each alone: a table
created by an earlier revision is an existing table), and handed to squawk. Each of its
findings is pinned to the revision's operation whose names its statement mentions most, so a
``# backfill: safe (reason)`` marker there silences it like any other finding.

What squawk says is squawk's: ``.squawk.toml`` beside ``alembic.ini`` chooses its rules and
PostgreSQL version. Three things are left out, since they judge what is not the revision's to
change: statements about ``alembic_version`` (Alembic's bookkeeping), the SQL of the
operations of ``backfill.alembic_ops`` (``add_not_null`` validates outside a transaction and
drops its check constraint on purpose: that is the safe form), and ``prefer-robust-stmts``,
which asks for ``IF NOT EXISTS`` where Alembic already makes a revision run once, in its own
transaction on PostgreSQL.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from backfill.database import DATABASE_URL_ENV
from backfill.lint.findings import SQUAWK_PREFIX, Finding
from backfill.lint.rules import OpCall, Revision, revision_id
from backfill.lint.sources import Project, revision_files, shown

INSTALL = "pip install squawk-cli"
EXCLUDED = ("prefer-robust-stmts",)
RENDER_TIMEOUT = 180.0
CHECK_TIMEOUT = 120.0
_RUNNING = re.compile(r"^-- Running (?:upgrade|stamp) .*?-> (?P<revision>\S+)\s*$")
_WORD = re.compile(r"[a-z_][a-z0-9_$]*")
_SAFE_NAME = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class Outcome:
    """squawk's findings, or the one line that says why there are none."""

    findings: tuple[Finding, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class _Script:
    revision: str
    lines: tuple[str, ...]
    first_line: int
    """The line of the whole offline script that the part's first line stands for, from 1."""


def postgresql_url(*candidates: str | None) -> str | None:
    """The first PostgreSQL URL among the candidates, with psycopg 3 (installed with backfill)
    for a bare ``postgresql://``: the dialect offline rendering needs."""
    for raw in candidates:
        if not raw:
            continue
        try:
            url = make_url(raw)
        except ArgumentError:
            continue
        if url.get_backend_name() == "postgresql":
            if "+" not in url.drivername:
                url = url.set(drivername="postgresql+psycopg")
            return url.render_as_string(hide_password=False)
    return None


def squawk_executable() -> str | None:
    """squawk on ``PATH``, or beside this Python: ``.venv/bin/backfill lint`` run without the
    virtualenv activated finds the squawk that ``pip install squawk-cli`` put there."""
    return shutil.which("squawk") or shutil.which("squawk", path=str(Path(sys.executable).parent))


def run(project: Project, linted: Mapping[str, Revision], database_url: str | None) -> Outcome:
    """squawk's findings on the offline SQL of the revisions in ``linted`` (by shown path)."""
    executable = squawk_executable()
    if executable is None:
        return Outcome(
            note="squawk is not installed, so PostgreSQL's lock hazards in the offline SQL (indexes without "
            f"CONCURRENTLY, constraints without NOT VALID, missing timeouts) were not checked: `{INSTALL}`"
        )
    url = postgresql_url(project.url, database_url)
    if url is None:
        return Outcome(
            note=f"squawk was not run: the offline SQL it reads needs a PostgreSQL URL (sqlalchemy.url in "
            f"{shown(project.config)}, or {DATABASE_URL_ENV}); only its dialect is used, nothing connects"
        )
    rendered = _render(project, url)
    if isinstance(rendered, Outcome):
        return rendered
    scripts = _split(rendered)
    if not scripts:
        return Outcome()
    with tempfile.TemporaryDirectory(prefix="backfill-lint-") as scratch:
        named: dict[str, _Script] = {}
        for number, script in enumerate(scripts):
            name = f"{number:04d}_{_SAFE_NAME.sub('_', script.revision)}.sql"
            (Path(scratch) / name).write_text("\n".join(script.lines) + "\n", encoding="utf-8")
            named[name] = script
        settings = _settings(project.config)
        command = [executable, "--reporter", "json", "--exclude", ",".join(EXCLUDED)]
        if settings is not None:
            command += ["--config", str(settings)]
        try:
            checked = subprocess.run(
                [*command, *sorted(named)],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Outcome(note=f"squawk was not run: {type(exc).__name__}: {exc}")
    try:
        violations = json.loads(checked.stdout or "[]")
    except json.JSONDecodeError:
        return Outcome(note=f"squawk failed: {_last_said(checked)}")
    return Outcome(findings=tuple(_findings(violations, named, project, linted)))


def _settings(config: Path) -> Path | None:
    """squawk's own ``.squawk.toml``, looked for where squawk itself would when run from the
    ini's directory: there and in the directories above it."""
    for directory in [config.resolve().parent, *config.resolve().parent.parents]:
        candidate = directory / ".squawk.toml"
        if candidate.is_file():
            return candidate
    return None


def _render(project: Project, url: str) -> str | Outcome:
    """The offline SQL, rendered from the current directory, as ``alembic -c INI`` run here
    would (``prepend_sys_path`` in the ini is relative to it)."""
    try:
        rendered = subprocess.run(
            [sys.executable, "-m", "backfill.lint.offline", str(project.config.resolve())],
            env={**os.environ, DATABASE_URL_ENV: url},
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Outcome(note=f"squawk was not run: `alembic upgrade heads --sql` did not finish ({type(exc).__name__})")
    if rendered.returncode != 0:
        return Outcome(
            note=f"squawk was not run: `alembic -c {shown(project.config)} upgrade heads --sql` failed: "
            f"{_last_said(rendered)}"
        )
    return rendered.stdout


def _last_said(process: subprocess.CompletedProcess[str]) -> str:
    """What a child process said last on stderr: the one line a note has room for."""
    return (process.stderr.strip().splitlines() or [f"exit {process.returncode}"])[-1][:300]


def _split(rendered: str) -> list[_Script]:
    """The offline script cut at Alembic's ``-- Running upgrade A -> B`` comments, each part
    with the ``BEGIN;`` Alembic writes just before its comment. A part that starts or ends
    inside a transaction (the first revision's opens before Alembic's ``alembic_version``
    table; one transaction for all with ``transaction_per_migration=False``) gets the
    ``BEGIN;`` or ``COMMIT;`` it runs under, as squawk would otherwise judge a transaction
    that is not there."""
    lines = rendered.splitlines()
    cuts: list[tuple[str, int]] = []
    for number, line in enumerate(lines):
        match = _RUNNING.match(line)
        if match is None:
            continue
        boundary = before = number
        while before > 0 and not lines[before - 1].strip():
            before -= 1
        if before > 0 and lines[before - 1].strip().upper() == "BEGIN;" and (not cuts or before - 1 > cuts[-1][1]):
            boundary = before - 1
        cuts.append((match["revision"], boundary))
    scripts: list[_Script] = []
    open_transaction = _open_after(lines[: cuts[0][1]] if cuts else lines, False)
    for index, (revision, start) in enumerate(cuts):
        end = cuts[index + 1][1] if index + 1 < len(cuts) else len(lines)
        body = lines[start:end]
        opened_before = open_transaction
        open_transaction = _open_after(body, open_transaction)
        prefix = ("BEGIN;",) if opened_before else ()
        suffix = ("COMMIT;",) if open_transaction else ()
        scripts.append(_Script(revision, (*prefix, *body, *suffix), start + 1 - len(prefix)))
    return scripts


def _open_after(lines: list[str], open_transaction: bool) -> bool:
    for line in lines:
        statement = line.strip().upper()
        if statement in ("BEGIN;", "BEGIN TRANSACTION;", "START TRANSACTION;"):
            open_transaction = True
        elif statement in ("COMMIT;", "ROLLBACK;", "END;"):
            open_transaction = False
    return open_transaction


def _statement(lines: tuple[str, ...], number: int) -> str:
    """The whole statement around a line of the script (Alembic ends each with ``;``)."""
    first = number
    while first > 0 and not lines[first - 1].rstrip().endswith(";") and not lines[first - 1].startswith("--"):
        first -= 1
    last = number
    while last < len(lines) - 1 and not lines[last].rstrip().endswith(";"):
        last += 1
    return " ".join(line.strip() for line in lines[first : last + 1])


def _pinned(calls: tuple[OpCall, ...], statement: str) -> OpCall | None:
    words = set(_WORD.findall(statement.lower()))
    best: tuple[int, float, int] | None = None
    chosen: OpCall | None = None
    for order, call in enumerate(calls):
        shared = len(call.words & words)
        if shared == 0:
            continue
        rank = (shared, shared / len(call.words), -order)
        if best is None or rank > best:
            best, chosen = rank, call
    return chosen


def _known_revisions(project: Project) -> set[str]:
    known: set[str] = set()
    for directory in project.versions:
        if not directory.is_dir():
            continue
        for path in revision_files([directory]):
            try:
                revision = revision_id(ast.parse(path.read_text(encoding="utf-8")))
            except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
                continue
            if revision:
                known.add(revision)
    return known


def _findings(
    violations: list[dict[str, object]], named: dict[str, _Script], project: Project, linted: Mapping[str, Revision]
) -> list[Finding]:
    by_revision = {r.revision: (path, r) for path, r in linted.items() if r.revision}
    known: set[str] | None = None
    found: dict[tuple[str, int, int, str, str], Finding] = {}
    for violation in violations:
        script = named.get(Path(str(violation.get("file", ""))).name)
        if script is None:
            continue
        number = _int(violation.get("line"))
        if not 0 <= number < len(script.lines):
            continue
        statement = _statement(script.lines, number)
        if "alembic_version" in statement:
            continue
        rule = str(violation.get("rule_name") or "squawk")
        fragment = " ".join(script.lines[number].split())[:100]
        message = f"{violation.get('message')} (offline SQL: {fragment})"
        fix = str(violation.get("help") or f"see https://squawkhq.com/docs/{rule}")
        owner = by_revision.get(script.revision)
        if owner is None:
            known = _known_revisions(project) if known is None else known
            if script.revision in known:
                continue  # a revision of the project that was not asked for
            path, line, col, statement_line = (
                f"{shown(project.config)}[upgrade --sql]",
                script.first_line + number,
                _int(violation.get("column")) + 1,
                0,
            )
        else:
            path, revision = owner
            call = _pinned(revision.calls, statement)
            if call is not None and call.ours:
                continue
            if call is None:
                line, col, statement_line = revision.upgrade_line, 1, revision.upgrade_line
            else:
                line, col, statement_line = call.line, call.col, call.statement_line
        finding = Finding(path, line, col, f"{SQUAWK_PREFIX}{rule}", message, fix, None, statement_line)
        found.setdefault((path, line, col, finding.code, message), finding)
    return list(found.values())


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
