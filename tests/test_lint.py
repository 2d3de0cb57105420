"""``backfill lint``, as a user meets it: what it flags in a revision (the code and the line), what
it leaves alone, how a reviewed ``# backfill: safe (reason)`` silences a finding, what the
command prints and exits with, and what squawk adds on PostgreSQL.

No database is needed, except SQLite files where a generated skeleton is run for real: the
definition it prints must be one the project accepts and runs. Expected line numbers are read
from the fixtures (the line holding the flagged code), so a fixture can be edited without
rewriting the tests, and a finding on the wrong line still fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import sqlalchemy as sa

from backfill import App, Registry
from backfill.cli import entry_point
from backfill.database import make_engine
from backfill.lint import Report, lint_paths, squawk

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lint"
SQUAWK_PROJECT = FIXTURES / "squawk_project"
BIN = Path(sys.executable).parent
SQUAWK = shutil.which("squawk", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
needs_squawk = pytest.mark.skipif(SQUAWK is None, reason="squawk is not installed: pip install squawk-cli")


def lint(*paths: Path | str, **options: object) -> Report:
    options.setdefault("squawk", False)
    return lint_paths([Path(p) for p in paths], **options)  # type: ignore[arg-type]


def line_of(path: Path, text: str, occurrence: int = 1) -> int:
    """The number of the line of ``path`` holding ``text`` (its ``occurrence``-th such line)."""
    found = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if text in line]
    assert len(found) >= occurrence, f"{text!r} is not in {path}"
    return found[occurrence - 1]


def found(report: Report) -> list[tuple[str, int]]:
    return [(f.code, f.line) for f in report.findings]


def revision(tmp_path: Path, body: str, name: str = "r1_revision.py", prelude: str = "") -> Path:
    """A revision file whose ``upgrade()`` is ``body`` (and whatever ``prelude`` defines)."""
    path = tmp_path / name
    path.write_text(
        "import sqlalchemy as sa\n"
        "from alembic import op\n"
        "from sqlalchemy import delete, insert, orm, select, text, update\n"
        "from sqlalchemy.orm import Session, sessionmaker\n"
        "\n"
        'revision = "r1"\n'
        "down_revision = None\n"
        'players = sa.table("players", sa.column("id"), sa.column("team"), sa.column("team_id"))\n'
        'teams = sa.table("teams", sa.column("id"), sa.column("name"))\n'
        f"{textwrap.dedent(prelude)}\n"
        "\n"
        "def upgrade():\n"
        f"{textwrap.indent(textwrap.dedent(body), '    ')}\n"
        "\n"
        "def downgrade():\n"
        "    pass\n"
    )
    return path


def definition(skeleton: str) -> str:
    """Part 1 of a printed skeleton: the definition module's code."""
    return skeleton.split("\n# 2. ")[0]


def players_and_teams(tmp_path: Path) -> str:
    """A SQLite database with players whose team is a name, teams to point them at."""
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
        connection.exec_driver_sql("CREATE TABLE players (id INTEGER PRIMARY KEY, team TEXT, team_id INTEGER)")
        connection.exec_driver_sql("INSERT INTO teams (id, name) VALUES (1, 'ajax'), (2, 'boca')")
        for n in range(1, 301):
            connection.execute(
                sa.text("INSERT INTO players (id, team) VALUES (:id, :team)"),
                {"id": n, "team": "ajax" if n % 3 else "boca"},
            )
    engine.dispose()
    return url


def run_definition(source: str, url: str) -> dict[int, int]:
    """Load the printed definition, run it to the end with the inline runner, and return each
    player's team_id."""
    namespace: dict[str, object] = {}
    exec(compile(source, "<skeleton>", "exec"), namespace)  # the linter's own output, under test
    backfills = [v for v in namespace.values() if type(v).__name__ == "Backfill"]
    assert len(backfills) == 1
    engine = make_engine(url)
    try:
        app = App(engine, Registry.of(*backfills))  # type: ignore[arg-type]
        app.init_db()
        final = app.run(backfills[0].name)  # type: ignore[attr-defined]
        assert final.status.value == "finished"
        with engine.connect() as connection:
            return dict(connection.exec_driver_sql("SELECT id, team_id FROM players").all())
    finally:
        engine.dispose()


# --- what is flagged -------------------------------------------------------------------------


def test_the_seed_style_orm_loop_is_flagged_at_its_session_and_its_loop() -> None:
    path = FIXTURES / "seed_orm_loop.py"
    report = lint(path)
    assert found(report) == [
        ("BF003", line_of(path, "orm.Session(bind=op.get_bind())")),
        ("BF004", line_of(path, "for player in session.query(Player):")),
    ]
    loop = report.findings[1]
    assert '@define(table="players", key="id", pending="team_id IS NULL", columns="team_id")' in loop.skeleton
    assert 'op.queue_backfill("players_team_id")' in loop.skeleton
    assert "row-by-row" in loop.message


def test_a_raw_update_is_flagged_and_its_skeleton_names_the_table_and_the_column(tmp_path: Path) -> None:
    path = FIXTURES / "raw_update.py"
    report = lint(path)
    upgrade_line = line_of(path, 'op.execute("UPDATE players SET team_id = (SELECT')
    assert found(report) == [("BF001", upgrade_line), ("BF001", line_of(path, "SET team_id = NULL"))]
    fix = report.findings[0]
    assert fix.col == len("    ") + 1
    skeleton = fix.skeleton or ""
    assert '@define(table="players", key="id", pending="team_id IS NULL", columns="team_id")' in skeleton
    assert 'op.queue_backfill("players_team_id")' in skeleton
    assert 'op.ensure_backfill_finished("players_team_id")' in skeleton
    assert 'op.add_not_null("players", "team_id")' in skeleton
    assert "op.queue_backfill('players_team_id')" in fix.fix
    downgrade = report.findings[1]
    assert 'op.run_backfill("players_team_id")' in (downgrade.skeleton or "")
    assert "op.queue_backfill" not in (downgrade.skeleton or "")

    teams = run_definition(definition(skeleton), players_and_teams(tmp_path))
    assert set(teams.values()) == {1, 2} and len(teams) == 300
    assert teams[3] == 2 and teams[4] == 1


def test_a_core_update_through_get_bind_is_flagged_and_its_skeleton_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = FIXTURES / "core_update.py"
    report = lint(path)
    assert found(report) == [("BF002", line_of(path, "bind.execute("))]
    skeleton = report.findings[0].skeleton or ""
    assert "batch.where(players.c.id)" in skeleton
    assert 'op.add_not_null("players", "team_id")' in skeleton

    models = types.ModuleType("myapp.models")
    models.players = sa.table("players", sa.column("id"), sa.column("team"), sa.column("team_id"))  # type: ignore[attr-defined]
    models.teams = sa.table("teams", sa.column("id"), sa.column("name"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myapp", types.ModuleType("myapp"))
    monkeypatch.setitem(sys.modules, "myapp.models", models)
    teams = run_definition(definition(skeleton), players_and_teams(tmp_path))
    assert teams[3] == 2 and teams[4] == 1 and None not in teams.values()


def test_a_row_by_row_loop_is_one_finding_at_the_loop_not_one_per_statement_in_it() -> None:
    path = FIXTURES / "row_loop.py"
    report = lint(path)
    assert found(report) == [("BF004", line_of(path, "for row in bind.execute("))]
    assert '@define(table="players"' in (report.findings[0].skeleton or "")


def test_not_null_on_an_existing_column_is_flagged_in_upgrade_only() -> None:
    path = FIXTURES / "alter_not_null.py"
    report = lint(path)
    assert found(report) == [
        ("BF005", line_of(path, 'op.alter_column("players", "team_id"')),
        ("BF005", line_of(path, 'batch_op.alter_column("name"')),
        ("BF005", line_of(path, "SET NOT NULL")),
    ]
    assert 'op.add_not_null("players", "team_id")' in (report.findings[0].skeleton or "")
    assert 'op.add_not_null("teams", "name")' in (report.findings[1].skeleton or "")
    assert 'op.add_not_null("players", "position")' in (report.findings[2].skeleton or "")


def test_a_backfill_queued_and_required_finished_in_one_revision_is_flagged() -> None:
    path = FIXTURES / "queue_and_ensure.py"
    report = lint(path)
    assert found(report) == [("BF006", line_of(path, "op.ensure_backfill_finished("))]
    assert "next revision" in report.findings[0].fix
    assert 'op.ensure_backfill_finished("players_team_id")' in (report.findings[0].skeleton or "")


@pytest.mark.parametrize(
    ("body", "code", "at"),
    [
        ('op.execute(f"UPDATE {TABLE} SET team_id = 0")', "BF001", ""),
        ('op.execute(sa.text("update players set team_id = 0"))', "BF001", ""),
        (
            'op.execute("""\n    -- fill the column\n    /* all of it */\n    UPDATE players SET team_id = 0\n""")',
            "BF001",
            "",
        ),
        ('op.get_bind().execute(text("UPDATE players SET team_id = 0"))', "BF001", ""),
        ('conn = op.get_bind()\nconn.execute(text("DELETE FROM players WHERE team IS NULL"))', "BF001", "conn.execute"),
        ('op.execute("INSERT INTO teams (name) SELECT DISTINCT team FROM players")', "BF001", ""),
        ("op.execute(FILL)", "BF001", ""),
        ('stmt = "UPDATE players SET team_id = 0"\nop.execute(stmt)', "BF001", "op.execute(stmt)"),
        ('op.execute("CREATE INDEX ix_p ON players (team); UPDATE players SET team_id = 0")', "BF001", ""),
        ("op.execute(players.update().values(team_id=0))", "BF002", ""),
        ("op.execute(sa.delete(players).where(players.c.team.is_(None)))", "BF002", ""),
        ("bind = op.get_bind()\nbind.execute(update(players).values(team_id=0))", "BF002", "bind.execute"),
        ("stmt = update(players).values(team_id=0)\nop.get_bind().execute(stmt)", "BF002", "execute(stmt)"),
        ('op.execute(insert(teams).from_select(["name"], select(players.c.team).distinct()))', "BF002", ""),
        ("session = Session(op.get_bind())", "BF003", ""),
        ("factory = sessionmaker(bind=op.get_bind())", "BF003", ""),
        ("with orm.Session(bind=op.get_bind()) as session:\n    session.commit()", "BF003", ""),
        (
            'result = op.get_bind().execute(text("SELECT id FROM players"))\nfor row in result.fetchall():\n'
            '    op.get_bind().execute(text("UPDATE players SET team_id = 1 WHERE id = :id"), {"id": row.id})',
            "BF004",
            "for row in",
        ),
        ('op.execute("ALTER TABLE players MODIFY team_id INT NOT NULL")', "BF005", ""),
        ('op.execute("ALTER TABLE players CHANGE COLUMN team_id team_id INT NOT NULL")', "BF005", ""),
        ('op.alter_column(table_name="players", column_name="team_id", nullable=False)', "BF005", ""),
        ('op.queue_backfill("a")\nop.ensure_backfill_finished("a")', "BF006", "ensure_backfill_finished"),
        ("fill(op.get_bind())", "BF001", 'connection.execute(text("UPDATE players SET team_id = 1"))'),
    ],
)
def test_every_spelling_of_data_work_is_flagged(tmp_path: Path, body: str, code: str, at: str) -> None:
    """``at`` is the flagged line's text when it is not the body's first line (a helper the
    upgrade calls is read too)."""
    prelude = """
        TABLE = "players"
        FILL = "UPDATE players SET team_id = 0"


        def fill(connection):
            connection.execute(text("UPDATE players SET team_id = 1"))
    """
    path = revision(tmp_path, body, prelude=prelude)
    report = lint(path)
    expected = line_of(path, at or body.splitlines()[0])
    assert found(report) == [(code, expected)], report.text()


# --- what is left alone ----------------------------------------------------------------------


def test_the_projects_own_migrations_are_clean() -> None:
    """The BF rules only: squawk's findings on these revisions are real PostgreSQL lock hazards
    of the example (its index and foreign key on players, see the squawk tests below), which
    keep the example's revisions short; they are not data work."""
    report = lint(ROOT / "migrations")
    assert report.findings == (), report.text()
    assert report.files == len(list((ROOT / "migrations").rglob("*.py")))


def test_ddl_seed_rows_and_nullable_changes_are_left_alone() -> None:
    report = lint(FIXTURES / "clean")
    assert report.findings == (), report.text()
    assert report.files == 4


@pytest.mark.parametrize(
    "body",
    [
        "op.execute(\"INSERT INTO teams (name) VALUES ('a'), ('b')\")",
        "op.execute(\"insert into teams (name) select 'c'\")",
        "op.execute(insert(teams).values(name='a'))",
        'op.bulk_insert(teams, [{"name": "a"}])',
        'op.add_column("players", sa.Column("age", sa.Integer, nullable=False, server_default="0"))',
        'op.alter_column("players", "team_id", nullable=True)',
        'op.alter_column("players", "team_id", existing_nullable=False, type_=sa.BigInteger)',
        'op.execute("ALTER TABLE players ADD COLUMN age int NOT NULL DEFAULT 0")',
        'op.queue_backfill("a")\nop.ensure_backfill_finished("b")\nop.add_not_null("players", "team_id")',
        'op.run_backfill("a")',
        'rows = op.get_bind().execute(text("SELECT id FROM players")).fetchall()\nseen = set()\nfor row in rows:\n    seen.add(row.id)',
        'op.execute("SELECT count(*) FROM players")',
        "teams_by_name = {}\nteams_by_name.update({'a': 1})",
    ],
)
def test_what_is_not_a_backfill_is_not_flagged(tmp_path: Path, body: str) -> None:
    report = lint(revision(tmp_path, body))
    assert report.findings == (), report.text()


def test_only_what_a_deploy_runs_is_read(tmp_path: Path) -> None:
    path = tmp_path / "r2_helpers.py"
    path.write_text(
        "from alembic import op\n"
        'op_sql = "UPDATE players SET team_id = 0"\n'
        "\n"
        "def unused():\n"
        '    op.execute("UPDATE players SET team_id = 0")\n'
        "\n"
        "def upgrade():\n"
        '    op.alter_column("players", "team_id", nullable=True)\n'
        "\n"
        "def downgrade():\n"
        '    op.alter_column("players", "team_id", nullable=False)\n'
    )
    assert lint(path).findings == ()


def test_the_revision_is_read_never_imported(tmp_path: Path) -> None:
    path = revision(tmp_path, 'op.execute("UPDATE players SET team_id = 0")', prelude='raise SystemExit("imported")')
    assert [f.code for f in lint(path).findings] == ["BF001"]


# --- suppression -----------------------------------------------------------------------------


def test_a_marker_with_a_reason_silences_its_finding_and_one_without_does_not() -> None:
    path = FIXTURES / "suppressed.py"
    report = lint(path)
    bare = line_of(path, "DELETE FROM players")
    empty = line_of(path, "trim(name)")
    assert found(report) == [("BF001", bare), ("BF007", bare), ("BF001", empty), ("BF007", empty)]
    silenced = {line_of(path, "UPDATE positions"), line_of(path, "op.execute(", 2)}
    assert not silenced & {f.line for f in report.findings}


def test_a_trailing_marker_does_not_reach_the_next_statement(tmp_path: Path) -> None:
    body = (
        'op.execute("UPDATE positions SET label = code")  # backfill: safe (11 rows)\n'
        'op.execute("UPDATE players SET team_id = 0")'
    )
    path = revision(tmp_path, body)
    assert found(lint(path)) == [("BF001", line_of(path, "UPDATE players"))]


# --- the command -----------------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = 0
    try:
        entry_point(["lint", *args])
    except SystemExit as exited:
        code = int(exited.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_exits_0_when_clean_and_1_on_findings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([str(FIXTURES / "clean"), "--no-squawk"], capsys)
    assert code == 0 and out.strip() == "no findings in 4 files"

    path = FIXTURES / "raw_update.py"
    code, out, _ = run_cli([str(path), "--no-squawk"], capsys)
    assert code == 1
    lines = out.splitlines()
    first = re.compile(
        rf"^(?P<path>\S+):{line_of(path, 'SET team_id = (SELECT')}:5: BF001 UPDATE on players .* — move it"
    )
    assert first.match(lines[0]), lines[0]
    assert '@define(table="players"' in out
    assert lines[-1] == "2 findings in 1 of 1 file (BF001 x2)"


def test_json_lists_the_findings_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "alter_not_null.py"
    code, out, _ = run_cli([str(path), "--json", "--no-squawk"], capsys)
    assert code == 1
    findings = json.loads(out)
    assert [(f["code"], f["line"]) for f in findings] == [("BF005", line_of(path, 'op.alter_column("players"')), ("BF005", line_of(path, "batch_op.alter_column")), ("BF005", line_of(path, "SET NOT NULL"))]  # fmt: skip
    assert set(findings[0]) == {"path", "line", "col", "code", "message", "fix", "skeleton"}
    assert 'op.add_not_null("players", "team_id")' in findings[0]["skeleton"]


def test_with_no_paths_it_lints_the_versions_of_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    shutil.copy(FIXTURES / "queue_and_ensure.py", tmp_path / "migrations" / "versions")
    ini = tmp_path / "deploy.ini"
    ini.write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    code, out, _ = run_cli(["--config", str(ini), "--no-squawk"], capsys)
    assert code == 1
    assert "queue_and_ensure.py:" in out.splitlines()[0] and " BF006 " in out.splitlines()[0]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["no/such/revision.py"], "no/such/revision.py does not exist"),
        (["--config", "no/such/alembic.ini"], "no/such/alembic.ini not found"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {said}") and err.count("\n") == 1


def test_a_file_that_does_not_parse_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "r9_broken.py"
    broken.write_text("def upgrade(:\n    pass\n")
    code, out, err = run_cli([str(broken), "--no-squawk"], capsys)
    assert code == 2 and out == ""
    assert "r9_broken.py:1: not valid Python" in err and err.count("\n") == 1


def backfill_command(args: list[str], cwd: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """``backfill lint`` as a subprocess, with no application and no database configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [str(BIN / "backfill"), "lint", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_installed_command_needs_no_app_and_no_database(tmp_path: Path) -> None:
    missing = backfill_command(["nowhere.py"], tmp_path)
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == "error: nowhere.py does not exist: give revision files or the directories that hold them"
    )
    assert "Traceback" not in missing.stderr

    (tmp_path / "alembic.ini").write_text(f"[alembic]\nscript_location = {ROOT / 'migrations'}\n")
    clean = backfill_command([], tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.strip() == f"no findings in {len(list((ROOT / 'migrations' / 'versions').glob('*.py')))} files"


# --- squawk ----------------------------------------------------------------------------------


def test_without_squawk_one_line_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(squawk, "squawk_executable", lambda: None)
    code, _, err = run_cli(["--config", str(SQUAWK_PROJECT / "alembic.ini")], capsys)
    assert code == 0, err
    said = [line for line in err.splitlines() if "squawk" in line]
    assert len(said) == 1 and "not installed" in said[0] and "pip install squawk-cli" in said[0]


@needs_squawk
def test_squawk_beside_this_python_is_found_without_it_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``.venv/bin/backfill lint`` from a shell that never activated the virtualenv."""
    monkeypatch.setenv("PATH", "/nonexistent")
    found = squawk.squawk_executable()
    assert found is not None and Path(found).parent == Path(sys.executable).parent


@needs_squawk
def test_squawk_flags_a_non_concurrent_index_at_its_create_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    report = lint_paths(config=SQUAWK_PROJECT / "alembic.ini")
    index = SQUAWK_PROJECT / "versions" / "s2_clubs_city_index.py"
    assert ("squawk/require-concurrent-index-creation", line_of(index, "op.create_index(")) in found(report)
    assert all("s1_clubs.py" not in f.path for f in report.findings), report.text()
    assert report.notes == ()


@needs_squawk
def test_a_marker_silences_a_squawk_finding_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    shutil.copytree(SQUAWK_PROJECT, project)
    index = project / "versions" / "s2_clubs_city_index.py"
    index.write_text(index.read_text().replace(
        '    op.create_index("ix_clubs_city", "clubs", ["city"])',
        '    op.create_index("ix_clubs_city", "clubs", ["city"])  # backfill: safe (clubs holds 30 rows)',
    ))  # fmt: skip
    monkeypatch.setenv("PATH", os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    assert lint_paths(config=project / "alembic.ini").findings == ()


@needs_squawk
def test_squawk_on_the_projects_own_migrations_pins_each_hazard_to_its_operation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The example's deploy N adds its foreign key NOT VALID and builds its index CONCURRENTLY, so
    squawk finds no scan or build on players that blocks writers; what it does find (0005 drops
    a column) is pinned to the operation's line. The operations of backfill.alembic_ops (0002's
    tables, 0004's validation and add_not_null) and Alembic's bookkeeping are never reported."""
    monkeypatch.setenv("PATH", os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    monkeypatch.chdir(ROOT)
    report = lint_paths(config=ROOT / "alembic.ini", database_url=POSTGRES_URL)
    blocking = {
        "squawk/require-concurrent-index-creation",
        "squawk/adding-foreign-key-constraint",
        "squawk/constraint-missing-not-valid",
    }
    assert not [f for f in report.findings if f.code in blocking], report.text()
    drop = ROOT / "migrations" / "versions" / "0005_drop_players_team.py"
    assert ("squawk/ban-drop-column", line_of(drop, "batch.drop_column(")) in found(report)
    assert not [f for f in report.findings if "0002_" in f.path or "0004_" in f.path], report.text()
    assert all(f.code.startswith("squawk/") for f in report.findings)


def test_squawk_is_not_run_without_a_postgresql_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "squawk").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "squawk").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("BACKFILL_DATABASE_URL", raising=False)
    report = lint_paths(config=ROOT / "alembic.ini", database_url="sqlite:///app.db")
    assert report.findings == ()
    assert len(report.notes) == 1 and "needs a PostgreSQL URL" in report.notes[0]


def test_the_pre_commit_hook_runs_on_revisions_only() -> None:
    import yaml

    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "backfill-lint" and hook["entry"] == "backfill lint" and hook["language"] == "python"
    assert hook["pass_filenames"] is True
    files = re.compile(hook["files"])
    for path in ("migrations/versions/0003_teams.py", "app/alembic/versions/a1_x.py"):
        assert files.search(path), path
    for path in ("migrations/env.py", "backfill/cli.py", "migrations/versions/README"):
        assert not files.search(path), path


def test_not_null_on_a_table_created_in_the_same_upgrade_is_instant_and_not_flagged(tmp_path: Path) -> None:
    body = (
        'op.create_table("clubs", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))\n'
        'op.alter_column("clubs", "name", nullable=False)\n'
        'op.alter_column("players", "team_id", nullable=False)'
    )
    path = revision(tmp_path, body)
    assert found(lint(path)) == [("BF005", line_of(path, '"players", "team_id", nullable=False'))]


def test_an_alembic_ini_nobody_asked_for_that_is_broken_only_skips_squawk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\nsqlalchemy.url = postgresql://app@db/app\n")
    monkeypatch.chdir(tmp_path)
    report = lint_paths([FIXTURES / "row_loop.py"])
    assert [f.code for f in report.findings] == ["BF004"]
    assert len(report.notes) == 1 and "no script_location" in report.notes[0]
