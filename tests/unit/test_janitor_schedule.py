"""When the retry janitor looks: every interval while it finds work, ever more seldom while
it finds none (up to a cap), and at once when a commit says work is due."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import Any

from payportal.actors.janitor import JanitorReport, RetryJanitor


class _Engine:
    def execution_options(self, **_: Any) -> _Engine:
        return self


def _janitor(found: list[int]) -> tuple[RetryJanitor, list[float]]:
    janitor = RetryJanitor(
        router=None,  # type: ignore[arg-type]
        store=SimpleNamespace(engine=_Engine()), processor=None,  # type: ignore[arg-type]
    )  # fmt: skip
    runs: list[float] = []

    async def run_once() -> JanitorReport:
        runs.append(time.monotonic())
        return JanitorReport(retries_due=found.pop(0) if found else 0)

    janitor.run_once = run_once  # type: ignore[method-assign]
    return janitor, runs


async def test_an_idle_janitor_looks_ever_more_seldom_up_to_its_cap() -> None:
    janitor, runs = _janitor([])
    task = asyncio.create_task(janitor.run_forever(10, idle_max_ms=160))
    await asyncio.sleep(1.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    # Waits of 20, 40, 80, 160, 160, … ms: a handful of looks in a second (fewer on a
    # busy machine), never the hundred an every-10-ms loop would make.
    assert 3 <= len(runs) <= 11, runs


async def test_work_found_keeps_it_looking_every_interval() -> None:
    janitor, runs = _janitor([1] * 1_000)
    task = asyncio.create_task(janitor.run_forever(10, idle_max_ms=5_000))
    await asyncio.sleep(0.5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    assert len(runs) >= 15


async def test_a_commit_that_schedules_work_wakes_it_at_once() -> None:
    janitor, runs = _janitor([])
    task = asyncio.create_task(janitor.run_forever(10, idle_max_ms=60_000))
    # Looks at about 0, 0.02, 0.06, 0.14, 0.3, 0.62 and 1.26 s, then not before 2.54 s:
    # woken at 1.9 s, the look it makes is the woken one.
    await asyncio.sleep(1.9)
    before = len(runs)

    janitor.wake_at(int(time.time() * 1000))
    await asyncio.sleep(0.4)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    assert len(runs) == before + 1
