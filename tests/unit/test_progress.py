"""What ``status`` shows of a run's size and pace, from the run's counters alone: the total
(estimated, refined from the sweep, or exact), how far along it is, and when it ends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from backfill.definition import Backfill
from backfill.display import ProgressBar
from backfill.progress import RunProgress, refine_total
from backfill.status import Phase, RunStatus
from backfill.store import Run
from tests.unit.runs import CREATED, DEFINITION, a_run

ESTIMATED = {"status": RunStatus.RUNNING, "rows_total": 1000, "rows_total_estimated": True}


def progress(run: Run, *, rate: float = 0.0, refined_total: int | None = None) -> RunProgress:
    return RunProgress(run, batches_pending=2, batches_running=1, rate=rate, elapsed_seconds=10.0,
                       refined_total=refined_total)  # fmt: skip


def test_the_total_is_refined_from_the_share_of_the_key_range_planned() -> None:
    # Keys 1..1000 planned up to 250: a quarter of the range held 600 rows, so about 2,400.
    run = a_run(**ESTIMATED, cursor=[250], end_key=[1000])
    assert refine_total(run, planned_rows=600, first_key=[1]) == 2400
    # The sweep started at 501 of 501..1000: the share is of the range the run covers.
    run = a_run(**ESTIMATED, cursor=[750], end_key=[1000])
    assert refine_total(run, planned_rows=100, first_key=[501]) == 200


@pytest.mark.parametrize(
    ("fields", "first_key", "why"),
    [
        ({"rows_total_estimated": False, "cursor": [250], "end_key": [1000]}, [1], "the total is exact already"),
        ({"cursor": None, "end_key": [1000]}, [1], "nothing planned yet"),
        ({"cursor": [250], "end_key": None}, [1], "the table was empty at the start"),
        ({"cursor": [250], "end_key": [1000]}, None, "no first batch"),
        ({"cursor": ["m"], "end_key": ["z"]}, ["a"], "a text key says nothing of the share"),
        ({"cursor": [5], "end_key": [5]}, [5], "a range of one key"),
        ({"cursor": [1], "end_key": [1_000_000]}, [1], "under a thousandth of the range: too early to tell"),
    ],
)
def test_no_refinement_where_the_keys_cannot_tell(
    fields: dict[str, Any], first_key: list[Any] | None, why: str
) -> None:
    run = a_run(**{**ESTIMATED, **fields})
    assert refine_total(run, planned_rows=600, first_key=first_key) is None, why


def test_a_composite_key_is_not_refined() -> None:
    composite = Backfill(name="pairs", table="pairs", key=("a", "b"), work="UPDATE pairs SET done = 1")
    run = a_run(definition=composite, **ESTIMATED, cursor=[5, 1], end_key=[10, 1])
    assert refine_total(run, planned_rows=600, first_key=[1, 1]) is None


def test_once_the_sweep_is_planned_its_rows_are_the_exact_total() -> None:
    assert refine_total(a_run(**ESTIMATED, planned_all=True), planned_rows=987, first_key=[1]) == 987
    assert refine_total(a_run(**ESTIMATED, phase=Phase.CATCHUP), planned_rows=987, first_key=None) == 987


def test_the_refined_total_wins_over_the_catalogs_estimate() -> None:
    run = a_run(**ESTIMATED, rows_done=300)
    assert progress(run).rows_total == 1000
    assert progress(run, refined_total=2400).rows_total == 2400
    assert progress(run, refined_total=2400).fraction == pytest.approx(0.125)


def test_rows_done_past_the_estimate_raise_the_total_and_say_so() -> None:
    under = progress(a_run(**ESTIMATED, rows_done=900))
    assert (under.rows_total, under.rows_total_raised) == (1000, False)
    over = progress(a_run(**ESTIMATED, rows_done=1300))
    assert (over.rows_total, over.rows_total_raised, over.fraction) == (1300, True, 1.0)
    shown = over.to_json()
    assert (shown["rows_total"], shown["rows_total_raised"], shown["percent"]) == (1300, True, 100.0)


def test_without_a_total_there_is_no_fraction_and_no_eta() -> None:
    unknown = progress(a_run(status=RunStatus.RUNNING, rows_total=None, rows_done=50), rate=10.0)
    assert (unknown.rows_total, unknown.fraction, unknown.eta_seconds) == (None, None, None)
    assert not unknown.rows_total_raised
    empty = progress(a_run(status=RunStatus.RUNNING, rows_total=0))
    assert empty.fraction is None


def test_a_finished_run_is_whole_whatever_the_estimate_said() -> None:
    done = progress(a_run(**{**ESTIMATED, "status": RunStatus.FINISHED}, rows_done=700), rate=50.0)
    assert done.fraction == 1.0
    assert done.eta_seconds is None
    assert done.to_json()["rows_total_is_estimate"] is False


def test_the_eta_is_the_rows_left_at_the_current_rate_while_running() -> None:
    run = a_run(**ESTIMATED, rows_done=400)
    assert progress(run, rate=50.0).eta_seconds == pytest.approx(12.0)
    assert progress(run, rate=0.0).eta_seconds is None  # stalled, or held: no promise
    paused = a_run(**{**ESTIMATED, "status": RunStatus.PAUSED}, rows_done=400)
    assert progress(paused, rate=50.0).eta_seconds is None
    assert progress(a_run(**ESTIMATED, rows_done=1500), rate=50.0).eta_seconds == 0.0


def test_the_json_counts_what_is_in_flight_and_shows_a_hold_while_running_or_why_a_run_paused_itself() -> None:
    held = {"held_reason": "replica lag 45 s", "held_since": CREATED + timedelta(minutes=5)}
    running = progress(a_run(**ESTIMATED, **held)).to_json()
    # In flight: the batches being worked on (1), not those planned ahead of them (2).
    assert running["batches_in_flight"] == running["batches_running"] == 1
    assert running["batches_pending"] == 2
    assert running["held_reason"] == "replica lag 45 s"
    assert running["held_since"] == "2026-11-23T12:05:00Z"
    paused = progress(a_run(**{**ESTIMATED, "status": RunStatus.PAUSED})).to_json()
    assert paused["held_reason"] is None and paused["held_since"] is None
    critical = {"held_reason": "critical load: 1,204 sessions running", "held_since": CREATED}
    paused_itself = progress(a_run(**{**ESTIMATED, "status": RunStatus.PAUSED}, **critical)).to_json()
    assert paused_itself["held_reason"] == "critical load: 1,204 sessions running"
    finished = progress(a_run(**{**ESTIMATED, "status": RunStatus.FINISHED}, **held)).to_json()
    assert finished["held_reason"] is None
    assert running["table"] == DEFINITION.table


def test_an_outage_is_said_in_the_progress_line_while_it_lasts() -> None:
    bar = ProgressBar("items")
    bar.waiting("waiting for the database (3s of 60s): connection refused")
    assert bar.progress.tasks[0].description == "items (waiting for the database (3s of 60s): connection refused)"
    bar.waiting(None)
    assert bar.progress.tasks[0].description == "items"
