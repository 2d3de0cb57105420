"""Finding the user's backfill definitions: every ``Backfill`` at the top level of their module."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType

from backfill.definition import Backfill
from backfill.errors import AppError, BackfillError

APP_ENV = "BACKFILL_APP"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registry(Mapping[str, Backfill]):
    """The definitions of one application, by name."""

    definitions: Mapping[str, Backfill]
    source: str = ""

    def __post_init__(self) -> None:
        """Every backfill a definition runs ``after`` is defined too, and none waits on itself
        through others: refused when the definitions load, not when a run would wait for ever."""
        where = self.source or "the app"
        for definition in self.definitions.values():
            missing = [name for name in definition.after if name not in self.definitions]
            if missing:
                raise AppError(
                    f"backfill '{definition.name}' runs after {', '.join(repr(m) for m in missing)}, "
                    f"which {where} does not define: fix the name in after=, or define it"
                )
        for name in sorted(self.definitions):
            cycle = self._cycle_from(name, ())
            if cycle:
                raise AppError(
                    f"backfills in {where} wait on each other in a cycle: {' -> '.join(cycle)}: remove one of the after="
                )

    def _cycle_from(self, name: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if name in path:
            return (*path[path.index(name) :], name)
        for before in self.definitions[name].after:
            cycle = self._cycle_from(before, (*path, name))
            if cycle:
                return cycle
        return None

    def __getitem__(self, name: str) -> Backfill:
        return self.definitions[name]

    def require(self, name: str) -> Backfill:
        """The definition named ``name``, or one clear error naming what is defined and where.
        (Indexing keeps a mapping's ``KeyError``, so ``in`` and ``get`` behave as on a dict.)"""
        try:
            return self.definitions[name]
        except KeyError:
            if not self.source and not self.definitions:
                raise AppError(
                    f"backfill '{name}' is not in the checkpoint tables, and no definitions were loaded to look it "
                    f"up in: check the name with `backfill status`, or pass --app MODULE / {APP_ENV}"
                ) from None
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


def load(app: str | None, *, needed_by: str | None = None) -> Registry:
    """Import the definitions module named by ``--app`` or ``BACKFILL_APP``.

    The working directory is importable, as with ``python -m``, so a module beside the project
    is found without installing it. Without a module name, commands that read or change only
    the checkpoint tables get no definitions; ``needed_by`` names a command that cannot do
    without them. A module that fails to import is one line: the module, the error, and where
    in the user's code it happened (the traceback under ``BACKFILL_LOG_LEVEL=DEBUG``).
    """
    name = app or os.environ.get(APP_ENV)
    if not name:
        if needed_by is None:
            return Registry({}, "")
        raise AppError(
            f"`{needed_by}` needs the backfills' definitions (what each one runs): pass --app MODULE or set "
            f"{APP_ENV} (for example myapp.backfills)"
        )
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
        raise AppError(_import_failure(name, exc)) from None
    except BackfillError:
        raise
    except Exception as exc:
        raise AppError(_import_failure(name, exc)) from None
    registry = Registry.from_module(module)
    if not registry:
        raise AppError(f"module '{name}' defines no backfill: define one with backfill.Backfill or @backfill.define")
    return registry


def _import_failure(name: str, exc: BaseException) -> str:
    logger.debug("importing the definitions module %s failed", name, exc_info=exc)
    where = _where(exc)
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return (
        f"cannot import definitions module '{name}': {type(exc).__name__}: {detail}"
        f"{f' ({where})' if where else ''}; fix the module (BACKFILL_LOG_LEVEL=DEBUG shows the traceback)"
    )


def _where(exc: BaseException) -> str | None:
    """file:line of the error in the user's code: a syntax error's own, else the innermost frame
    that is not Python's import machinery."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
