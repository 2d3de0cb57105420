"""``backfill lint``: the data migrations hidden in Alembic revisions, found before a deploy runs
them under its locks.

A whole-table ``UPDATE`` in ``upgrade()``, a Core ``update()`` on the migration's connection,
an ORM loop over every row: each one runs inside the deploy's transaction, holding what it
touched until the end, and starts over after any failure. Linters of migration SQL (squawk,
strong_migrations) look at DDL, and a loop in Python renders no SQL at all. This reads the
revisions' code (``rules``), says where each one is and what replaces it (``skeleton``: a
backfill queued in one revision and required finished in the next), honours a reviewed
``# backfill: safe (reason)`` (``suppress``), and leaves PostgreSQL's DDL hazards to squawk
(``squawk``).

Nothing here needs the application, its definitions or a database: the revisions are read,
never imported (only squawk's offline rendering runs them, in a child process).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backfill.errors import ConfigurationError
from backfill.lint import squawk as squawk_check
from backfill.lint import suppress
from backfill.lint.findings import Finding, Rule
from backfill.lint.rules import Revision, check
from backfill.lint.sources import Project, read_project, revision_files, shown

DEFAULT_CONFIG = Path("alembic.ini")


@dataclass(frozen=True)
class Report:
    """What one lint found, in the order of the files and lines. ``notes`` are lines about the
    lint itself (squawk not installed, not run and why), which are not findings: they never
    fail it."""

    files: int
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.findings]

    def text(self) -> str:
        """One line per finding, then each distinct skeleton once (headed by the findings it
        fixes), then a summary line."""
        lines = [f.render() for f in self.findings]
        fixes: dict[str, list[Finding]] = {}
        for finding in self.findings:
            if finding.skeleton:
                fixes.setdefault(finding.skeleton, []).append(finding)
        for text, findings in fixes.items():
            where = ", ".join(f"{f.location} {f.code}" for f in findings)
            lines += ["", f"# ---- the fix for {where} ----", text.rstrip("\n")]
        if lines:
            lines.append("")
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        files = f"{self.files} file{'s' if self.files != 1 else ''}"
        if self.clean:
            return f"no findings in {files}"
        codes = Counter(f.code for f in self.findings)
        touched = len({f.path for f in self.findings})
        counted = ", ".join(f"{code} x{count}" for code, count in sorted(codes.items()))
        total = len(self.findings)
        return f"{total} finding{'s' if total != 1 else ''} in {touched} of {files} ({counted})"


def lint_paths(
    paths: Sequence[Path] = (),
    *,
    config: Path | None = None,
    squawk: bool = True,
    database_url: str | None = None,
) -> Report:
    """Lint revision files, or the directories that hold them; with no paths, the revisions of
    the Alembic project ``config`` describes (default ``alembic.ini`` here).

    ``squawk`` runs squawk on the offline SQL when the project's ini is at hand and squawk is
    installed, with the ini's ``sqlalchemy.url`` or ``database_url`` for its dialect when one
    is PostgreSQL. Raises ``ConfigurationError`` (one line, exit 2 on the command line) for a
    path or an ini that does not exist and a file that is not Python."""
    ini = config or DEFAULT_CONFIG
    project: Project | None = None
    notes: list[str] = []
    if not paths:
        project = read_project(ini)
        targets: list[Path] = list(project.versions)
    else:
        targets = list(paths)
        if config is not None:
            project = read_project(ini)
        elif ini.is_file():
            try:
                project = read_project(ini)
            except ConfigurationError as exc:
                notes.append(f"squawk was not run: {exc}")
    files = revision_files(targets)
    findings: list[Finding] = []
    revisions: dict[str, Revision] = {}
    markers: dict[str, dict[int, suppress.Marker]] = {}
    for path in files:
        name = shown(path)
        try:
            source = path.read_text(encoding="utf-8")
            revision = check(name, source)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"{name} cannot be read ({type(exc).__name__}): give Python revision files"
            ) from None
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None) or 1
            said = getattr(exc, "msg", None) or str(exc)
            raise ConfigurationError(f"{name}:{line}: not valid Python ({said}): fix it, then lint again") from None
        revisions[name] = revision
        markers[name] = suppress.markers(source)
        findings.extend(suppress.apply(name, revision.findings, markers[name]))
    if squawk and not notes:
        if project is None:
            notes.append(
                f"squawk was not run: it reads the SQL `alembic upgrade --sql` renders, and {ini} is not here "
                "(--config PATH/alembic.ini)"
            )
        else:
            outcome = squawk_check.run(project, revisions, database_url)
            findings.extend(f for f in outcome.findings if not suppress.silenced(f, markers.get(f.path, {})))
            if outcome.note:
                notes.append(outcome.note)
    order = {name: number for number, name in enumerate(revisions)}
    findings.sort(key=lambda f: (order.get(f.path, len(order)), f.path, f.line, f.col, f.code))
    return Report(len(files), tuple(findings), tuple(notes))


__all__ = ["Finding", "Report", "Rule", "lint_paths"]
