"""``# backfill: safe (reason)``: the reviewer's word that one finding is fine here.

The reason is required, and a marker without one silences nothing and is reported itself: the
next person to read the revision needs to know why a whole-table UPDATE was judged harmless
(a table of 40 rows, a column nobody reads yet), and "safe" alone says nothing.

A marker applies to a finding on its own line, or on the first line of the statement the
finding is in; a marker alone on its line applies to the statement that starts on the next
line. A trailing marker never reaches down to the next statement.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass

from backfill.lint.findings import Finding, Rule

_MARKER = re.compile(r"#\s*backfill\s*:\s*safe\b(?P<rest>.*)$", re.I)
_REASON = re.compile(r"^\s*\((?P<reason>[^)]*)\)")


@dataclass(frozen=True)
class Marker:
    line: int
    col: int
    reason: str | None
    alone: bool
    """Whether the comment is the only thing on its line."""


def markers(source: str) -> dict[int, Marker]:
    """The markers of a file, by line. Comments are found with ``tokenize``, so a ``#`` inside
    a SQL string is never one."""
    if "backfill" not in source:
        return {}
    found: dict[int, Marker] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT:
                continue
            match = _MARKER.search(token.string)
            if match is None:
                continue
            given = _REASON.match(match["rest"])
            reason = given["reason"].strip() if given else None
            line, col = token.start
            found[line] = Marker(line, col + 1, reason or None, not token.line[:col].strip())
    except (tokenize.TokenError, SyntaxError):
        return found
    return found


def silenced(finding: Finding, by_line: dict[int, Marker]) -> bool:
    for line in (finding.line, finding.statement_line):
        marker = by_line.get(line)
        if marker is not None and marker.reason:
            return True
    above = by_line.get((finding.statement_line or finding.line) - 1)
    return above is not None and above.alone and above.reason is not None


def apply(path: str, findings: Iterable[Finding], by_line: dict[int, Marker]) -> list[Finding]:
    """The findings no marker silences, and one finding for each marker without a reason."""
    kept = [f for f in findings if not silenced(f, by_line)]
    rule = Rule.BARE_SUPPRESSION
    for marker in by_line.values():
        if marker.reason is None:
            kept.append(
                Finding(
                    path,
                    marker.line,
                    marker.col,
                    rule.code,
                    "`# backfill: safe` without a reason silences nothing",
                    "say why it is safe here: `# backfill: safe (the table holds 40 rows)`",
                    None,
                    marker.line,
                )
            )
    return sorted(kept, key=lambda f: (f.line, f.col, f.code))
