"""``python -m bench.lint``: how fast ``backfill lint`` reads a large project's revisions.

    python -m bench.lint                  # 1,000 revisions, in-process, squawk off
    python -m bench.lint --files 5000 --rounds 5

A pre-commit hook and a CI step lint every revision of a project that may have a thousand of
them, so the whole pass must stay well under the time a developer waits for a commit: the
target is 1,000 revisions in under 2 s. The revisions are generated in a temporary directory
as a realistic mix — most are DDL only (tables, columns, indexes, foreign keys), some write
seed rows or use this project's operations, and about one in five hides data work (a raw
UPDATE, a Core update(), an ORM loop, NOT NULL without add_not_null, queue and ensure in one
revision), some of it reviewed with ``# backfill: safe (reason)`` — and linted in-process,
each round from a fresh read of the files. squawk is left out: it is its own program, run
once per lint on the rendered SQL, whatever the number of files.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from backfill.lint import lint_paths

TARGET_SECONDS = 2.0
TARGET_FILES = 1000

HEADER = '''"""{title}

Revision ID: {revision}
Revises: {down}
Create Date: 2024-05-0{day} 10:{minute:02d}:00
"""

import sqlalchemy as sa
from alembic import op
{imports}
revision = "{revision}"
down_revision = {down_literal}
branch_labels = None
depends_on = None
'''

DDL = [
    """    op.create_table(
        "t{n}",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_t{n}_name", "t{n}", ["name"], unique=True)
""",
    """    op.add_column("players", sa.Column("c{n}", sa.Integer(), nullable=True))
    op.create_foreign_key("fk_players_c{n}", "players", "t{n}", ["c{n}"], ["id"])
""",
    """    with op.batch_alter_table("players") as batch_op:
        batch_op.add_column(sa.Column("flag{n}", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.alter_column("name", existing_type=sa.String(100), type_=sa.Text())
""",
    """    op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_players_c{n} ON players (c{n})")
""",
]
SEED = """    op.bulk_insert(
        sa.table("positions", sa.column("id"), sa.column("code")),
        [{{"id": {n}, "code": "P{n}"}}, {{"id": {m}, "code": "Q{n}"}}],
    )
    op.execute("INSERT INTO labels (id, text) VALUES ({n}, 'label {n}')")
"""
OURS = [
    """    op.add_column("players", sa.Column("c{n}", sa.Integer(), nullable=True))
    op.queue_backfill("players_c{n}")
""",
    """    op.ensure_backfill_finished("players_c{n}")
    op.add_not_null("players", "c{n}")
""",
]
DATA_WORK = [
    """    op.execute("UPDATE players SET c{n} = (SELECT id FROM t{n} WHERE t{n}.name = players.team)")
""",
    """    bind = op.get_bind()
    bind.execute(sa.update(players).where(players.c.c{n}.is_(None)).values(c{n}=0))
""",
    """    session = orm.Session(bind=op.get_bind())
    for player in session.query(Player):
        player.c{n} = len(player.name or "")
    session.commit()
""",
    """    op.alter_column("players", "c{n}", existing_type=sa.Integer(), nullable=False)
""",
    """    op.queue_backfill("players_c{n}")
    op.ensure_backfill_finished("players_c{n}")
""",
    """    op.execute("UPDATE positions SET label = upper(code)")  # backfill: safe (11 rows, nobody writes them)
""",
]
MODELS = """
players = sa.table("players", sa.column("id"), sa.column("name"), sa.column("team"))
Base = orm.declarative_base()


class Player(Base):
    __tablename__ = "players"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.Text)
"""
DOWNGRADE = """

def downgrade() -> None:
    op.drop_index("ix_t{n}_name", table_name="t{n}")
    op.drop_table("t{n}")
"""


def revision_source(n: int, rng: random.Random) -> tuple[str, str]:
    """One revision and its kind: DDL only, seed rows, this project's operations, data work."""
    roll = rng.random()
    if roll < 0.55:
        kind, parts = "ddl", rng.sample(DDL, k=rng.randint(1, 3))
    elif roll < 0.68:
        kind, parts = "seed", [rng.choice(DDL), SEED]
    elif roll < 0.80:
        kind, parts = "backfill ops", [rng.choice(OURS)]
    else:
        kind, parts = "data work", [rng.choice(DDL), rng.choice(DATA_WORK)]
    body = "".join(p.format(n=n, m=n + 100_000) for p in parts)
    needs_models = "Player" in body or "players.c." in body
    header = HEADER.format(
        title=f"revision {n}: {kind}",
        revision=f"r{n:05d}",
        down=f"r{n - 1:05d}" if n else "",
        down_literal=f'"r{n - 1:05d}"' if n else "None",
        day=n % 9 + 1,
        minute=n % 60,
        imports="from sqlalchemy import orm\n\nimport backfill.alembic_ops  # noqa: F401\n" if needs_models else "",
    )
    source = header + (MODELS if needs_models else "") + "\n\ndef upgrade() -> None:\n" + body + DOWNGRADE.format(n=n)
    return kind, source


def generate(directory: Path, files: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    kinds: Counter[str] = Counter()
    for n in range(files):
        kind, source = revision_source(n, rng)
        kinds[kind] += 1
        (directory / f"r{n:05d}_{kind.replace(' ', '_')}.py").write_text(source, encoding="utf-8")
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=TARGET_FILES, help="revisions to generate (default 1,000)")
    parser.add_argument("--rounds", type=int, default=3, help="lint passes; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated mix")
    args = parser.parse_args(argv)
    if args.files < 1 or args.rounds < 1:
        parser.error("--files and --rounds must be positive")
    with tempfile.TemporaryDirectory(prefix="bench-lint-") as scratch:
        directory = Path(scratch) / "versions"
        directory.mkdir()
        kinds = generate(directory, args.files, args.seed)
        times: list[float] = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            report = lint_paths([directory], squawk=False)
            times.append(time.perf_counter() - started)
    assert report.files == args.files
    seconds = statistics.median(times)
    mix = ", ".join(f"{count:,} {kind}" for kind, count in sorted(kinds.items()))
    codes = ", ".join(f"{code} x{count}" for code, count in sorted(Counter(f.code for f in report.findings).items()))
    print(f"backfill lint: {args.files:,} revisions ({mix})")
    print(f"findings: {len(report.findings):,} ({codes})")
    print(
        f"wall time {seconds:.3f} s (median of {args.rounds}; min {min(times):.3f} s, max {max(times):.3f} s) "
        f"= {args.files / seconds:,.0f} files/s"
    )
    budget = TARGET_SECONDS * args.files / TARGET_FILES
    verdict = "PASS" if seconds < budget else "MISS"
    print(f"target: {args.files:,} revisions in under {budget:g} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
