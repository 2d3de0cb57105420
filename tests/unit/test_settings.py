"""Settings from the environment and database URLs: what a deployment sets is what it gets, a
bad value is one error naming the variable, and a password is never shown."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy import make_url

from backfill.database import (
    CONNECT_TIMEOUT_ENV,
    DATABASE_URL_ENV,
    DEFAULT_CONNECT_TIMEOUT,
    command_timeout,
    connect_timeout,
    display_url,
    make_engine,
    parse_url,
)
from backfill.errors import ConfigurationError
from backfill.events import log_format, log_level
from backfill.host import heartbeat_seconds_from_env
from backfill.workers.settings import Settings

PASSWORD = "s3cret-pw"


def test_an_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    blank = {name: "" for name in ("BACKFILL_BROKER_URL", "BACKFILL_QUEUE", "BACKFILL_TICK_SECONDS",
                                   "BACKFILL_METRICS_PORT")}  # fmt: skip
    assert Settings.from_env(blank) == Settings()


def test_every_variable_reaches_its_setting_and_celery() -> None:
    settings = Settings.from_env(
        {
            "BACKFILL_BROKER_URL": "redis://redis.internal:6380/2",
            "BACKFILL_QUEUE": "billing-backfills",
            "BACKFILL_REDIS_PREFIX": "billing:",
            "BACKFILL_TICK_SECONDS": "0.5",
            "BACKFILL_REDISPATCH_SECONDS": "3",
            "BACKFILL_CHAIN_SECONDS": "0",
            "BACKFILL_VISIBILITY_TIMEOUT": "7200",
            "BACKFILL_METRICS_PORT": " 9108 ",
        }
    )
    assert settings == Settings(
        broker_url="redis://redis.internal:6380/2",
        queue="billing-backfills",
        key_prefix="billing:",
        tick_seconds=0.5,
        redispatch_seconds=3.0,
        chain_seconds=0.0,
        visibility_timeout=7200.0,
        metrics_port=9108,
    )
    config = settings.celery_config()
    assert config["broker_url"] == "redis://redis.internal:6380/2"
    assert config["task_default_queue"] == "billing-backfills"
    assert config["broker_transport_options"] == {"visibility_timeout": 7200.0, "global_keyprefix": "billing:"}
    assert config["beat_schedule"]["backfill-tick"]["schedule"] == 0.5
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]


def test_two_deployments_on_one_redis_keep_their_schedules_apart() -> None:
    one = Settings.from_env({"BACKFILL_REDIS_PREFIX": "billing:"})
    other = Settings.from_env({"BACKFILL_REDIS_PREFIX": "search:"})
    assert one.deployment_id != other.deployment_id
    assert one.deployment_id == Settings.from_env({"BACKFILL_REDIS_PREFIX": "billing:"}).deployment_id
    assert "global_keyprefix" not in Settings().celery_config()["broker_transport_options"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "BACKFILL_TICK_SECONDS",
            "2s",
            "BACKFILL_TICK_SECONDS must be a number of seconds, more than 0, at most 30 days: got '2s'",
        ),
        (
            "BACKFILL_TICK_SECONDS",
            "0",
            "BACKFILL_TICK_SECONDS must be a number of seconds, more than 0, at most 30 days: got '0'",
        ),
        ("BACKFILL_TICK_SECONDS", "1e300", "BACKFILL_TICK_SECONDS must be a number of seconds"),
        ("BACKFILL_BROKER_URL", "foo://user:s3cret-pw@host/0", "BACKFILL_BROKER_URL must be a Redis URL"),
        ("BACKFILL_BROKER_URL", "s3cret-pw@host", "must be a Redis URL (redis://host:6379/0, rediss:// for TLS"),
        ("BACKFILL_BROKER_URL", "amqp://guest:s3cret-pw@localhost//", "got scheme 'amqp'"),
        ("BACKFILL_REDISPATCH_SECONDS", "-1", "BACKFILL_REDISPATCH_SECONDS must be a number of seconds"),
        (
            "BACKFILL_CHAIN_SECONDS",
            "-5",
            "BACKFILL_CHAIN_SECONDS must be a number of seconds, 0 or more, at most 30 days: got '-5'",
        ),
        ("BACKFILL_VISIBILITY_TIMEOUT", "inf", "BACKFILL_VISIBILITY_TIMEOUT must be a number of seconds"),
        ("BACKFILL_CHAIN_SECONDS", "nan", "BACKFILL_CHAIN_SECONDS must be a number of seconds"),
        ("BACKFILL_METRICS_PORT", "http", "BACKFILL_METRICS_PORT must be a port number from 1 to 65535: got 'http'"),
        ("BACKFILL_METRICS_PORT", "70000", "BACKFILL_METRICS_PORT must be a port number from 1 to 65535"),
        ("BACKFILL_METRICS_PORT", "0", "BACKFILL_METRICS_PORT must be a port number from 1 to 65535"),
    ],
)
def test_a_bad_value_is_one_error_naming_its_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({name: value})
    assert expected in str(raised.value)
    assert len(str(raised.value).splitlines()) == 1
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://app@db/app", "postgresql+psycopg"),
        ("postgres://app@db/app", "postgresql+psycopg"),
        ("mysql://app@db/app", "mysql+pymysql"),
        ("mariadb://app@db/app", "mariadb+pymysql"),
        ("postgresql+psycopg2://app@db/app", "postgresql+psycopg2"),  # a driver named is kept
        ("sqlite:///app.db", "sqlite"),
    ],
)
def test_a_bare_url_gets_the_driver_the_project_installs(given: str, driver: str) -> None:
    assert parse_url(given).drivername == driver


def test_the_url_comes_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://app@db/from_env")
    assert parse_url(None).database == "from_env"
    assert parse_url("sqlite:///given.db").database == "given.db"


@pytest.mark.parametrize("given", [None, "  "])
def test_no_url_names_both_ways_to_give_one(given: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=f"no database URL: pass --database-url or set {DATABASE_URL_ENV}"):
        parse_url(given)


def test_a_password_is_never_shown() -> None:
    url = parse_url(f"postgresql://app:{PASSWORD}@db.internal:5432/app")
    assert display_url(url) == "postgresql+psycopg://app:***@db.internal:5432/app"
    assert url.password == PASSWORD  # kept for connecting, only hidden when shown
    with pytest.raises(ConfigurationError) as unparsable:
        parse_url(f"app:{PASSWORD}@db.internal/app")
    assert "cannot be parsed" in str(unparsable.value) and PASSWORD not in str(unparsable.value)
    with pytest.raises(ConfigurationError) as no_driver:
        make_engine(f"nosuchdb://app:{PASSWORD}@db.internal/app")
    assert "nosuchdb://app:***@db.internal/app" in str(no_driver.value)
    assert PASSWORD not in str(no_driver.value)


def test_a_url_object_is_taken_as_it_is() -> None:
    url = make_url(f"mysql+pymysql://app:{PASSWORD}@db/app")
    assert parse_url(url) == url


@pytest.mark.parametrize(
    "given",
    [
        f"postgresql://app:pa@{PASSWORD}@db.internal/app",  # an @ in the password, not written %40
        f"postgresql://app:{PASSWORD}@db.internal:port/app",
        f"postgresql://app:{PASSWORD}@db.internal:99999/app",
        f"mysql://app:{PASSWORD}@db.internal:-1/app",
    ],
)
def test_a_malformed_url_is_refused_without_showing_any_of_it(given: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_url(given)
    message = str(raised.value)
    assert "cannot be parsed" in message and "%40" in message
    assert PASSWORD not in message and "db.internal" not in message


def test_servers_are_given_a_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONNECT_TIMEOUT_ENV, raising=False)
    assert connect_timeout() == DEFAULT_CONNECT_TIMEOUT
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "3")
    assert connect_timeout() == 3
    for bad in ("0", "1.5", "forever", "3601"):
        monkeypatch.setenv(CONNECT_TIMEOUT_ENV, bad)
        with pytest.raises(ConfigurationError, match=f"{CONNECT_TIMEOUT_ENV} must be a whole number of seconds"):
            connect_timeout()


@pytest.mark.parametrize(
    ("name", "value", "read", "expected"),
    [
        (
            "BACKFILL_HEARTBEAT_SECONDS",
            "abc",
            heartbeat_seconds_from_env,
            "BACKFILL_HEARTBEAT_SECONDS must be a number",
        ),
        ("BACKFILL_HEARTBEAT_SECONDS", "0", heartbeat_seconds_from_env, "more than 0"),
        ("BACKFILL_LOG_LEVEL", "verbose", lambda: log_level("error"), "BACKFILL_LOG_LEVEL must be one of debug, info"),
        ("BACKFILL_LOG_FORMAT", "yaml", log_format, "BACKFILL_LOG_FORMAT must be one of text, json: got 'yaml'"),
        ("BACKFILL_COMMAND_TIMEOUT", "-3", command_timeout, "BACKFILL_COMMAND_TIMEOUT must be a whole number"),
    ],
)
def test_every_process_setting_is_checked(
    name: str, value: str, read: Callable[[], object], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        read()
    monkeypatch.setenv(name, "")
    read()  # empty is the default
