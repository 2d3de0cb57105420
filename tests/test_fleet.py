"""One backfill across a fleet: two PostgreSQL databases and two tenant schemas, driven through
the real ``backfill`` command as an operator drives it; every row done exactly once on every
member, each member's checkpoints beside its own data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, make_url, text

from backfill import App, BatchStatus
from backfill.errors import ConfigurationError
from backfill.fleet import Member, engine_for, load, select
from backfill.store import BatchRecord
from tests.apps.fleet_app import TENANTS_ENV
from tests.conftest import ROOT, SERVERS, database_of_this_run, service_missing
from tests.helpers import fetch, free_port, one_error_line, wait_for
from tests.workers_cluster import REDIS_START, REDIS_URL, TEST_SETTINGS, Cluster

ROWS = {"shard_a": 500, "shard_b": 700, "tenant_t1": 300, "tenant_t2": 200}


@dataclass(frozen=True)
class Fleet:
    file: Path
    members: dict[str, Member]

    def cli(self, *args: str, fleet: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "BACKFILL_APP": "tests.apps.fleet_app", "COLUMNS": "200", **env}
        environment["BACKFILL_FLEET"] = fleet if fleet is not None else str(self.file)
        environment.pop("BACKFILL_DATABASE_URL", None)
        return subprocess.run(
            [sys.executable, "-m", "backfill", *args], cwd=ROOT, env=environment, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip

    def rows(self, name: str) -> tuple[int, int, int]:
        """(rows, sum of n, rows with v set) of a member's table."""
        member = self.members[name]
        engine = create_engine(member.url)
        table = f'"{member.schema}".fleet_items' if member.schema else "fleet_items"
        try:
            with engine.connect() as connection:
                found = connection.execute(text(f"SELECT count(*), sum(n), count(v) FROM {table}")).one()
        finally:
            engine.dispose()
        return int(found[0]), int(found[1]), int(found[2])

    def checkpoint_schemas(self, url: str) -> set[str]:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                return set(
                    connection.execute(
                        text("SELECT schemaname FROM pg_tables WHERE tablename = 'backfill_runs'")
                    ).scalars()
                )
        finally:
            engine.dispose()


def _fill(url: str, schema: str | None, rows: int) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    where = f'"{schema}".' if schema else ""
    with engine.connect() as connection:
        if schema:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        connection.execute(text(f"CREATE TABLE {where}fleet_items (id int PRIMARY KEY, n int NOT NULL, v int)"))
        connection.execute(text(f"INSERT INTO {where}fleet_items SELECT g, g, NULL FROM generate_series(1, {rows}) g"))
    engine.dispose()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    first = database_of_this_run(SERVERS["postgres"])
    second = database_of_this_run(SERVERS["postgres"])
    url_a, url_b = next(first), next(second)
    members = {
        "shard_a": Member("shard_a", url_a),
        "shard_b": Member("shard_b", url_b),
        "tenant_t1": Member("tenant_t1", url_a, "t1"),
        "tenant_t2": Member("tenant_t2", url_a, "t2"),
    }
    for name, member in members.items():
        _fill(member.url, member.schema, ROWS[name])
    file = tmp_path / "fleet.toml"
    file.write_text(
        f'url = "{url_a}"\n\n[members.shard_a]\n\n[members.shard_b]\nurl = "{url_b}"\n\n'
        '[members.tenant_t1]\nschema = "t1"\n\n[members.tenant_t2]\nschema = "t2"\n'
    )
    yield Fleet(file, members)
    for generator in (first, second):
        next(generator, None)


def test_one_backfill_runs_on_every_member_exactly_once_and_reports_as_one(fleet: Fleet) -> None:
    ready = fleet.cli("init-db")
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.splitlines() == [f"{name}: checkpoint tables ready" for name in ROWS]
    # each member's checkpoints beside its data: in its database, or in its tenant's schema
    assert fleet.checkpoint_schemas(fleet.members["shard_a"].url) == {"public", "t1", "t2"}
    assert fleet.checkpoint_schemas(fleet.members["shard_b"].url) == {"public"}

    started = fleet.cli("start", "items_v", "--member", "tenant_*")
    assert started.returncode == 0, started.stderr
    assert [line.split(":")[0] for line in started.stdout.splitlines()] == ["tenant_t1", "tenant_t2"]
    assert "tenant_t1: started items_v: run 1, 300 rows" in started.stdout

    # shards without a run yet: the fleet is not finished, and wait says where
    waited = fleet.cli("wait", "items_v", "--timeout", "1")
    assert waited.returncode != 0
    assert "error: shard_a: " in waited.stderr and "has never run" in waited.stderr
    assert "not finished on 4 member(s): shard_a, shard_b, tenant_t1 (items_v running), tenant_t2" in waited.stderr

    ran = fleet.cli("run", "items_v", "--no-progress")
    assert ran.returncode == 0, ran.stderr
    for name, rows in ROWS.items():
        assert f"{name}: items_v: run 1 finished: {rows} rows" in ran.stdout
        # every row once: n went up by exactly one on every row of every member
        assert fleet.rows(name) == (rows, rows * (rows + 1) // 2 + rows, rows)

    status = fleet.cli("status", "items_v")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    for name, rows in ROWS.items():
        assert any(line.startswith(name) and "finished" in line and f"{rows:,} / {rows:,}" in line for line in lines)
    total = sum(ROWS.values())
    assert any(
        line.startswith("all 4") and "4 of 4 finished" in line and f"{total:,} / {total:,}" in line for line in lines
    )

    waited = fleet.cli("wait", "items_v")
    assert waited.returncode == 0, waited.stderr
    assert len(waited.stdout.splitlines()) == 4


def test_a_member_that_is_down_is_its_own_line_and_the_rest_go_on(fleet: Fleet, tmp_path: Path) -> None:
    down = (
        make_url(fleet.members["shard_b"].url).set(port=1, password="s3cret-pw").render_as_string(hide_password=False)
    )
    file = tmp_path / "with_one_down.toml"
    file.write_text(fleet.file.read_text().replace(f'url = "{fleet.members["shard_b"].url}"', f'url = "{down}"'))
    ready = fleet.cli("init-db", fleet=str(file))
    assert ready.returncode == 1
    assert "shard_a: checkpoint tables ready" in ready.stdout and "tenant_t2: checkpoint tables ready" in ready.stdout
    assert ready.stderr.startswith("error: shard_b: cannot connect to")
    assert "Traceback" not in ready.stderr and "s3cret-pw" not in ready.stderr + ready.stdout

    started = fleet.cli("start", "items_v", fleet=str(file))
    assert started.returncode == 1
    assert started.stdout.count("started items_v") == 3

    status = fleet.cli("status", fleet=str(file))
    assert status.returncode == 1
    row = next(line for line in status.stdout.splitlines() if line.startswith("shard_b"))
    assert "unreadable" in row and "s3cret-pw" not in status.stdout
    members_running = [
        line.split()[0] for line in status.stdout.splitlines() if line.split()[1:4] == ["items_v", "1", "running"]
    ]
    assert members_running == ["shard_a", "tenant_t1", "tenant_t2"]
    assert any(
        line.startswith("all 3") and "0 of 3 finished (3 running)" in line for line in status.stdout.splitlines()
    )


def test_members_from_a_callable_in_the_definitions_module(fleet: Fleet) -> None:
    tenants = f"{fleet.members['shard_a'].url}|t1,t2"
    ready = fleet.cli("init-db", fleet=":tenants", **{TENANTS_ENV: tenants})
    assert ready.returncode == 0, ready.stderr
    ran = fleet.cli(
        "run", "items_v", "--no-progress", "--member", "tenant_t2", fleet=":tenants", **{TENANTS_ENV: tenants}
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("tenant_t2: items_v: run 1 finished: 200 rows")
    assert fleet.rows("tenant_t2") == (200, 200 * 201 // 2 + 200, 200)
    assert fleet.rows("tenant_t1")[2] == 0  # not selected: untouched


@pytest.mark.parametrize(
    ("spec", "args", "expected"),
    [
        ("/no/such/fleet.toml", ["status"], "fleet file '/no/such/fleet.toml' does not exist"),
        ("a=postgresql://u@h/db a=postgresql://u@h/db2", ["status"], "names member 'a' twice"),
        ("a=postgresql://u@h/db", ["status", "--member", "b*"], "no fleet member matches --member 'b*'"),
        ("bad name=postgresql://u@h/db", ["status"], "is not NAME=URL"),
        (":no_such_callable", ["status"], "has no callable 'no_such_callable'"),
        ("", ["status", "--member", "a"], "--member needs a fleet"),
    ],
)
def test_a_bad_fleet_is_one_line(fleet: Fleet, spec: str, args: list[str], expected: str) -> None:
    result = fleet.cli(*args, fleet=spec)
    assert result.returncode == 2
    assert expected in one_error_line(result)


def test_fleet_declarations_are_read_and_checked(tmp_path: Path) -> None:
    file = tmp_path / "fleet.toml"
    file.write_text('url = "postgresql://app:pw@db/app"\n[members.acme]\nschema = "tenant_acme"\n[members.s2]\n'
                    'url = "mysql+pymysql://root@h/db"\n')  # fmt: skip
    members = load(str(file))
    assert members == (
        Member("acme", "postgresql://app:pw@db/app", "tenant_acme"),
        Member("s2", "mysql+pymysql://root@h/db"),
    )
    assert "pw" not in members[0].describe() and "schema tenant_acme" in members[0].describe()
    assert select(members, ["s*"]) == (members[1],)
    assert load(None) is None and load("  ") is None
    for bad, said in [
        ('[members.x]\nschema = "t"\nurl = "mysql+pymysql://root@h/db"\n', "a tenant schema needs PostgreSQL"),
        ("[members.x]\n", "has no database URL"),
        ('[members.x]\nurl = "postgresql://h/db"\nport = 5\n', "unknown key(s) port"),
        ("members = [", "is not valid TOML"),
        ('url = "postgresql://h/db"\n', "has no [members.NAME] tables"),
    ]:
        file.write_text(bad)
        with pytest.raises(ConfigurationError, match=None) as raised:
            load(str(file))
        assert said in str(raised.value)


def test_one_celery_deployment_serves_every_member(fleet: Fleet, tmp_path: Path) -> None:
    """Two workers and one scheduler for the whole fleet: each message names its member, and a
    worker SIGKILLed mid-run costs nothing but a retried batch."""
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        service_missing("Redis", REDIS_START, exc)
    assert fleet.cli("init-db").returncode == 0
    started = fleet.cli("start", "items_v_slow", "--batch-size", "50")
    assert started.returncode == 0, started.stderr
    cluster = Cluster(
        fleet.members["shard_a"].url, tmp_path, app="tests.apps.fleet_app", label="fleet",
        BACKFILL_FLEET=str(fleet.file), **TEST_SETTINGS,
    )  # fmt: skip
    shard_b = App.from_settings(app=None, database_url=fleet.members["shard_b"].url).store
    try:
        cluster.start_worker("w1", concurrency=2)
        cluster.start_worker("w2", concurrency=2)
        cluster.start_scheduler()

        def running_batch() -> BatchRecord | None:
            run = shard_b.latest_run("items_v_slow")
            running = shard_b.batches_of(run.id, BatchStatus.RUNNING) if run and run.batches_done >= 2 else []
            return running[0] if running else None

        victim = wait_for(running_batch, timeout=60, what="a running batch of shard_b after two done")
        assert victim.worker is not None
        os.kill(int(victim.worker.split(":")[1]), signal.SIGKILL)
        waited = fleet.cli("wait", "items_v_slow", "--timeout", "120")
        assert waited.returncode == 0, waited.stdout + waited.stderr
    finally:
        cluster.stop(graceful=False)
    for name, rows in ROWS.items():
        assert fleet.rows(name) == (rows, rows * (rows + 1) // 2 + rows, rows)
    run = shard_b.latest_run("items_v_slow")
    assert run is not None
    again = next(b for b in shard_b.batches_of(run.id) if b.id == victim.id)
    assert again.attempts >= 2 and again.status is BatchStatus.SUCCEEDED
    shard_b.engine.dispose()


def test_operator_actions_apply_where_they_can_and_a_poisoned_member_fails_alone(fleet: Fleet) -> None:
    assert fleet.cli("init-db").returncode == 0
    assert fleet.cli("run", "items_v", "--no-progress", "--member", "shard_a").returncode == 0
    assert fleet.cli("start", "items_v", "--member", "tenant_*").returncode == 0

    paused = fleet.cli("pause", "items_v")
    assert paused.returncode == 0, paused.stderr
    assert "shard_a: skipped: backfill 'items_v' has no active run: its latest run (1) is finished" in paused.stdout
    assert "shard_b: skipped: backfill 'items_v' has no active run: it has never run" in paused.stdout
    assert (
        "tenant_t1: items_v: run 1 is paused" in paused.stdout
        and "tenant_t2: items_v: run 1 is paused" in paused.stdout
    )

    nowhere = fleet.cli("cancel", "items_v", "--member", "shard_*")
    assert nowhere.returncode == 2
    assert "on no member of the fleet: backfill 'items_v' has no active run" in nowhere.stderr
    assert "tenant" not in nowhere.stdout

    assert fleet.cli("resume", "items_v", "--member", "tenant_*").returncode == 0
    # tenant_t1's data is poisoned: n * 2 overflows an int on one row, so one batch fails
    engine = create_engine(fleet.members["tenant_t1"].url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE t1.fleet_items SET n = 2000000000 WHERE id = 7"))
    ran = fleet.cli("run", "items_v", "--no-progress", "--member", "tenant_*", "--max-attempts", "1")
    assert ran.returncode == 1
    assert "error: tenant_t1: items_v: run 1 failed" in ran.stderr and "out of range" in ran.stderr
    assert "tenant_t2: items_v: run 1 finished: 200 rows" in ran.stdout
    with engine.begin() as connection:
        connection.execute(text("UPDATE t1.fleet_items SET n = 7 WHERE id = 7"))
    engine.dispose()
    retried = fleet.cli("retry", "items_v", "--member", "tenant_t1")
    assert retried.returncode == 0, retried.stderr
    assert fleet.cli("run", "items_v", "--no-progress", "--member", "tenant_t1").returncode == 0
    assert fleet.rows("tenant_t1") == (300, 300 * 301 // 2 + 300, 300)
    assert fleet.cli("wait", "items_v", "--member", "shard_a", "--member", "tenant_*").returncode == 0


def test_the_fleets_cap_holds_over_every_member_and_each_gets_its_share(fleet: Fleet, tmp_path: Path) -> None:
    """--fleet-parallelism 2 over four members whose runs would each take three chains: never
    more than two batches at once in the whole fleet (their times from the one server's clock),
    and every member served until done."""
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        service_missing("Redis", REDIS_START, exc)
    assert fleet.cli("init-db").returncode == 0
    started = fleet.cli("start", "items_v_slow", "--batch-size", "25", "--parallelism", "3")
    assert started.returncode == 0, started.stderr
    cluster = Cluster(
        fleet.members["shard_a"].url, tmp_path, app="tests.apps.fleet_app", label="fleetcap",
        BACKFILL_FLEET=str(fleet.file), **TEST_SETTINGS,
    )  # fmt: skip
    try:
        cluster.start_worker("w1", concurrency=3, BACKFILL_FLEET_PARALLELISM="2")
        cluster.start_worker("w2", concurrency=3, BACKFILL_FLEET_PARALLELISM="2")
        cluster.start_scheduler()
        waited = fleet.cli("wait", "items_v_slow", "--timeout", "150")
        assert waited.returncode == 0, waited.stdout + waited.stderr
    finally:
        cluster.stop(graceful=False)
    spans: list[tuple[float, int]] = []
    for name, rows in ROWS.items():
        assert fleet.rows(name) == (rows, rows * (rows + 1) // 2 + rows, rows)
        member = fleet.members[name]
        store = App.from_settings(app=None, database_url=member.url, engine=engine_for(member)).store
        run = store.latest_run("items_v_slow")
        assert run is not None
        for batch in store.batches_of(run.id):
            assert batch.started_at is not None and batch.finished_at is not None
            spans += [(batch.started_at.timestamp(), 1), (batch.finished_at.timestamp(), -1)]
        store.engine.dispose()
    at_once = peak = 0
    for _, change in sorted(spans):  # at one instant a batch's end comes before the next one's start
        at_once += change
        peak = max(peak, at_once)
    assert peak == 2


TENANT_ENV_PY = """
import backfill.alembic_ops
from backfill.alembic_ops import in_tenant

config.attributes["backfill_app"] = "tenant_backfills"
TENANT = context.get_x_argument(as_dictionary=True)["tenant"]
"""

REVISIONS = {
    "r1_total.py": """
from alembic import op
import sqlalchemy as sa

revision, down_revision = "r1", None


def upgrade():
    op.add_column("orders", sa.Column("total", sa.Integer(), nullable=True))
    op.create_backfill_tables()
    op.queue_backfill("orders_total")


def downgrade():
    op.forget_backfill("orders_total")
    op.drop_column("orders", "total")
""",
    "r2_total_not_null.py": """
from alembic import op

revision, down_revision = "r2", "r1"


def upgrade():
    op.ensure_backfill_finished("orders_total", finalize=False)
    op.add_not_null("orders", "total")


def downgrade():
    op.alter_column("orders", "total", nullable=True)
""",
}

TENANT_BACKFILLS = """
from backfill import Backfill

orders_total = Backfill(
    name="orders_total", table="orders", key="id", columns="total",
    work="UPDATE orders SET total = quantity * price WHERE id BETWEEN :first AND :last AND total IS NULL",
)
"""


def test_alembic_once_per_tenant_schema_from_alembic_init(fleet: Fleet, tmp_path: Path) -> None:
    """One env.py run once per tenant (``-x tenant=...``): each tenant's revision queues its own
    run in its own schema, the fleet runs them, and each tenant's NOT NULL revision is gated by
    its own run — refused for the tenant whose run is not finished, with nothing changed."""
    url = fleet.members["shard_a"].url
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for schema, rows in (("t1", 120), ("t2", 80)):
            connection.execute(text(f'CREATE TABLE "{schema}".orders (id int PRIMARY KEY, quantity int, price int)'))
            connection.execute(text(f'INSERT INTO "{schema}".orders SELECT g, g, 3 FROM generate_series(1, {rows}) g'))
    project = tmp_path / "project"
    project.mkdir()
    alembic = str(Path(sys.executable).with_name("alembic"))
    subprocess.run([alembic, "init", "migrations"], cwd=project, check=True, capture_output=True)
    (project / "tenant_backfills.py").write_text(TENANT_BACKFILLS)
    env_py = project / "migrations" / "env.py"
    source = env_py.read_text().replace("config = context.config\n", "config = context.config\n" + TENANT_ENV_PY, 1)
    source = source.replace(
        "    with connectable.connect() as connection:\n        context.configure(\n"
        "            connection=connection, target_metadata=target_metadata\n        )",
        "    with connectable.connect() as connection:\n        connection = in_tenant(connection, TENANT)\n"
        "        context.configure(\n            connection=connection, target_metadata=target_metadata,\n"
        "            version_table_schema=TENANT, transaction_per_migration=True,\n        )",
    )
    assert "in_tenant(connection, TENANT)" in source
    env_py.write_text(source)
    for name, body in REVISIONS.items():
        (project / "migrations" / "versions" / name).write_text(body)
    ini = project / "alembic.ini"
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", url))
    environment = {**os.environ, "PYTHONPATH": str(project), "BACKFILL_APP": "tenant_backfills", "COLUMNS": "200"}
    environment.pop("BACKFILL_FLEET", None)  # Alembic runs for one tenant at a time, by -x tenant=

    def alembic_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([alembic, *args], cwd=project, env=environment, capture_output=True, text=True)

    for tenant in ("t1", "t2"):
        done = alembic_cmd("-x", f"tenant={tenant}", "upgrade", "r1")
        assert done.returncode == 0, done.stderr
    fleet_file = tmp_path / "tenants.toml"
    fleet_file.write_text(f'url = "{url}"\n[members.tenant_t1]\nschema = "t1"\n[members.tenant_t2]\nschema = "t2"\n')

    def backfill(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**environment, "BACKFILL_FLEET": str(fleet_file)}
        return subprocess.run(
            [sys.executable, "-m", "backfill", *args], cwd=project, env=env, capture_output=True, text=True
        )

    status = backfill("status", "orders_total")
    assert status.returncode == 0, status.stderr
    queued = [line.split()[:4] for line in status.stdout.splitlines() if line.startswith("tenant_")]
    assert queued == [["tenant_t1", "orders_total", "1", "pending"], ["tenant_t2", "orders_total", "1", "pending"]]
    assert "0 of 2 finished (2 pending)" in status.stdout

    assert backfill("run", "orders_total", "--no-progress", "--member", "tenant_t1").returncode == 0
    finished = alembic_cmd("-x", "tenant=t1", "upgrade", "head")
    assert finished.returncode == 0, finished.stderr
    refused = alembic_cmd("-x", "tenant=t2", "upgrade", "head")
    assert refused.returncode != 0
    assert "orders_total" in refused.stderr and "Traceback" not in refused.stderr.split("\n")[-2]
    with engine.connect() as connection:
        nullable = dict(
            connection.execute(
                text(
                    "SELECT table_schema, is_nullable FROM information_schema.columns "
                    "WHERE table_name = 'orders' AND column_name = 'total'"
                )
            ).all()
        )
        assert nullable == {"t1": "NO", "t2": "YES"}  # each tenant gated by its own run
        versions = {
            s: connection.execute(text(f'SELECT version_num FROM "{s}".alembic_version')).scalar() for s in ("t1", "t2")
        }
        assert versions == {"t1": "r2", "t2": "r1"}
        assert connection.execute(text("SELECT sum(total) FROM t1.orders")).scalar() == 3 * 120 * 121 // 2
    assert backfill("run", "orders_total", "--no-progress", "--member", "tenant_t2").returncode == 0
    assert alembic_cmd("-x", "tenant=t2", "upgrade", "head").returncode == 0
    engine.dispose()


MULTIDB_ENV_PY = """
import backfill.alembic_ops

config.attributes["backfill_app"] = "tenant_backfills"
"""

MULTIDB_REVISIONS = {
    "m1_total.py": """
from alembic import op
import sqlalchemy as sa

revision, down_revision = "m1", None


def upgrade(engine_name):
    globals()["upgrade_%s" % engine_name]()


def downgrade(engine_name):
    globals()["downgrade_%s" % engine_name]()


def upgrade_engine1():
    op.add_column("orders", sa.Column("total", sa.Integer(), nullable=True))
    op.create_backfill_tables()
    op.queue_backfill("orders_total")


def downgrade_engine1():
    op.forget_backfill("orders_total")
    op.drop_column("orders", "total")


upgrade_engine2, downgrade_engine2 = upgrade_engine1, downgrade_engine1
""",
    "m2_total_not_null.py": """
from alembic import op

revision, down_revision = "m2", "m1"


def upgrade(engine_name):
    op.ensure_backfill_finished("orders_total", finalize=False)
    op.add_not_null("orders", "total")


def downgrade(engine_name):
    op.alter_column("orders", "total", nullable=True)
""",
}


def test_alembic_multidb_template_over_two_databases(fleet: Fleet, tmp_path: Path) -> None:
    """``alembic init -t multidb``: the revision runs once per database, queues a run in each,
    and the NOT NULL revision passes once both databases' runs are finished."""
    urls = {"engine1": fleet.members["shard_a"].url, "engine2": fleet.members["shard_b"].url}
    for url in urls.values():
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE orders (id int PRIMARY KEY, quantity int, price int)"))
            connection.execute(text("INSERT INTO orders SELECT g, g, 2 FROM generate_series(1, 150) g"))
        engine.dispose()
    project = tmp_path / "project"
    project.mkdir()
    alembic = str(Path(sys.executable).with_name("alembic"))
    subprocess.run([alembic, "init", "-t", "multidb", "migrations"], cwd=project, check=True, capture_output=True)
    (project / "tenant_backfills.py").write_text(TENANT_BACKFILLS)
    env_py = project / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace("config = context.config\n", "config = context.config\n" + MULTIDB_ENV_PY, 1)
    )
    for name, body in MULTIDB_REVISIONS.items():
        (project / "migrations" / "versions" / name).write_text(body)
    ini = project / "alembic.ini"
    text_ini = ini.read_text().replace("driver://user:pass@localhost/dbname2", urls["engine2"])
    ini.write_text(text_ini.replace("driver://user:pass@localhost/dbname", urls["engine1"]))
    environment = {**os.environ, "PYTHONPATH": str(project), "BACKFILL_APP": "tenant_backfills"}
    environment["BACKFILL_FLEET"] = f"engine1={urls['engine1']} engine2={urls['engine2']}"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=project, env=environment, capture_output=True, text=True)

    queued = run(alembic, "upgrade", "m1")
    assert queued.returncode == 0, queued.stderr
    ran = run(sys.executable, "-m", "backfill", "run", "orders_total", "--no-progress", "--member", "engine2")
    assert ran.returncode == 0, ran.stderr
    refused = run(alembic, "upgrade", "head")
    assert refused.returncode != 0 and "orders_total" in refused.stderr
    assert run(sys.executable, "-m", "backfill", "run", "orders_total", "--no-progress").returncode == 0
    done = run(alembic, "upgrade", "head")
    assert done.returncode == 0, done.stderr
    for url in urls.values():
        engine = create_engine(url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT sum(total) FROM orders")).scalar() == 2 * 150 * 151 // 2
            nullable = connection.execute(
                text(
                    "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'total'"
                )
            ).scalar()
            assert nullable == "NO"
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "m2"
        engine.dispose()


def test_metrics_carry_the_member_and_say_which_members_answer(fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.cli("init-db").returncode == 0
    assert fleet.cli("run", "items_v", "--no-progress", "--member", "shard_a").returncode == 0
    down = make_url(fleet.members["shard_b"].url).set(port=1).render_as_string(hide_password=False)
    file = tmp_path / "with_one_down.toml"
    file.write_text(fleet.file.read_text().replace(f'url = "{fleet.members["shard_b"].url}"', f'url = "{down}"'))
    port = free_port()
    environment = {**os.environ, "BACKFILL_APP": "tests.apps.fleet_app", "BACKFILL_FLEET": str(file)}
    environment.pop("BACKFILL_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "backfill", "metrics", "--port", str(port), "--addr", "127.0.0.1"],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        page = str(wait_for(lambda: fetch(f"http://127.0.0.1:{port}/metrics"), what="the fleet's metrics"))
    finally:
        server.terminate()
        server.wait(10)
    assert 'backfill_rows_processed_total{backfill="items_v",member="shard_a",run="1"} 500.0' in page
    assert 'backfill_member_up{member="shard_a"} 1.0' in page
    assert 'backfill_member_up{member="shard_b"} 0.0' in page
    assert 'backfill_member_up{member="tenant_t1"} 1.0' in page


def test_members_sharing_a_database_never_see_each_others_tables(fleet: Fleet) -> None:
    """Tenants of one database share its pool: whichever member used a connection last, the
    next one reads its own schema (a race the workers' fleet test first met)."""

    def schema_seen(member: Member) -> str:
        with engine_for(member).connect() as connection:
            found = connection.execute(text("SELECT current_schema()")).scalar_one()
            count = connection.execute(text("SELECT count(*) FROM fleet_items")).scalar_one()
        assert count == ROWS[member.name]
        return str(found)

    order = ["tenant_t1", "shard_a", "tenant_t2", "tenant_t2", "shard_a", "tenant_t1", "shard_a"]
    seen = [schema_seen(fleet.members[name]) for name in order]
    assert seen == ["t1", "public", "t2", "t2", "public", "t1", "public"]


def test_watch_follows_the_fleet_until_the_run_has_ended_everywhere(fleet: Fleet) -> None:
    assert fleet.cli("init-db").returncode == 0
    assert fleet.cli("run", "items_v", "--no-progress", "--member", "shard_*").returncode == 0
    assert fleet.cli("start", "items_v", "--member", "tenant_*").returncode == 0
    watcher = subprocess.Popen(
        [sys.executable, "-m", "backfill", "watch", "items_v", "--interval", "0.2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "BACKFILL_APP": "tests.apps.fleet_app", "BACKFILL_FLEET": str(fleet.file), "COLUMNS": "200"},
    )  # fmt: skip
    time.sleep(1.5)
    assert watcher.poll() is None  # the tenants' runs are still to do: it keeps watching
    assert fleet.cli("run", "items_v", "--no-progress", "--member", "tenant_*").returncode == 0
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert "4 of 4 finished" in out and "Traceback" not in err
