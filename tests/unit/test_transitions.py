"""The state machines, checked without a database: every status the code writes is an edge of
the written tables, and every status write goes through a guarded move."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import backfill
from backfill.status import BatchStatus, RunStatus
from backfill.transitions import BATCH_EDGES, RUN_EDGES, Move, batch_move, run_move

PACKAGE = Path(backfill.__file__).parent


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages([str(PACKAGE)], "backfill.") if not m.name.endswith("__main__")]


def _moves() -> list[tuple[str, Move]]:  # type: ignore[type-arg]
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        found += [(f"{name}.{attr}", value) for attr, value in vars(module).items() if isinstance(value, Move)]
    return found


def test_every_move_the_code_declares_is_an_edge_of_its_table() -> None:
    moves = _moves()
    assert len(moves) >= 10, moves
    for where, move in moves:
        table = RUN_EDGES if isinstance(move.target, RunStatus) else BATCH_EDGES
        for source in move.sources:
            assert (source, move.target) in table, f"{where}: {source} -> {move.target} is not in the table"


def test_a_move_off_the_table_is_refused_when_it_is_declared() -> None:
    with pytest.raises(ValueError, match="finished -> running is not an edge"):
        run_move(RunStatus.FINISHED, to=RunStatus.RUNNING)
    with pytest.raises(ValueError, match="succeeded -> pending is not an edge"):
        batch_move(BatchStatus.SUCCEEDED, to=BatchStatus.PENDING)


def test_every_edge_says_when_it_fires_and_finished_is_the_end() -> None:
    for (source, target), why in {**RUN_EDGES, **BATCH_EDGES}.items():
        assert why.strip(), f"{source} -> {target} has no comment"
    assert not [e for e in RUN_EDGES if e[0] in (RunStatus.FINISHED, RunStatus.CANCELLED)]
    assert not [e for e in BATCH_EDGES if e[0] in (BatchStatus.SUCCEEDED, BatchStatus.SPLIT)]


def _writes_status(node: ast.AST, in_store: bool) -> bool:
    """``.values(status=...)`` anywhere, or, in the store, a row dict with a ``status`` key."""
    call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values"
    if call and any(k.arg == "status" for k in node.keywords):  # type: ignore[attr-defined]
        return True
    return (
        in_store
        and isinstance(node, ast.Dict)
        and any(isinstance(k, ast.Constant) and k.value == "status" for k in node.keys)
    )


# The guarded move helpers, and the rows of new runs and batches (the None -> pending edges).
ALLOWED = {"_move_run", "_move_batches", "new_run_values", "batch_values"}


def test_every_status_write_goes_through_a_move() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        in_store = path.parent.name == "store"
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) or function.name in ALLOWED:
                continue
            for node in ast.walk(function):
                if _writes_status(node, in_store):
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} in {function.name}()")
    assert not offenders, "status written outside the guarded moves:\n" + "\n".join(offenders)


def test_new_rows_start_where_the_tables_say() -> None:
    assert (None, RunStatus.PENDING) in RUN_EDGES and (None, BatchStatus.PENDING) in BATCH_EDGES
