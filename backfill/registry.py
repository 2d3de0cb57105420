"""Finding the user's backfill definitions: every ``Backfill`` at the top level of their module."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType

from backfill.definition import Backfill
from backfill.errors import AppError, BackfillError

APP_ENV = "BACKFILL_APP"


@dataclass(frozen=True)
class Registry(Mapping[str, Backfill]):
    """The definitions of one application, by name."""

    definitions: Mapping[str, Backfill]
    source: str = ""

    def __getitem__(self, name: str) -> Backfill:
        try:
            return self.definitions[name]
        except KeyError:
            known = ", ".join(sorted(self.definitions)) or "none"
            raise AppError(
                f"unknown backfill '{name}' (defined in {self.source or 'the app'}: {known}): "
                "check the name with `backfill list`"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.definitions))

    def __len__(self) -> int:
        return len(self.definitions)

    @classmethod
    def of(cls, *definitions: Backfill, source: str = "") -> Registry:
        found: dict[str, Backfill] = {}
        for definition in definitions:
            other = found.get(definition.name)
            if other is not None and other is not definition:
                raise AppError(f"backfill name '{definition.name}' is defined twice in {source or 'the app'}")
            found[definition.name] = definition
        return cls(found, source)

    @classmethod
    def from_module(cls, module: ModuleType) -> Registry:
        return cls.of(*(v for v in vars(module).values() if isinstance(v, Backfill)), source=module.__name__)


def load(app: str | None) -> Registry:
    """Import the definitions module named by ``--app`` or ``BACKFILL_APP``.

    The working directory is importable, as with ``python -m``, so a module beside the project
    is found without installing it.
    """
    name = app or os.environ.get(APP_ENV)
    if not name:
        raise AppError(f"no definitions module: pass --app MODULE or set {APP_ENV} (for example myapp.backfills)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise AppError(
                f"cannot import definitions module '{name}': no module named '{exc.name}'; "
                f"check --app / {APP_ENV} and the working directory"
            ) from None
        raise
    except BackfillError:
        raise
    registry = Registry.from_module(module)
    if not registry:
        raise AppError(f"module '{name}' defines no backfill: define one with backfill.Backfill or @backfill.define")
    return registry
