"""Stopping a process within a bound, whatever its parts do.

The model: a stop is a sequence of named steps (stop accepting, drain, stop loops, flush
checkpoints, close stores), each given what is left of one overall bound. A step that
does not finish in time is named in the log and left behind; the sequence goes on, so one
stuck part (a task that swallows its cancellation, a handler that never returns, a Ray
call to an actor that is itself stopping) cannot keep the process alive. Waiting uses
``asyncio.wait``, never ``asyncio.wait_for``: the latter waits for the cancelled work to
acknowledge its cancellation, which is exactly what a stuck task never does.

Two guards sit outside the event loop, because a loop blocked in synchronous code runs no
step at all: a watchdog thread ends the process (status ``EXIT_HUNG``, naming the step it
was in) when the bound plus a grace has passed, and a second SIGINT or SIGTERM ends it at
once (``EXIT_SECOND_SIGNAL``). Both use ``os._exit``: children asked to die with their
parent (``payportal.children.die_with_parent``) follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

__all__ = ["EXIT_HUNG", "EXIT_SECOND_SIGNAL", "Shutdown", "wait_for_stop_signal"]

log = structlog.get_logger("payportal.shutdown")

# A stop that had to abandon a step, or that the watchdog ended.
EXIT_HUNG = 3
# 128 + SIGINT, what a shell reports for a process ended by Ctrl-C.
EXIT_SECOND_SIGNAL = 130
# Past the bound, the watchdog waits this much more for the interpreter's own exit
# (atexit handlers, Ray's among them) before it ends the process itself.
WATCHDOG_GRACE_S = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _write_stderr(line: str) -> None:
    # No logger: this may run while the loop, or the logging lock's holder, is stuck.
    with contextlib.suppress(OSError, ValueError):
        os.write(sys.stderr.fileno(), (line + "\n").encode())


async def wait_for_stop_signal(process: str) -> signal.Signals:
    """Wait for SIGINT or SIGTERM; afterwards a second one ends the process at once."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def first(signum: signal.Signals) -> None:
        if not received.done():
            received.set_result(signum)
        for each in STOP_SIGNALS:
            loop.add_signal_handler(each, second, each)

    def second(signum: signal.Signals) -> None:
        _write_stderr(f"{process}: {signum.name} again while stopping; exiting now")
        os._exit(EXIT_SECOND_SIGNAL)

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, first, signum)
    return await received


class Shutdown:
    """The steps of one stop, all within ``bound_s`` of ``begin``."""

    def __init__(
        self, process: str, bound_s: float, *, grace_s: float = WATCHDOG_GRACE_S
    ) -> None:
        self.process = process
        self.bound_s = bound_s
        self.grace_s = grace_s
        self.unfinished: list[str] = []
        self._started = time.monotonic()
        self._deadline = self._started + bound_s
        self._current = "starting"
        self._watchdog: threading.Timer | None = None

    def begin(self, reason: str) -> None:
        self._started = time.monotonic()
        self._deadline = self._started + self.bound_s
        log.info("shutdown_started", process=self.process, reason=reason, bound_s=self.bound_s)
        self._watchdog = threading.Timer(self.bound_s + self.grace_s, self._hard_exit)
        self._watchdog.daemon = True
        self._watchdog.name = "payportal-shutdown-watchdog"
        self._watchdog.start()

    def _hard_exit(self) -> None:
        _write_stderr(
            f"{self.process}: stop took longer than {self.bound_s + self.grace_s:.0f} s "
            f"(in step {self._current!r}); exiting"
        )
        os._exit(EXIT_HUNG)

    def remaining_s(self, cap_s: float | None = None) -> float:
        left = max(0.0, self._deadline - time.monotonic())
        return left if cap_s is None else min(left, cap_s)

    async def step(
        self, name: str, work: Callable[[], Awaitable[Any]], *, cap_s: float | None = None
    ) -> bool:
        """Run ``work()`` for at most the time left (and ``cap_s``); True if it finished.
        An exception is logged by type only (a traceback's values may hold secrets)."""
        self._current = name
        began = time.monotonic()
        task = asyncio.ensure_future(work())
        done, _ = await asyncio.wait({task}, timeout=self.remaining_s(cap_s))
        took_ms = round((time.monotonic() - began) * 1000)
        if not done:
            task.cancel()  # not awaited: a stuck task may never acknowledge it
            self.unfinished.append(name)
            log.error("shutdown_step_timed_out", process=self.process, step=name, after_ms=took_ms)
            return False
        error = task.exception()
        if error is not None:
            self.unfinished.append(name)
            log.error("shutdown_step_failed", process=self.process, step=name,
                      error=type(error).__name__, after_ms=took_ms)  # fmt: skip
            return False
        log.info("shutdown_step", process=self.process, step=name, took_ms=took_ms)
        return True

    async def stop_tasks(
        self, name: str, tasks: Iterable[asyncio.Task[Any] | None], *, cap_s: float | None = None
    ) -> bool:
        """Cancel background loops and wait for them; the ones that do not end are named."""
        self._current = name
        pending = {task for task in tasks if task is not None and not task.done()}
        for task in pending:
            task.cancel()
        if not pending:
            return True
        began = time.monotonic()
        _, still = await asyncio.wait(pending, timeout=self.remaining_s(cap_s))
        if still:
            names = sorted(task.get_name() for task in still)
            self.unfinished.append(f"{name} ({', '.join(names)})")
            log.error("shutdown_tasks_did_not_stop", process=self.process, step=name,
                      tasks=names, after_ms=round((time.monotonic() - began) * 1000))  # fmt: skip
            return False
        log.info("shutdown_step", process=self.process, step=name,
                 took_ms=round((time.monotonic() - began) * 1000))  # fmt: skip
        return True

    def finish(self) -> int:
        """Log the outcome; the exit status: 0, or ``EXIT_HUNG`` naming what did not stop."""
        self._current = "exiting"
        took_ms = round((time.monotonic() - self._started) * 1000)
        if self.unfinished:
            log.error("shutdown_incomplete", process=self.process, took_ms=took_ms,
                      unfinished=self.unfinished)  # fmt: skip
            return EXIT_HUNG
        log.info("shutdown_finished", process=self.process, took_ms=took_ms)
        return 0

    def disarm(self) -> None:
        """For tests that run several stops in one process; a real one exits instead."""
        if self._watchdog is not None:
            self._watchdog.cancel()
