"""Every hold takes effect at the next claim, in every worker, and lifts by itself: an operator's
throttle (for a time, or while a query returns a row), the server's load (and a critical load,
past which the run pauses itself and says why), a VACUUM on the run's table, the application's
own service level read from Prometheus, and replica lag on real streaming replicas of
PostgreSQL and MariaDB started by the test. Each test ends on the data: every row exactly once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import Engine, create_engine, text

from backfill import App, Backfill, PrometheusCheck, Registry, RunStatus, Tuning
from backfill.database import make_engine
from backfill.store import Run
from tests.apps import counters
from tests.apps.counters import items
from tests.conftest import Database
from tests.helpers import one_error_line, wait_for
from tests.servers import mariadb_with_replica, postgres_with_replica
from tests.test_engine import counter_histogram
from tests.test_throttling import run_in_background


def latest(db: Database, name: str) -> Run:
    run = db.app().store.latest_run(name)
    assert run is not None
    return run


def held(db: Database, name: str, words: str, timeout: float = 30) -> Run:
    def there() -> Run | None:
        run = db.app().store.latest_run(name)
        return run if run is not None and words in (run.held_reason or "") else None

    return wait_for(there, timeout=timeout, what=f"{name} held with {words!r}")


def claimed_after(db: Database, run_id: int, moment: datetime) -> int:
    """Batches of the run claimed (started) after ``moment`` (both by the database's clock)."""
    return sum(1 for b in db.app().store.batches_of(run_id) if b.started_at is not None and b.started_at > moment)


def event_time(db: Database, run_id: int, note: str) -> datetime:
    with db.engine.connect() as connection:
        at = connection.execute(
            text("SELECT max(at) FROM backfill_events WHERE run_id = :run AND note LIKE :note"),
            {"run": run_id, "note": f"{note}%"},
        ).scalar()
    assert at is not None, f"no event {note!r}"
    return at if isinstance(at, datetime) else datetime.fromisoformat(str(at))


# SQLite's single writer lets an operator's command in only between two batches, which a busy
# chain rarely leaves: the claim's guard there is proven by the simulator (tests/sim).
@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_an_operators_throttle_stops_every_claim_until_it_is_lifted(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 2001)))
    thread, result = run_in_background(db, "counter_slow", parallelism=2)
    wait_for(lambda: (r := db.app().store.latest_run("counter_slow")) is not None and r.batches_done >= 4)

    db.app().throttle("counter_slow", seconds=3600, reason="nightly batch job", actor="cli:ops@bastion")
    run = held(db, "counter_slow", "throttled by an operator")
    assert "nightly batch job" in (run.held_reason or "")
    at = event_time(db, run.id, "throttled")
    time.sleep(1.0)
    assert claimed_after(db, run.id, at) == 0  # the next claim of every thread waited
    done = latest(db, "counter_slow").rows_done
    time.sleep(0.5)
    assert latest(db, "counter_slow").rows_done == done
    assert latest(db, "counter_slow").status is RunStatus.RUNNING
    data = json.loads(db.cli("status", "--json").stdout)[0]
    assert data["throttle"]["reason"] == "nightly batch job" and data["throttle"]["until"]
    assert "throttled by an operator" in data["held_reason"]
    shown = db.cli("status", "counter_slow")
    assert "throttled until" in shown.stdout and "nightly batch job" in shown.stdout

    lifted = db.cli("throttle", "counter_slow", "--off")
    assert lifted.returncode == 0, lifted.stderr
    thread.join(120)
    assert result and result[0].status is RunStatus.FINISHED and result[0].held_reason is None
    assert counter_histogram(db, items) == {1: 2000}
    actions = [a["action"] for a in json.loads(db.cli("status", "counter_slow", "--json").stdout)["actions"]]
    assert any(a.startswith("throttled for 3600s (nightly batch job)") for a in actions), actions
    assert "throttle lifted" in actions  # by the CLI's user, the throttle by who the library was told


@pytest.mark.parametrize("db", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_a_throttle_query_holds_while_it_returns_a_row(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 601)))
    with db.engine.begin() as connection:
        connection.execute(counters.maintenance.insert().values(reason="reindex"))
    assert db.cli("start", "counter_slow").returncode == 0
    throttled = db.cli("throttle", "counter_slow", "--query", "SELECT reason FROM maintenance")
    assert throttled.returncode == 0, throttled.stderr
    thread, result = run_in_background(db, "counter_slow")
    run = held(db, "counter_slow", "the throttle query returned a row")
    assert run.batches_done == 0 and "SELECT reason FROM maintenance" in (run.held_reason or "")
    with db.engine.begin() as connection:
        connection.execute(counters.maintenance.delete())
    thread.join(120)
    assert result and result[0].status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 600}


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # the command's own checks: one database is enough
@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["throttle", "counter_int"], "say how long"),
        (["throttle", "counter_int", "--for", "soon"], "expected a duration"),
        (["throttle", "counter_int", "--for", "0"], "expected a duration"),
        (["throttle", "counter_int", "--until", "2001-01-01T00:00"], "has passed already"),
        (["throttle", "counter_int", "--until", "tomorrow"], "expected an ISO time"),
        (["throttle", "counter_int", "--for", "1m", "--until", "2099-01-01T00:00"], "give one"),
        (["throttle", "counter_int", "--off", "--for", "1m"], "give it alone"),
        (["throttle", "counter_int", "--query", "SELECT * FROM no_such_table"], "the throttle query cannot run"),
        (["throttle", "no_such_backfill", "--for", "1m"], "no_such_backfill"),
    ],
)
def test_a_mistaken_throttle_is_one_line_and_changes_nothing(db: Database, argv: list[str], words: str) -> None:
    counters.fill(db.engine, items, [1, 2, 3])
    assert db.cli("start", "counter_int").returncode == 0
    done = db.cli(*argv)
    assert done.returncode == 2
    assert words in one_error_line(done)
    run = latest(db, "counter_int")
    assert run.throttled_until is None and run.throttle_query is None
    with db.engine.connect() as connection:
        assert not connection.execute(text("SELECT 1 FROM backfill_events WHERE note LIKE 'throttled%'")).first()


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_a_throttle_needs_an_active_run(db: Database) -> None:
    done = db.cli("throttle", "counter_int", "--for", "1m")
    assert done.returncode == 2
    assert "has no active run" in one_error_line(done)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_the_throttle_command_says_for_how_long_and_how_to_lift_it(db: Database) -> None:
    counters.fill(db.engine, items, [1, 2, 3])
    db.app().start("counter_int")
    throttled = db.cli("throttle", "counter_int", "--for", "1h", "--reason", "nightly batch job")
    assert throttled.returncode == 0, throttled.stderr
    assert "throttled for 3,600s" in throttled.stdout and "`backfill throttle counter_int --off`" in throttled.stdout
    assert latest(db, "counter_int").throttle_reason == "nightly batch job"
    lifted = db.cli("throttle", "counter_int", "--off")
    assert lifted.returncode == 0 and "no longer throttled" in lifted.stdout
    assert latest(db, "counter_int").throttled_until is None


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_an_operators_pause_forgets_an_earlier_hold(db: Database) -> None:
    counters.fill(db.engine, items, [1, 2, 3])
    app = db.app()
    run = app.store.hold(app.start("counter_int"), "a replica lags 40.0s behind (limit 30s)")
    assert run.held_reason
    paused = app.pause("counter_int", actor="cli:ops@bastion")
    assert paused.status is RunStatus.PAUSED and paused.held_reason is None
    assert json.loads(db.cli("status", "--json").stdout)[0]["held_reason"] is None


@contextmanager
def busy_sessions(db: Database, count: int) -> Iterator[None]:
    """``count`` of the application's sessions each running a statement, until the block ends."""
    # A plain engine: the application's sessions are not named after backfill.
    engine = create_engine(db.url)
    sleep = "SELECT pg_sleep(60)" if db.dialect == "postgresql" else "SELECT SLEEP(60)"
    connections = [engine.connect() for _ in range(count)]
    ids = []
    for connection in connections:
        pid = "SELECT pg_backend_pid()" if db.dialect == "postgresql" else "SELECT CONNECTION_ID()"
        ids.append(connection.execute(text(pid)).scalar())
    threads = [threading.Thread(target=_quietly, args=(c, sleep)) for c in connections]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        with db.engine.connect() as admin:
            for pid in ids:
                stop = "SELECT pg_cancel_backend(:pid)" if db.dialect == "postgresql" else f"KILL QUERY {int(pid)}"
                admin.execute(text(stop), {"pid": pid})
        for thread in threads:
            thread.join(30)
        for connection in connections:
            connection.close()
        engine.dispose()


def _quietly(connection: Any, sql: str) -> None:
    try:
        connection.execute(text(sql)).all()
    except Exception:
        connection.rollback()


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_a_busy_server_holds_the_run_and_a_critical_load_pauses_it(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 301)))
    with busy_sessions(db, 4):
        wait_for(lambda: _load(db) >= 4, what="four busy sessions")
        thread, result = run_in_background(db, "counter_slow", max_load=3)
        run = held(db, "counter_slow", "the server is busy")
        assert "limit max_load=3" in (run.held_reason or "") and run.batches_done == 0
    thread.join(120)
    assert result and result[0].status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 300}

    counters.fill(db.engine, counters.items_text, [f"k{i:04d}" for i in range(300)])
    with busy_sessions(db, 4):
        wait_for(lambda: _load(db) >= 4, what="four busy sessions")
        paused = db.app().run("counter_text", critical_load=3)
        assert paused.status is RunStatus.PAUSED and paused.batches_done == 0
        assert "critical load" in (paused.held_reason or "") and "backfill resume counter_text" in paused.held_reason
        shown = json.loads(db.cli("status", "--json").stdout)
        text_run = next(r for r in shown if r["name"] == "counter_text")
        assert text_run["status"] == "paused" and "critical load" in text_run["held_reason"]
        actions = json.loads(db.cli("status", "counter_text", "--json").stdout)["actions"]
        assert any(a["by"] == "backfill" and "critical load" in a["action"] for a in actions), actions
    assert db.cli("resume", "counter_text").returncode == 0
    finished = db.app().run("counter_text")
    assert finished.status is RunStatus.FINISHED and finished.held_reason is None
    assert counter_histogram(db, counters.items_text) == {1: 300}


def _load(db: Database) -> int:
    from backfill.health import LOAD

    with db.engine.connect() as connection:
        return LOAD[db.dialect](connection)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_vacuum_on_the_table_holds_the_run(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 20_001)))
    with db.engine.begin() as connection:
        for _ in range(3):  # dead rows for the VACUUM to work through
            connection.execute(text("UPDATE items SET done = done"))
    vacuum = create_engine(db.url, isolation_level="AUTOCOMMIT").connect()
    pid = vacuum.execute(text("SELECT pg_backend_pid()")).scalar()
    vacuum.execute(text("SET vacuum_cost_delay = 100"))
    vacuum.execute(text("SET vacuum_cost_limit = 1"))
    slow = threading.Thread(target=_quietly, args=(vacuum, "VACUUM items"))
    slow.start()
    try:
        wait_for(lambda: db.scalar("SELECT count(*) FROM pg_stat_progress_vacuum"), what="the VACUUM")
        thread, result = run_in_background(db, "counter_int", batch_size=2000)
        run = held(db, "counter_int", "a VACUUM is working on items")
        assert run.batches_done == 0
    finally:
        with db.engine.connect() as admin:
            admin.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
        slow.join(30)
        vacuum.close()
    thread.join(120)
    assert result and result[0].status is RunStatus.FINISHED
    assert counter_histogram(db, items) == {1: 20_000}


class Prometheus:
    """A Prometheus HTTP API answering one instant query with a value the test sets."""

    def __init__(self) -> None:
        self.value = "0"
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                outer.queries.extend(parse_qs(url.query).get("query", []))
                body = {
                    "status": "success",
                    "data": {"resultType": "vector", "result": [{"metric": {}, "value": [time.time(), outer.value]}]},
                }
                payload = json.dumps(body).encode()
                self.send_response(200 if url.path == "/api/v1/query" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_applications_slo_read_from_prometheus_holds_the_run(db: Database) -> None:
    counters.fill(db.engine, items, list(range(1, 301)))
    prometheus = Prometheus()
    query = 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{job="shop"}[1m])))'
    slo = PrometheusCheck(prometheus.url, query, above=0.5, name="shop p99")
    polite = Backfill(name="polite", table="items", key="id", work=counters.counter_int.work,
                      tuning=counters.small, health_checks=(slo,))  # fmt: skip
    prometheus.value = "0.9"
    try:
        result: list[Run] = []
        thread = threading.Thread(target=lambda: result.append(db.app(polite).run("polite")))
        thread.start()
        run = held(db, "polite", "shop p99: 0.9 is above 0.5")
        assert run.batches_done == 0 and query in prometheus.queries
        prometheus.value = "0.2"
        thread.join(120)
        assert result and result[0].status is RunStatus.FINISHED
    finally:
        prometheus.close()
    assert counter_histogram(db, items) == {1: 300}


def test_prometheus_out_of_reach_holds_the_run(db: Database) -> None:
    counters.fill(db.engine, items, [1, 2, 3])
    prometheus = Prometheus()
    prometheus.close()  # nobody answers there now
    slo = PrometheusCheck(prometheus.url, "up", below=1, name="shop up")
    polite = Backfill(name="polite", table="items", key="id", work=counters.counter_int.work,
                      tuning=counters.small, health_checks=(slo,))  # fmt: skip
    app = db.app(polite)
    run = app.start("polite")
    result: list[Run] = []
    thread = threading.Thread(target=lambda: result.append(app.run("polite")))
    thread.start()
    held(db, "polite", "shop up: cannot read")
    app.cancel("polite")
    thread.join(60)
    assert latest(db, "polite").batches_done == 0 and run.id == latest(db, "polite").id


def test_a_prometheus_check_needs_a_threshold() -> None:
    from backfill.errors import DefinitionError

    with pytest.raises(DefinitionError, match="give above= or below="):
        PrometheusCheck("http://prometheus:9090", "up")
    with pytest.raises(DefinitionError, match="http:// or https://"):
        PrometheusCheck("prometheus:9090", "up", above=1)


# -- replica lag on real replicas ----------------------------------------------------------------


def slow_counter(batch_size: int, **settings: Any) -> Backfill:
    """Batches that take a while, so a run lasts long enough for its replica to fall behind."""
    from sqlalchemy import update

    def work(connection: Any, batch: Any) -> int:
        rows = connection.execute(
            update(items).where(batch.where(items.c.id)).values(counter=items.c.counter + 1)
        ).rowcount
        time.sleep(0.05)
        return int(rows)

    return Backfill(
        name="lagged",
        table="items",
        key="id",
        work=work,
        tuning=Tuning(batch_size=batch_size, target_batch_seconds=0, **settings),
    )


def prepared(url: str) -> tuple[Engine, App, Backfill]:
    engine = make_engine(url)
    counters.create_tables(engine)
    definition = slow_counter(500, max_replica_lag=2)
    app = App(engine, Registry.of(definition))
    app.init_db()
    counters.fill(engine, items, list(range(1, 40_001)))
    return engine, app, definition


def test_a_lagging_postgresql_replica_holds_the_run_from_the_next_claim() -> None:
    with postgres_with_replica() as (primary, replica):
        engine, app, _ = prepared(primary.url)
        on_replica = create_engine(replica.url, isolation_level="AUTOCOMMIT")
        try:
            result: list[Run] = []
            thread = threading.Thread(target=lambda: result.append(app.run("lagged")))
            thread.start()
            wait_for(lambda: (r := app.store.latest_run("lagged")) is not None and r.batches_done >= 3)
            with on_replica.connect() as c:
                c.execute(text("SELECT pg_wal_replay_pause()"))

            def lag_and_rows() -> tuple[float, int] | None:
                with engine.connect() as c:
                    lag = c.execute(
                        text("SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication")
                    ).scalar()
                run = app.store.latest_run("lagged")
                assert run is not None
                return (float(lag), run.rows_done) if lag is not None and lag > 2 else None

            _, rows_when_lagging = wait_for(lag_and_rows, timeout=60, what="the replica's lag past 2 s", every=0.02)
            run = wait_for(
                lambda: (r := app.store.latest_run("lagged")) is not None and "lags" in (r.held_reason or "") and r,
                timeout=30,
                what="the run held for the replica",
            )
            time.sleep(1.0)
            stopped_at = app.store.latest_run("lagged")
            assert stopped_at is not None and stopped_at.status is RunStatus.RUNNING
            assert "a replica lags" in (run.held_reason or "") and "(limit 2s)" in (run.held_reason or "")
            # The batch in flight when the lag passed the limit, and one racing this test's look.
            assert stopped_at.rows_done - rows_when_lagging <= 2 * 500
            with on_replica.connect() as c:
                c.execute(text("SELECT pg_wal_replay_resume()"))
            thread.join(180)
            assert result and result[0].status is RunStatus.FINISHED, result
            with engine.connect() as c:
                assert c.execute(text("SELECT count(*) FROM items WHERE counter <> 1")).scalar() == 0
        finally:
            on_replica.dispose()
            engine.dispose()


def test_a_stopped_mariadb_replica_holds_the_run_until_it_catches_up(monkeypatch: pytest.MonkeyPatch) -> None:
    with mariadb_with_replica() as (primary, replica):
        monkeypatch.setenv("BACKFILL_REPLICA_URLS", replica.url)
        on_replica = create_engine(replica.url.rsplit("/", 1)[0] + "/", isolation_level="AUTOCOMMIT")
        with on_replica.connect() as c:
            c.execute(text("STOP SLAVE SQL_THREAD"))
        engine, app, _ = prepared(primary.url)
        try:
            result: list[Run] = []
            thread = threading.Thread(target=lambda: result.append(app.run("lagged")))
            thread.start()
            run = wait_for(
                lambda: (r := app.store.latest_run("lagged")) is not None and "replica" in (r.held_reason or "") and r,
                timeout=30,
                what="the run held for the replica",
            )
            assert f"127.0.0.1:{replica.port}" in (run.held_reason or "") and "not replaying" in (run.held_reason or "")
            assert run.batches_done <= 1
            with on_replica.connect() as c:
                c.execute(text("START SLAVE SQL_THREAD"))
            thread.join(180)
            assert result and result[0].status is RunStatus.FINISHED, result
            with engine.connect() as c:
                assert c.execute(text("SELECT count(*) FROM items WHERE counter <> 1")).scalar() == 0
            replicated = create_engine(replica.url)
            try:
                wait_for(lambda: _count_done(replicated) == 40_000, timeout=60, what="the replica to apply every batch")
            finally:
                replicated.dispose()
        finally:
            on_replica.dispose()
            engine.dispose()


def _count_done(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM items WHERE counter = 1")).scalar_one())
