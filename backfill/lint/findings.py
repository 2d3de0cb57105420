"""What the linter reports: one value per problem, with the place, the code and the fix."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Rule(enum.Enum):
    """The linter's own rules. A code never changes meaning once released: scripts filter on
    it, and a suppression's reason was written with it in mind."""

    SQL_DATA_WORK = "BF001"
    CORE_DATA_WORK = "BF002"
    ORM_SESSION = "BF003"
    ROW_LOOP = "BF004"
    UNSAFE_NOT_NULL = "BF005"
    QUEUE_AND_ENSURE = "BF006"
    BARE_SUPPRESSION = "BF007"

    @property
    def code(self) -> str:
        return self.value


SQUAWK_PREFIX = "squawk/"
"""Findings of squawk carry its own rule name (``squawk/require-concurrent-index-creation``):
its documentation is where they are explained, and its configuration where they are tuned."""


@dataclass(frozen=True)
class Finding:
    """One problem at one place. ``line`` and ``col`` count from 1, as editors do.

    ``statement_line`` is the first line of the statement the problem is in: a suppression
    comment there, or on its own line just above it, applies to a statement that spans lines."""

    path: str
    line: int
    col: int
    code: str
    message: str
    fix: str
    skeleton: str | None = None
    statement_line: int = 0

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    def render(self) -> str:
        return f"{self.location}: {self.code} {self.message} — {self.fix}"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
            "skeleton": self.skeleton,
        }
