"""Which files ``backfill lint`` reads: the paths given, or the revisions of the Alembic project
its ini file describes, read as Alembic itself reads it (``%(here)s``, a ``script_location``
relative to the current directory or inside a package, ``version_locations``) but without
importing the project: the ini is a text file, and a lint must not need the application.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backfill.errors import ConfigurationError


@dataclass(frozen=True)
class Project:
    """An Alembic project: its ini file, the directories its revisions live in, and the
    database URL the ini names (only its dialect matters here: the offline SQL's)."""

    config: Path
    versions: tuple[Path, ...]
    url: str | None


def read_project(config: Path) -> Project:
    if not config.is_file():
        raise ConfigurationError(
            f"{config} not found: give the revision files or directories to lint, or --config PATH/alembic.ini"
        )
    here = str(config.resolve().parent)
    parser = configparser.ConfigParser(defaults={"here": here}, interpolation=None)
    try:
        parser.read(config, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{config} cannot be read as an ini file ({type(exc).__name__})") from None

    def option(name: str) -> str | None:
        raw = parser.get("alembic", name, fallback=None)
        if raw is None or not raw.strip():
            return None
        return raw.replace("%(here)s", here).replace("%%", "%").strip()

    location = option("script_location")
    if location is None:
        raise ConfigurationError(f"{config} has no script_location in its [alembic] section: is it Alembic's ini?")
    script = _located(location, config)
    listed = option("version_locations")
    if listed:
        separator = option("path_separator") or option("version_path_separator")
        versions = tuple(_located(p, config) for p in _split(listed, separator))
    else:
        versions = (script / "versions",)
    return Project(config, versions, option("sqlalchemy.url"))


def _split(listed: str, separator: str | None) -> list[str]:
    if separator == "os":
        parts = listed.split(os.pathsep)
    elif separator in (":", ";"):
        parts = listed.split(separator)
    elif separator == "newline":
        parts = listed.splitlines()
    else:
        parts = re.split(r"[\s,]+", listed)
    return [p.strip() for p in parts if p.strip()]


def _located(location: str, config: Path) -> Path:
    """A path of the ini, or ``package:directory`` (found without importing the package)."""
    package, colon, inner = location.partition(":")
    if colon and not Path(location).exists() and re.fullmatch(r"[\w.]+", package):
        spec = importlib.util.find_spec(package) if "." not in package else None
        places = list(spec.submodule_search_locations or []) if spec is not None else []
        if not places:
            raise ConfigurationError(
                f"{config}: script_location {location!r} names a package that cannot be found: "
                "give the revisions' directory to lint"
            )
        return Path(places[0]) / inner
    return Path(location)


def revision_files(paths: Sequence[Path]) -> list[Path]:
    """Every ``*.py`` under the paths, in a stable order (a file given by name is read whatever
    its name); a path that does not exist is a mistake, said before anything is read."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*.py"))
                if not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigurationError(f"{path} does not exist: give revision files or the directories that hold them")
    return list(dict.fromkeys(found))


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
