"""The impact budget's controller on its own: readings in, pace and decisions out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backfill import impact
from backfill.impact import Reading, State, step


def reading(at: float, commits: float, ours: int = 0, busy: float = 4.0, blocked: int = 0) -> Reading:
    return Reading(at=at, commits=commits, ours=ours, busy=busy, blocked=blocked)


def rest_then_work(rate: float = 1000.0, busy: float = 4.0) -> tuple[State, float, float]:
    """The controller after its first rest, at ``rate`` commits/s alone; (state, time, commits)."""
    decision = step(None, reading(0.0, 0.0), None, 0.1)
    assert decision.rest and decision.note == impact.RESTING and decision.pace == impact.FIRST_PACE
    t, commits, state = 0.0, 0.0, decision.state
    while True:
        t += 0.5
        commits += rate * 0.5
        decision = step(state, reading(t, commits, busy=busy), decision.pace, 0.1)
        state = decision.state
        if not decision.rest:
            assert decision.note.startswith(f"the application alone: {rate:,.0f} commits/s")
            return state, t, commits


def work(state: State, t: float, commits: float, pace: float, *, rate: float, busy: float = 4.0, blocked: int = 0,
         seconds: float = impact.WINDOW) -> tuple[impact.Decision, float, float]:  # fmt: skip
    decision = None
    end = t + seconds
    while t < end:
        t += 0.5
        commits += rate * 0.5
        decision = step(state, reading(t, commits, busy=busy, blocked=blocked), pace, 0.1)
        state, pace = decision.state, decision.pace
    assert decision is not None
    return decision, t, commits


def test_it_measures_the_application_alone_first() -> None:
    state, _, _ = rest_then_work()
    assert state.phase == "work" and state.base_rate is not None and abs(state.base_rate - 1000) < 1
    assert state.base_busy == 4.0


def test_it_backs_off_when_the_application_commits_less() -> None:
    state, t, commits = rest_then_work()
    decision, _, _ = work(state, t, commits, 0.5, rate=700.0)
    assert decision.pace == 0.5 * 0.5  # three times the budget: the pace is halved
    assert decision.note.startswith("backing off: the application commits 30% less than alone")
    state, t, commits = rest_then_work()
    decision, _, _ = work(state, t, commits, 0.5, rate=880.0)
    assert abs(decision.pace - 0.5 * 0.1 / 0.12) < 1e-9  # just over it: a little
    assert decision.note.startswith("backing off: the application commits 12% less than alone")


def test_it_backs_off_when_transactions_take_longer() -> None:
    state, t, commits = rest_then_work()
    decision, _, _ = work(state, t, commits, 0.5, rate=1000.0, busy=6.0)
    assert decision.pace < 0.5
    assert "transactions take 50% longer than alone" in decision.note


def test_sessions_waiting_on_its_locks_are_harm_whatever_the_throughput() -> None:
    state, t, commits = rest_then_work()
    decision, _, _ = work(state, t, commits, 0.5, rate=1000.0, blocked=3)
    assert decision.pace < 0.5 and "3 session(s) waited on the run's locks" in decision.note


def test_within_budget_it_speeds_up_to_full() -> None:
    state, t, commits = rest_then_work()
    pace = 0.5
    notes = []
    for _ in range(30):
        decision, t, commits = work(state, t, commits, pace, rate=970.0)
        state, pace = decision.state, decision.pace
        notes.append(decision.note)
    assert pace == 1.0
    assert any(n.startswith("within budget (commits -3%") and n.endswith("pace 50% -> 55%") for n in notes), notes


def test_near_the_budget_it_holds_its_pace() -> None:
    state, t, commits = rest_then_work()
    decision, _, _ = work(state, t, commits, 0.4, rate=920.0)  # 8% lost: over 2/3 of a 10% budget
    assert decision.pace == 0.4
    assert decision.note.startswith("near the budget (commits -8%") and decision.note.endswith("pace holds at 40%")


def test_its_own_commits_are_not_the_applications() -> None:
    state, t, commits = rest_then_work(rate=0.5, busy=0.0)
    ours = 0
    decision = None
    for _ in range(8):  # the run's batches are the only writers
        t += 0.5
        ours += 20
        commits += 20
        decision = step(state, reading(t, commits, ours=ours, busy=0.0), 1.0, 0.1)
        state = decision.state
    assert decision is not None and decision.pace == 1.0 and decision.note == "the application is idle: full speed"


def test_it_rests_again_to_measure_the_application_anew() -> None:
    state, t, commits = rest_then_work()
    decision, t, commits = work(state, t, commits, 0.5, rate=1000.0, seconds=impact.REST_EVERY + impact.WINDOW)
    assert decision.rest or any(
        step(decision.state, reading(t + 0.5 * i, commits + 500 * i), decision.pace, 0.1).rest for i in range(1, 6)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.05, 3.0),  # seconds since the last reading
            st.floats(0, 5000),  # the application's commits in them
            st.integers(0, 30),  # the run's own batches in them
            st.floats(0, 50),  # busy sessions
            st.integers(0, 5),  # blocked sessions
        ),
        min_size=1,
        max_size=80,
    ),
    st.floats(0.01, 0.9),
)
def test_the_pace_stays_within_its_bounds_and_the_state_survives_its_column(
    readings: list[tuple[float, float, int, float, int]], budget: float
) -> None:
    state: State | None = None
    pace: float | None = None
    t = commits = 0.0
    ours = 0
    for seconds, app, own, busy, blocked in readings:
        t += seconds
        ours += own
        commits += app + own
        decision = step(state, reading(t, commits, ours=ours, busy=busy, blocked=blocked), pace, budget)
        assert impact.MIN_PACE <= decision.pace <= 1.0
        assert decision.rest == (decision.state.phase == "rest") or decision.note
        state = State.from_json(decision.state.to_json())
        assert state == decision.state
        pace = decision.pace
