"""The README's adoption section, executed as written: a project made with ``alembic init``,
its own ``orders`` table and definitions module, the revision that queues, the one that enforces
NOT NULL, and the deploy sequence — on PostgreSQL and MariaDB. The README cannot drift from the
code: change one and this test changes with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from tests.conftest import ROOT, Database

ORDERS = 3_000
BLOCK = re.compile(r"<!-- adoption: (?P<how>[^>]*?) -->\n```[a-z]*\n(?P<body>.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Step:
    how: str
    body: str


def readme_steps() -> list[Step]:
    section = (ROOT / "README.md").read_text()
    steps = [Step(m["how"].strip(), m["body"]) for m in BLOCK.finditer(section)]
    assert [s.how.split()[0] for s in steps].count("run") == 1, "the section has one deploy sequence"
    return steps


def make_project(tmp_path: Path, steps: list[Step]) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    alembic = Path(sys.executable).with_name("alembic")
    subprocess.run([str(alembic), "init", "migrations"], cwd=project, check=True, capture_output=True)
    env_py = project / "migrations" / "env.py"
    for step in steps:
        verb, _, rest = step.how.partition(" ")
        if verb == "write":
            target = project / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.body)
        elif verb == "env.py":
            after = re.fullmatch(r'after "(.*)"', rest)
            assert after, step.how
            source = env_py.read_text()
            assert after[1] + "\n" in source, f"alembic init's env.py has no line {after[1]!r}"
            source = source.replace(after[1] + "\n", after[1] + "\n\n" + step.body, 1)
            # "... and pass transaction_per_migration=True to each context.configure(...) call"
            assert source.count("target_metadata=target_metadata") == 2
            source = source.replace(
                "target_metadata=target_metadata", "target_metadata=target_metadata, transaction_per_migration=True"
            )
            env_py.write_text(source)
    return project


def sequence(steps: list[Step], url: str) -> list[str]:
    (run,) = [s for s in steps if s.how == "run"]
    lines = [line for line in run.body.splitlines() if line.strip()]
    return [f"export BACKFILL_DATABASE_URL={url}" if "BACKFILL_DATABASE_URL=" in line else line for line in lines]


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_the_readme_adoption_section_as_written(empty: Database, tmp_path: Path) -> None:
    db = empty
    with db.engine.begin() as connection:  # the application's table, there before backfill
        connection.execute(
            text(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL)"
            )
        )
        connection.execute(
            text("INSERT INTO orders (id, quantity, unit_price_cents) VALUES (:id, :q, :p)"),
            [{"id": i, "q": i % 7 + 1, "p": 100 + i % 13} for i in range(1, ORDERS + 1)],
        )
    steps = readme_steps()
    project = make_project(tmp_path, steps)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["COLUMNS"] = "200"
    script = "\n".join(sequence(steps, db.url))

    def shell(lines: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", lines], cwd=project, env=env, capture_output=True, text=True, timeout=300)

    commands = [line for line in script.splitlines() if not line.startswith("export ")]
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export "))
    outputs = []
    for command in commands:
        result = shell(f"set -e\n{exports}\n{command}")
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout + result.stderr)
        if command.startswith("BACKFILL_FINALIZE_MAX_ROWS"):
            # Too early: refused with the command to run, and nothing changed.
            assert "refused: not finished yet" in outputs[-1] and "FAILED:" in outputs[-1], outputs[-1]
            assert "backfill run orders_total_cents" in outputs[-1]
            assert "Traceback" not in outputs[-1]
            assert column_nullable(db) is True
            assert db.scalar("SELECT count(*) FROM orders WHERE total_cents IS NOT NULL") == 0

    assert "finished" in outputs[-2], outputs[-2]  # backfill status
    assert column_nullable(db) is False
    assert db.scalar("SELECT count(*) FROM orders WHERE total_cents = quantity * unit_price_cents") == ORDERS
    assert db.scalar("SELECT rows_done FROM backfill_runs WHERE name = 'orders_total_cents'") == ORDERS

    back = shell(f"{exports}\nalembic downgrade base")
    assert back.returncode == 0, back.stderr
    assert "total_cents" not in {c["name"] for c in inspect(db.engine).get_columns("orders")}
    assert not inspect(db.engine).has_table("backfill_runs")


def column_nullable(db: Database) -> bool:
    inspector = inspect(db.engine)
    (column,) = [c for c in inspector.get_columns("orders") if c["name"] == "total_cents"]
    return bool(column["nullable"])
