"""Looking definitions up: a mapping's manners for ``in`` and ``get``, one clear error for ``require``."""

from __future__ import annotations

import pytest

from backfill import Backfill, Registry
from backfill.errors import AppError

ONE = Backfill(name="players_team_id", table="players", key="id", work="UPDATE players SET team_id = 1")


def test_a_registry_is_a_mapping() -> None:
    registry = Registry.of(ONE, source="myapp.backfills")
    assert "players_team_id" in registry and "nope" not in registry
    assert registry.get("nope") is None and registry.get("players_team_id") is ONE
    assert list(registry) == ["players_team_id"] and len(registry) == 1
    with pytest.raises(KeyError):
        registry["nope"]


def test_require_names_what_is_defined_and_where() -> None:
    registry = Registry.of(ONE, source="myapp.backfills")
    assert registry.require("players_team_id") is ONE
    with pytest.raises(AppError) as raised:
        registry.require("player_team_id")
    message = str(raised.value)
    assert "unknown backfill 'player_team_id'" in message
    assert "myapp.backfills" in message and "players_team_id" in message and "backfill list" in message


def test_require_without_definitions_says_how_to_load_them() -> None:
    with pytest.raises(AppError) as raised:
        Registry({}, "").require("players_team_id")
    assert "--app" in str(raised.value) and "BACKFILL_APP" in str(raised.value)


def test_one_name_defined_twice_is_refused() -> None:
    other = Backfill(name="players_team_id", table="players", key="id", work="UPDATE players SET team_id = 2")
    with pytest.raises(AppError, match=r"defined twice in myapp\.backfills"):
        Registry.of(ONE, other, source="myapp.backfills")
