"""What every asyncio task was awaiting when a test is about to hit pytest-timeout.

pytest-timeout prints the threads' stacks, and for an async test the main thread's stack
is only the event loop's ``select``: it does not say which coroutine never finished. This
plugin prints each task of the running loops (with the line each is parked on) shortly
before the timeout fires, into the test's captured output, so a hang seen once in CI can
be read from its log.
"""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
from collections.abc import Generator

import pytest

# Seconds before pytest-timeout's own deadline: enough to print, before its report.
LEAD_S = 20.0


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    return [o for o in gc.get_objects()
            if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]  # fmt: skip


def _tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[object]]:
    # Read from another thread while the loop runs: the set may change under us.
    for _ in range(10):
        try:
            return list(asyncio.all_tasks(loop))
        except RuntimeError:
            continue
    return []


def task_report(nodeid: str) -> str:
    out = io.StringIO()
    out.write(f"\n=== asyncio tasks still running in {nodeid} ===\n")
    for loop in _running_loops():
        for task in _tasks(loop):
            out.write(f"--- {task!r}\n")
            try:
                task.print_stack(limit=12, file=out)
            except Exception as exc:  # a diagnostic must never fail the run itself
                out.write(f"(stack unavailable: {type(exc).__name__})\n")
    return out.getvalue()


def _timeout_s(item: pytest.Item) -> float | None:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    try:
        value = item.config.getini("timeout")  # registered by pytest-timeout
        return float(value) if value else None
    except (TypeError, ValueError):
        return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, object, object]:  # fmt: skip
    timeout = _timeout_s(item)
    timer = None
    if timeout is not None and timeout > 2 * LEAD_S:
        timer = threading.Timer(timeout - LEAD_S,
                                lambda: sys.stderr.write(task_report(item.nodeid)))  # fmt: skip
        timer.daemon = True
        timer.start()
    try:
        return (yield)
    finally:
        if timer is not None:
            timer.cancel()
