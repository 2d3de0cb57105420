"""A fleet's cap shared over its members (``dispatch.share``): all of the cap that is wanted is
used, nobody gets more than it wants, and nobody wanting more is left two chains behind another."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backfill.dispatch import share


@given(
    wants=st.lists(st.integers(0, 12), min_size=0, max_size=8),
    budget=st.integers(-2, 40),
    start=st.integers(0, 100),
)
def test_the_cap_is_shared_fairly(wants: list[int], budget: int, start: int) -> None:
    names = [f"m{i}" for i in range(len(wants))]
    wanted = dict(zip(names, wants, strict=True))
    given_to = dict.fromkeys(names, 0)

    def send_one(name: str) -> bool:
        if given_to[name] >= wanted[name]:
            return False
        given_to[name] += 1
        return True

    started = share(names, send_one, budget, start)
    assert started == sum(given_to.values()) == min(max(budget, 0), sum(wants))
    assert all(given_to[n] <= wanted[n] for n in names)
    for short in (n for n in names if given_to[n] < wanted[n]):
        assert all(given_to[other] <= given_to[short] + 1 for other in names)


def test_the_first_member_turns_from_tick_to_tick() -> None:
    firsts = []
    for turn in range(3):
        got: list[str] = []
        share(["a", "b", "c"], lambda name: got.append(name) is None, 1, start=turn)  # noqa: B023
        firsts.append(got[0])
    assert firsts == ["a", "b", "c"]
