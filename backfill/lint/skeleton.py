"""The fix, written out: the definition and the revisions that replace a backfill hidden in a
revision, in the project's own API, with the table and the column filled in where the
revision's code names them.

It is a starting point to edit, not code to paste blind: a key other than ``id``, or work that
was a Python loop, can only be written by someone who knows the data, and it says ``TODO``
where that is the case.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

TODO_PENDING = "TODO: the rows that still need the work"


@dataclass(frozen=True)
class Work:
    """One batch's work: SQL text bound to ``:first``/``:last``, or the source of a SQLAlchemy
    Core statement limited with ``batch.where(...)``; ``imports`` are the names it needs from
    ``sqlalchemy``."""

    sql: str | None = None
    core: str | None = None
    imports: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    """Import lines of modules the Core statement spells out (``import sqlalchemy as sa``)."""
    tables: tuple[str, ...] = ()
    """The tables and models the Core statement names: the application's to import."""


@dataclass(frozen=True)
class Subject:
    """What a revision's data work touches, as far as its code says: the input of a skeleton.
    ``origin`` says what the work was (``the revision's UPDATE``), for the docstring."""

    table: str | None
    column: str | None
    pending: str | None
    work: Work
    origin: str
    downgrade: bool = False
    fills: bool = True
    """Whether the work fills ``column`` (then the next revision can make it NOT NULL)."""
    label: str | None = None
    """What names the backfill beside its table when no column does (``delete``)."""

    @property
    def name(self) -> str:
        return backfill_name(self.table, self.column or self.label)


def backfill_name(table: str | None, column: str | None) -> str:
    """A backfill name that is also a Python identifier: the decorated function's name."""
    raw = "_".join(p for p in (table, column) if p)
    name = re.sub(r"\W+", "_", raw).strip("_") or "my_backfill"
    return f"backfill_{name}" if name[0].isdigit() else name


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _wrapped(text: str, indent: str, width: int = 80) -> str:
    """A long string as adjacent literals, one per line, cut at spaces."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if len(candidate) > width and current:
            lines.append(current + " ")
            current = word
        else:
            current = candidate
    lines.append(current)
    if len(lines) == 1:
        return _literal(lines[0])
    return "\n" + "".join(f"{indent}    {_literal(line)}\n" for line in lines) + indent


def _definition(subject: Subject) -> str:
    arguments = [f"table={_literal(subject.table or 'TODO_table')}", 'key="id"']
    arguments.append(f"pending={_literal(subject.pending or TODO_PENDING)}")
    if subject.column and subject.fills:
        arguments.append(f"columns={_literal(subject.column)}")
    imports = ["Connection", *sorted(set(subject.work.imports))]
    modules = "".join(f"{line}\n" for line in subject.work.modules)
    tables = ""
    if subject.work.tables:
        tables = f"from myapp.models import {', '.join(subject.work.tables)}  # TODO: your own module\n"
    if subject.work.core is not None:
        body = f"    return connection.execute(\n        {subject.work.core}\n    ).rowcount"
    else:
        sql = subject.work.sql or "TODO: the work of one batch ... WHERE id BETWEEN :first AND :last"
        imports.append("text")
        body = (
            "    return connection.execute(\n"
            f"        text({_wrapped(sql, '        ')}),\n"
            "        batch.params(),\n"
            "    ).rowcount"
        )
    origin = subject.origin[0].upper() + subject.origin[1:]
    return (
        "# 1. The definition, in your backfills module (BACKFILL_APP). key: a unique, ordered\n"
        "#    column (the primary key); pending: the rows the work has still to do.\n"
        f"{modules}from sqlalchemy import {', '.join(dict.fromkeys(imports))}\n"
        "\n"
        "from backfill import Batch, define\n"
        f"{tables}"
        "\n"
        "\n"
        f"@define({', '.join(arguments)})\n"
        f"def {subject.name}(connection: Connection, batch: Batch) -> int:\n"
        f'    """{origin}, one batch of keys at a time."""\n'
        f"{body}\n"
    )


def data_work(subject: Subject) -> str:
    """The definition module's snippet and the revisions that queue, then require, the work
    (in a downgrade, which has no later deploy to wait for: run it there, batch by batch)."""
    name = _literal(subject.name)
    if subject.downgrade:
        revisions = (
            "# 2. The downgrade: the batches run inline, in key order, inside its transaction\n"
            "def downgrade() -> None:\n"
            "    ...  # the schema change back, e.g. the column re-added, nullable\n"
            f"    op.run_backfill({name})\n"
        )
        return f"{_definition(subject)}\n\n{revisions}"
    if subject.table and subject.column and subject.fills:
        then = f"    op.add_not_null({_literal(subject.table)}, {_literal(subject.column)})\n"
    else:
        then = "    ...  # what needs the data: op.add_not_null(TABLE, COLUMN), dropping an old column\n"
    revisions = (
        "# 2. This revision (deploy N): the schema change only; the workers run the backfill\n"
        "import backfill.alembic_ops  # noqa: F401  (registers the op.* backfill operations)\n"
        "\n"
        "\n"
        "def upgrade() -> None:\n"
        "    ...  # the schema change, e.g. the new column, nullable\n"
        f"    op.queue_backfill({name})\n"
        "\n"
        "\n"
        "def downgrade() -> None:\n"
        f"    op.forget_backfill({name})\n"
        "    ...\n"
        "\n"
        "\n"
        f"# 3. The next revision (deploy N+1), once `backfill status {subject.name}` says finished\n"
        "def upgrade() -> None:\n"
        f"    op.ensure_backfill_finished({name})\n"
        f"{then}"
    )
    return f"{_definition(subject)}\n\n{revisions}"


def not_null(table: str | None, column: str | None) -> str:
    """The revision that makes a column NOT NULL without a long lock, once its backfill is done."""
    fills = f"{table}.{column}" if table and column else "the column"
    return (
        "# The revision that sets NOT NULL, deployed once no row holds NULL\n"
        "import backfill.alembic_ops  # noqa: F401  (registers the op.* backfill operations)\n"
        "\n"
        "\n"
        "def upgrade() -> None:\n"
        f"    op.ensure_backfill_finished({_literal(backfill_name(table, column))})  # the backfill that fills {fills}\n"
        f"    op.add_not_null({_literal(table or 'TODO_table')}, {_literal(column or 'TODO_column')})\n"
    )


def split_revisions(name: str) -> str:
    """Queue in one revision, require it finished in the next: the workers run it in between."""
    literal = _literal(name)
    return (
        "# This revision (deploy N)\n"
        "def upgrade() -> None:\n"
        "    ...  # the schema change\n"
        f"    op.queue_backfill({literal})\n"
        "\n"
        "\n"
        f"# The next revision (deploy N+1), once `backfill status {name}` says finished\n"
        "def upgrade() -> None:\n"
        f"    op.ensure_backfill_finished({literal})\n"
        "    ...  # what needs the data: op.add_not_null(TABLE, COLUMN)\n"
    )
