"""The gateway's memory of the outcomes it recorded, which lets a callback repeating one be
answered without a hop to the shard — also when the callback overtakes the charge's own
reply, by waiting for this process's charge of that attempt to be recorded."""

from __future__ import annotations

import asyncio

from payportal.engine import OutcomeKind
from payportal.http.gateway import RecentOutcomes


async def test_a_callback_waits_for_this_processs_charge_and_then_finds_its_outcome() -> None:
    recent = RecentOutcomes()
    recent.charging("att_1")
    waiting = asyncio.create_task(recent.settled("att_1"))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the charge's reply has not been recorded yet

    recent.add("att_1", OutcomeKind.succeeded, "ch_1", None)
    recent.charged("att_1")
    await asyncio.wait_for(waiting, 1)

    assert recent.recorded("att_1", OutcomeKind.succeeded, "ch_1", None)
    assert not recent.recorded("att_1", OutcomeKind.declined, "ch_1", "do_not_honor")
    assert not recent.recorded("att_1", OutcomeKind.succeeded, "ch_other", None)


async def test_an_attempt_this_process_is_not_charging_is_not_waited_for() -> None:
    recent = RecentOutcomes()
    await asyncio.wait_for(recent.settled("att_elsewhere"), 0.1)
    assert not recent.recorded("att_elsewhere", OutcomeKind.succeeded, "ch_1", None)


async def test_a_charge_that_never_lands_holds_a_callback_only_so_long() -> None:
    recent = RecentOutcomes()
    recent.CHARGE_WAIT_S = 0.05  # type: ignore[misc]
    recent.charging("att_stuck")
    await asyncio.wait_for(recent.settled("att_stuck"), 1)
    assert not recent.recorded("att_stuck", OutcomeKind.succeeded, "ch_1", None)


def test_the_oldest_outcomes_are_forgotten_first() -> None:
    recent = RecentOutcomes()
    recent.ENTRIES_MAX = 2  # type: ignore[misc]
    for n in range(3):
        recent.add(f"att_{n}", OutcomeKind.succeeded, f"ch_{n}", None)
    assert not recent.recorded("att_0", OutcomeKind.succeeded, "ch_0", None)
    assert recent.recorded("att_2", OutcomeKind.succeeded, "ch_2", None)
