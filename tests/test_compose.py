"""docker-compose.yml cannot be run here (no Docker engine): check what can be checked — it
parses, its services are wired as the README says, and every command it runs in the project's
image exists in the project."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def project_commands() -> list[list[str]]:
    """Every command run in the project's own image: service commands and healthchecks."""
    commands = []
    for service in compose()["services"].values():
        if "build" not in service:
            continue
        if "command" in service:
            commands.append(service["command"])
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD"
            commands.append(test[1:])
    return commands


def test_services_and_their_order() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "worker", "scheduler", "dashboard"}
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "scheduler"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert {"BACKFILL_DATABASE_URL", "BACKFILL_BROKER_URL", "BACKFILL_APP"} <= set(env)
    assert (ROOT / services["worker"]["build"] / "Dockerfile").exists()
    dashboard = services["dashboard"]
    assert set(dashboard["environment"]) == {"BACKFILL_DATABASE_URL", "BACKFILL_DASHBOARD_TOKEN"}  # no definitions
    assert dashboard["ports"] == ["127.0.0.1:8700:8700"]


def test_every_command_exists_in_the_project() -> None:
    commands = project_commands()
    assert commands
    for command in commands:
        executable = shutil.which(command[0], path=str(BIN))
        assert executable, f"{command[0]} is not installed with the project"
        if command[0] == "alembic":
            assert (ROOT / "alembic.ini").exists()
            # The subcommand exists: its help answers without touching a database.
            help_args = [command[1], "--help"]
        elif command[0] == "celery":
            help_args = [*command[1:4], "--help"]
        else:
            help_args = [command[1], "--help"]
        result = subprocess.run([executable, *help_args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command}: {result.stderr}"


def test_dockerfile_copies_what_the_commands_need() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in ("backfill", "workers", "example_app", "migrations", "alembic.ini"):
        assert f"COPY {path}" in dockerfile or f" {path} " in dockerfile, path
        assert (ROOT / path).exists(), path
