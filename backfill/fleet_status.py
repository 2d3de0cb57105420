"""A fleet's runs read as one: a line per member and run, and per backfill the fleet's total —
the question a deploy asks at 3 a.m. is "is it finished everywhere, and if not, where not?"."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backfill.boundary import Cause, judge
from backfill.fleet import Member
from backfill.progress import RunProgress
from backfill.status import RunStatus

if TYPE_CHECKING:
    from backfill.app import App


@dataclass(frozen=True)
class Total:
    """One backfill over the fleet: rows and rates add up; its ETA is the slowest member's."""

    name: str
    members: int
    finished: int
    rows_done: int
    rows_total: int | None
    rate: float
    eta_seconds: float | None
    batches_failed: int
    statuses: dict[str, int]

    @property
    def percent(self) -> float | None:
        if not self.rows_total:
            return None
        return min(100.0, 100 * self.rows_done / self.rows_total)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "members": self.members,
            "members_finished": self.finished,
            "rows_done": self.rows_done,
            "rows_total": self.rows_total,
            "percent": None if self.percent is None else round(self.percent, 2),
            "rate": round(self.rate, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "batches_failed": self.batches_failed,
            "statuses": self.statuses,
        }


@dataclass(frozen=True)
class FleetStatus:
    rows: tuple[tuple[Member, RunProgress], ...]
    unreadable: tuple[tuple[Member, str], ...]
    """Members whose runs could not be read (down, or their checkpoint tables missing), and why."""

    @property
    def totals(self) -> tuple[Total, ...]:
        names = list(dict.fromkeys(p.run.name for _, p in self.rows))
        return tuple(_total(name, [p for _, p in self.rows if p.run.name == name]) for name in names)

    def to_json(self) -> dict[str, Any]:
        return {
            "members": [{"member": m.name, **p.to_json()} for m, p in self.rows],
            "unreadable": [{"member": m.name, "error": why} for m, why in self.unreadable],
            "totals": [t.to_json() for t in self.totals],
        }


def gather(members: Sequence[Member], app_for: Callable[[Member], App], name: str | None) -> FleetStatus:
    """Every member's newest run of each backfill (of ``name`` only, if given). A member that
    cannot be read is said with its reason and the rest are read; a bug still raises."""
    rows: list[tuple[Member, RunProgress]] = []
    unreadable: list[tuple[Member, str]] = []
    for member in members:
        try:
            found = app_for(member).progress(name)
        except Exception as exc:
            verdict = judge(exc)
            if verdict.cause is Cause.BUG:
                raise
            unreadable.append((member, verdict.message))
            continue
        rows.extend((member, progress) for progress in found)
    rows.sort(key=lambda row: row[1].run.name)  # a backfill's members together, in the fleet's order
    return FleetStatus(tuple(rows), tuple(unreadable))


def _total(name: str, found: list[RunProgress]) -> Total:
    totals = [p.rows_total for p in found]
    statuses: dict[str, int] = {}
    for p in found:
        statuses[p.run.status.value] = statuses.get(p.run.status.value, 0) + 1
    etas = [p.eta_seconds for p in found if p.run.status.is_active]
    return Total(
        name=name,
        members=len(found),
        finished=sum(1 for p in found if p.run.status is RunStatus.FINISHED),
        rows_done=sum(p.run.rows_done for p in found),
        rows_total=None if any(t is None for t in totals) else sum(t for t in totals if t is not None),
        rate=sum(p.rate for p in found if p.run.status.is_active),
        eta_seconds=None if not etas or any(e is None for e in etas) else max(e for e in etas if e is not None),
        batches_failed=sum(p.run.batches_failed for p in found),
        statuses=statuses,
    )
