"""An asyncio event loop on simulated time, for deterministic simulations.

The loop is the standard one with two things replaced: ``time()`` reads a simulated
clock, and the selector never waits. When no callback is ready the loop jumps the clock
straight to the next timer, so ``asyncio.sleep``, ``call_later``, ``asyncio.timeout`` and
``wait_for`` all run on simulated time and an hour of it costs nothing. Callbacks run in
the order asyncio schedules them (FIFO, timers by due time), so the same program with the
same seeds runs the same way every time.

There is no I/O: a loop with nothing ready and no timer can never make progress again,
and says so (``SimulationDeadlock``) instead of hanging.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any

__all__ = ["SimulationDeadlock", "VirtualTimeLoop"]


class SimulationDeadlock(RuntimeError):
    """Every task waits on something nothing will ever deliver."""


class _NeverWaits(selectors.BaseSelector):
    """A selector with no I/O: ``select`` advances the loop's clock by its timeout."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationDeadlock("nothing is ready and no timer is set")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now_s = 0.0
        super().__init__(_NeverWaits(self))
        # Timers due within this of the clock run; far below any delay a simulation uses,
        # far above the float error of adding a timeout to the clock.
        self._clock_resolution = 1e-7

    def time(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now_s += seconds
