"""What a backfill is: a name, a table, its unique ordered key, the per-batch work, and tuning.

Definitions live in the user's own module and never touch the database: they are plain frozen
values, checked against the database only when a run starts (see ``target.resolve``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

from sqlalchemy import BindParameter, ColumnElement, Executable, TextClause, and_, or_, text
from sqlalchemy.sql import visitors

from backfill import params as run_params
from backfill.errors import DefinitionError
from backfill.params import Param
from backfill.status import Phase

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

Key: TypeAlias = tuple[Any, ...]
"""A key value: one element per key column, in key order."""

WorkFunction: TypeAlias = "Callable[[Connection, Batch], int | None]"
Work: TypeAlias = "str | TextClause | Executable | WorkFunction"
Pending: TypeAlias = "str | Callable[[Table], ColumnElement[bool]]"
HealthCheck: TypeAlias = "Callable[[Connection], str | None]"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,119}$")


@dataclass(frozen=True)
class Batch:
    """One slice of the key space, handed to the work.

    ``first`` and ``last`` are the first and last keys the slice held when it was planned, in
    the key columns' Python types; the work covers every row whose key lies between them, both
    included. A row inserted later into a gap between two batches is the final pass's: with a
    ``pending`` predicate (given, or derived from ``columns``) the final pass finds it; without
    one, the final pass covers only keys added past the run's end (see ``Backfill``).
    """

    id: int
    run_id: int
    seq: int
    phase: Phase
    key_columns: tuple[str, ...]
    first: Key
    last: Key
    rows: int
    arguments: Mapping[str, Any] = field(default_factory=dict)
    """The run's parameters (see ``Backfill.params``), by name."""

    def params(self) -> dict[str, Any]:
        """Bind parameters for SQL work: the run's parameters, ``first``/``last`` for a
        one-column key, and ``first_<col>``/``last_<col>`` for every column (also for a
        one-column key)."""
        params: dict[str, Any] = dict(self.arguments)
        for column, first, last in zip(self.key_columns, self.first, self.last, strict=True):
            params[f"first_{column}"] = first
            params[f"last_{column}"] = last
        if len(self.key_columns) == 1:
            params["first"] = self.first[0]
            params["last"] = self.last[0]
        return params

    def where(self, *columns: ColumnElement[Any]) -> ColumnElement[bool]:
        """The batch's range as a predicate on the given key columns (in key order)."""
        if len(columns) != len(self.key_columns):
            raise ValueError(f"batch key has {len(self.key_columns)} columns, got {len(columns)}")
        if len(columns) == 1:
            return columns[0].between(self.first[0], self.last[0])
        from backfill.keyset import row_compare  # keyset builds on these values

        return and_(row_compare(columns, ">=", self.first), row_compare(columns, "<=", self.last))


Verify: TypeAlias = "str | TextClause | Callable[[Connection], int]"
"""A post-condition: SQL returning how many rows are wrong (it must be 0), or a callable given a
connection that returns that count."""

MAX_COUNT = 2**31 - 1
"""Batch sizes, attempts and parallelism are stored in 32-bit integer columns."""
DAY = 86_400.0
_SECONDS_AND_RATES = (
    # name, zero not allowed, the most it may be
    ("statement_timeout", True, DAY),
    ("lock_timeout", True, DAY),
    ("target_batch_seconds", False, 3_600.0),
    ("max_rows_per_second", False, 1e12),
    ("pause_seconds", False, DAY),
    ("nice_ratio", False, 1_000.0),
    ("max_replica_lag", False, DAY),
    ("max_transaction_age", False, 30 * DAY),
    ("max_connections_used", False, 1.0),
    ("max_load", False, 1e6),
    ("critical_load", False, 1e6),
    ("impact_budget", False, 0.9),
)
"""Time limits above a day are mistakes (PostgreSQL's own limit is under 25 days, in ms)."""


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Tuning:
    """The knobs a run starts with; a run keeps its own copy, so they can change while it runs.

    The defaults keep one batch well inside what production traffic tolerates: 1,000 rows is a
    few milliseconds of work on an indexed table, a writer waits at most ``lock_timeout`` behind
    a batch, and a runaway batch is cut off at ``statement_timeout`` instead of holding its locks.
    """

    batch_size: int = 1000
    """Keys per batch to start with; adapted towards ``target_batch_seconds`` as the run goes."""
    parallelism: int = 1
    max_attempts: int = 5
    statement_timeout: float = 10.0
    lock_timeout: float = 2.0
    max_failed_ratio: float = 0.2
    """The run stops, failed, once more than this share of its batches failed..."""
    min_batches_for_ratio: int = 10
    """...counted over at least this many finished batches. Below the ratio it carries on and
    reports its failed batches at the end: a systematic bug stops a run within a few batches,
    a handful of bad rows does not stop a night's work."""
    target_batch_seconds: float = 0.05
    """The batch duration the batch size is steered towards (0 keeps the size fixed). An
    application write that meets a row of a batch in flight waits for that batch to commit, so
    this is the worst wait the backfill adds to the application's writes: 50 ms stays inside a
    request's budget. A batch's fixed cost (claim, checkpoint, commits: a few milliseconds on a
    server) is then a few percent, and with ``parallelism`` above 1 it overlaps another batch's
    work."""
    min_batch_size: int = 100
    max_batch_size: int = 50_000
    max_rows_per_second: float = 0.0
    """A cap on the run's rate across all its workers (0: none)."""
    pause_seconds: float = 0.0
    """Sleep after each batch, per worker slot."""
    nice_ratio: float = 0.0
    """Sleep after each batch for this multiple of its duration (gh-ost's nice-ratio): 1.0
    leaves the database idle of this run half the time."""
    max_replica_lag: float = 30.0
    """Hold the run while a replica lags more than this many seconds (0: don't check)."""
    max_transaction_age: float = 600.0
    """Hold the run while a transaction has been open longer than this many seconds: it keeps
    vacuum from cleaning up the dead rows every batch leaves (0: don't check)."""
    max_connections_used: float = 0.9
    """Hold the run while more than this share of the server's connections is active (0: don't
    check)."""
    max_load: float = 0.0
    """Hold the run while the server is busier than this: sessions running a statement or inside
    a transaction, the run's own left out (PostgreSQL), or ``Threads_running`` (MySQL/MariaDB),
    as gh-ost's ``--max-load`` (0: don't check)."""
    critical_load: float = 0.0
    """Past this load the run pauses itself and says why, as gh-ost's ``--critical-load``:
    something is wrong, and an operator resumes it (0: don't check)."""
    hold_during_vacuum: bool = True
    """Hold the run while a VACUUM (autovacuum's or anyone's) works on its table (PostgreSQL):
    each batch leaves dead rows for it, and both compete for the same pages."""
    impact_budget: float = 0.0
    """What the run may cost the application: 0.1 is "at most 10% slower". The run measures the
    application's commits and busy sessions with and without itself, and the sessions that wait
    on its locks, and paces itself within the budget (see ``backfill.impact``; 0: off)."""

    def __post_init__(self) -> None:
        """Every setting checked before anything is recorded: a NaN, an infinity or a number
        too large for its column would otherwise be stored on the run and break it mid-way."""
        ratio = self.max_failed_ratio
        if not _is_number(ratio) or not 0 <= ratio <= 1:
            raise DefinitionError(f"max_failed_ratio must be between 0 and 1, got {ratio!r}")
        for name in ("batch_size", "parallelism", "max_attempts", "min_batches_for_ratio", "min_batch_size",
                     "max_batch_size"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
                raise DefinitionError(f"{name} must be a whole number from 1 to {MAX_COUNT:,}, got {value!r}")
        for name, low_excluded, high in _SECONDS_AND_RATES:
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or (low_excluded and value == 0) or value > high:
                span = f"above 0 and at most {high:,g}" if low_excluded else f"from 0 to {high:,g}"
                raise DefinitionError(f"{name} must be a number {span}, got {value!r}")
        if not isinstance(self.hold_during_vacuum, bool):
            raise DefinitionError(f"hold_during_vacuum must be true or false, got {self.hold_during_vacuum!r}")
        if self.critical_load and self.max_load and self.critical_load <= self.max_load:
            raise DefinitionError(
                f"critical_load {self.critical_load:g} must be above max_load {self.max_load:g}: the run holds at "
                "max_load and pauses itself past critical_load"
            )
        if self.min_batch_size > self.max_batch_size:
            raise DefinitionError(f"min_batch_size {self.min_batch_size} is above max_batch_size {self.max_batch_size}")

    def replace(self, overrides: Mapping[str, Any]) -> Tuning:
        unknown = sorted(set(overrides) - set(self.__dataclass_fields__))
        if unknown:
            known = ", ".join(self.__dataclass_fields__)
            raise DefinitionError(f"unknown setting {', '.join(unknown)}; known settings: {known}")
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Tuning(**values)


@dataclass(frozen=True)
class Backfill:
    """A backfill definition.

    ``work`` runs once per batch inside the batch's transaction. It is one of:

    - SQL text (a string or ``text()``), given the batch bounds as bind parameters
      (see ``Batch.params``);
    - a SQLAlchemy Core statement with ``bindparam("first")``/``bindparam("last")``;
    - a callable ``work(connection, batch)`` returning the number of rows it changed (or None).

    ``pending`` says which rows still need the work (SQL text such as ``"team_id IS NULL"``, or
    a callable given the reflected table). Without it, ``columns`` (the columns the work fills)
    give one: a row is pending while any of them IS NULL. With a predicate, the run ends with a
    final pass over every row of the key range still matching it — rows inserted into gaps,
    rows set back to pending — and the work must leave alone rows that no longer match it,
    since a final-pass batch spans done rows as well; a final-pass batch whose rows still match
    after its work is a definition error, and the run stops there. With neither, nothing says
    which rows are pending: the final pass covers only keys added past the run's end, and a row
    inserted below the end after the sweep passed its place is not processed (``status`` says
    which final pass a run has).

    ``columns`` are also checked to exist at start, and name the backfill when a NOT NULL check
    on one of them fails.

    ``health_checks`` are the application's own signals, beside the database's (replica lag,
    long transactions, connections: see ``Tuning``): each is given a connection and returns why
    the database should be left alone now, or None. While one says so, the run is held.

    ``exclusive`` backfills have their table to themselves: another run on the same table waits
    (when queued) or is refused (when started by hand) until it is over. Two backfills run on one
    table together only when neither is exclusive.

    ``params`` declares the run parameters (``{"tenant_id": int}``, or ``Param``s with defaults):
    each run is started with its values (``backfill start NAME --param tenant_id=42``,
    ``op.queue_backfill(NAME, params={...})``), checked against these types, and they are bound
    as ``:tenant_id`` in ``work``, ``pending`` and ``verify`` SQL, and given to Python work as
    ``batch.arguments``. ``arguments`` holds one run's values; ``with_arguments`` sets them.
    """

    name: str
    table: str
    key: tuple[str, ...]
    work: Work
    pending: Pending | None = None
    columns: tuple[str, ...] = ()
    schema: str | None = None
    tuning: Tuning = field(default_factory=Tuning)
    description: str = ""
    exclusive: bool = True
    health_checks: tuple[HealthCheck, ...] = ()
    after: tuple[str, ...] = ()
    verify: Verify | None = None
    params: Mapping[str, type | Param] | tuple[Param, ...] = ()
    arguments: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(f"backfill name {self.name!r} is not valid: use letters, digits, '_', '.', '-'")
        object.__setattr__(self, "params", run_params.declared(self.params, self.name))
        key = (self.key,) if isinstance(self.key, str) else tuple(self.key)
        if not key or not all(isinstance(c, str) and c for c in key):
            raise DefinitionError(f"backfill {self.name!r}: key must name one or more columns")
        if len(set(key)) != len(key):
            raise DefinitionError(f"backfill {self.name!r}: key names a column twice")
        object.__setattr__(self, "key", key)
        columns = (self.columns,) if isinstance(self.columns, str) else tuple(self.columns)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "health_checks", tuple(self.health_checks))
        after = (self.after,) if isinstance(self.after, str) else tuple(self.after)
        if not all(isinstance(n, str) and n for n in after) or self.name in after:
            raise DefinitionError(f"backfill {self.name!r}: after must name other backfills")
        object.__setattr__(self, "after", after)
        if isinstance(self.verify, str):
            object.__setattr__(self, "verify", text(self.verify))
        if self.verify is not None and not isinstance(self.verify, TextClause) and not callable(self.verify):
            raise DefinitionError(
                f"backfill {self.name!r}: verify must be SQL returning a count, or a callable given a connection"
            )
        if not isinstance(self.table, str) or not self.table:
            raise DefinitionError(f"backfill {self.name!r}: table must be a table name")
        if isinstance(self.work, str):
            object.__setattr__(self, "work", text(self.work))
        if not isinstance(self.work, Executable) and not callable(self.work):
            raise DefinitionError(f"backfill {self.name!r}: work must be SQL text, a Core statement or a callable")
        if self.pending is not None and not (isinstance(self.pending, str) or callable(self.pending)):
            raise DefinitionError(f"backfill {self.name!r}: pending must be SQL text or a callable given the table")
        if not self.description and callable(self.work) and self.work.__doc__:
            object.__setattr__(self, "description", self.work.__doc__.strip().splitlines()[0])

    @property
    def parameters(self) -> tuple[Param, ...]:
        return self.params  # type: ignore[return-value]  # made a tuple of Params at init

    def bind_arguments(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """A new run's parameter values, checked and converted (raises naming the mistake)."""
        return run_params.bind(self.parameters, given, self.name)

    def with_arguments(self, values: Mapping[str, Any]) -> Backfill:
        """This definition as one run sees it: its SQL bound to the run's parameter values."""
        if not self.parameters and not values:
            return self
        return dataclasses.replace(self, arguments=dict(values))

    def _bound(self, clause: Any) -> Any:
        """A clause with the run's values in its ``:name`` parameters (a copy; the definition's
        own clause is shared by every run). A parameter without a value binds NULL, which is
        how ``resolve`` probes a predicate before any run exists."""
        if not self.parameters:
            return clause
        values = {p.name: self.arguments.get(p.name) for p in self.parameters}

        def give(bind: BindParameter[Any]) -> None:
            if bind.key in values:
                bind.value, bind.required = values[bind.key], False

        return visitors.cloned_traverse(clause, {}, {"bindparam": give})

    @property
    def has_pending(self) -> bool:
        """Whether the final pass can tell which rows still need the work."""
        return self.pending is not None or bool(self.columns)

    def pending_clause(self, table: Table) -> ColumnElement[bool] | None:
        """The rows that still need the work: the ``pending`` predicate, or else any of the
        filled ``columns`` still NULL; None when neither is given."""
        if self.pending is None:
            if not self.columns:
                return None
            return or_(*(table.c[name].is_(None) for name in self.columns))
        if isinstance(self.pending, str):
            return self._bound(text(self.pending))  # type: ignore[no-any-return]
        return self._bound(self.pending(table))  # type: ignore[no-any-return]

    @property
    def verify_text(self) -> str:
        """The post-condition as an operator reads it in an error: the SQL, or the function's name."""
        if isinstance(self.verify, TextClause):
            return " ".join(self.verify.text.split())
        return getattr(self.verify, "__qualname__", repr(self.verify))

    def violations(self, connection: Connection) -> int:
        """How many rows break the ``verify`` post-condition (0 without one)."""
        if self.verify is None:
            return 0
        if isinstance(self.verify, TextClause):
            return int(connection.execute(self._bound(self.verify)).scalar() or 0)
        check: Callable[[Connection], int] = self.verify  # type: ignore[assignment]  # a str became text() at init
        return int(check(connection))

    def run_work(self, connection: Connection, batch: Batch) -> int | None:
        """Run the work for one batch; returns the rows it changed, when that is known."""
        if isinstance(self.work, Executable):
            result = connection.execute(self.work, batch.params())
            rowcount = getattr(result, "rowcount", -1)
            return rowcount if rowcount >= 0 else None
        work: WorkFunction = self.work  # type: ignore[assignment]  # a str became text() at init
        return work(connection, batch)


def define(
    name: str | None = None,
    *,
    table: str,
    key: str | tuple[str, ...],
    pending: Pending | None = None,
    columns: str | tuple[str, ...] = (),
    schema: str | None = None,
    description: str = "",
    exclusive: bool = True,
    health_checks: tuple[HealthCheck, ...] = (),
    after: str | tuple[str, ...] = (),
    verify: Verify | None = None,
    params: Mapping[str, type | Param] | tuple[Param, ...] = (),
    **tuning: Any,
) -> Callable[[WorkFunction], Backfill]:
    """Decorator form for Python work: the function becomes the backfill (named after it unless
    ``name`` is given), so a module scan finds it like any other definition."""

    def decorate(work: WorkFunction) -> Backfill:
        return Backfill(
            name=name or work.__name__,
            table=table,
            key=key,  # type: ignore[arg-type]
            work=work,
            pending=pending,
            columns=columns,  # type: ignore[arg-type]
            schema=schema,
            tuning=Tuning().replace(tuning),
            description=description,
            exclusive=exclusive,
            health_checks=health_checks,
            after=after,  # type: ignore[arg-type]
            verify=verify,
            params=params,
        )

    return decorate
