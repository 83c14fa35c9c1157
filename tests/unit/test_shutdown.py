"""The stop sequence's guarantees (payportal.shutdown): a step that never finishes, or a
task that swallows its cancellation, is named and left behind; the process still ends
within its bound; a loop blocked in synchronous code is ended by the watchdog; a second
signal ends the process at once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import structlog

from payportal.shutdown import EXIT_HUNG, EXIT_SECOND_SIGNAL, Shutdown


async def _forever() -> None:
    await asyncio.Event().wait()


async def _deaf(released: asyncio.Event) -> None:
    """A loop that swallows its cancellation, as a careless ``except BaseException`` does;
    only ``released`` ends it (so the test's own loop can close)."""
    while not released.is_set():
        try:
            await released.wait()
        except asyncio.CancelledError:
            continue


async def test_finished_steps_exit_zero_and_are_logged() -> None:
    shutdown = Shutdown("test", bound_s=5)
    with structlog.testing.capture_logs() as logs:
        shutdown.begin("SIGTERM")
        try:
            assert await shutdown.step("quick", lambda: asyncio.sleep(0))
            assert shutdown.finish() == 0
        finally:
            shutdown.disarm()
    events = [entry["event"] for entry in logs]
    assert events == ["shutdown_started", "shutdown_step", "shutdown_finished"]
    assert logs[1]["step"] == "quick"


async def test_a_step_that_never_finishes_is_named_and_the_rest_still_runs() -> None:
    shutdown = Shutdown("test", bound_s=5)
    shutdown.begin("SIGTERM")
    ran = []
    try:
        began = time.monotonic()
        assert not await shutdown.step("stuck", _forever, cap_s=0.2)
        assert await shutdown.step("after", lambda: asyncio.sleep(0, ran.append("after")))
        assert time.monotonic() - began < 2
        assert ran == ["after"]
        assert shutdown.unfinished == ["stuck"]
        assert shutdown.finish() == EXIT_HUNG
    finally:
        shutdown.disarm()


async def test_a_task_deaf_to_cancellation_does_not_hold_the_stop() -> None:
    shutdown = Shutdown("test", bound_s=0.5)
    shutdown.begin("SIGTERM")
    released = asyncio.Event()
    deaf = asyncio.create_task(_deaf(released), name="deaf-loop")
    polite = asyncio.create_task(_forever(), name="polite-loop")
    await asyncio.sleep(0)  # both running, waiting inside their loops
    try:
        began = time.monotonic()
        assert not await shutdown.stop_tasks("background loops", [deaf, polite, None])
        assert time.monotonic() - began < 2
        assert polite.cancelled()
        assert shutdown.unfinished == ["background loops (deaf-loop)"]
    finally:
        shutdown.disarm()
        released.set()
        await deaf


async def test_a_failing_step_is_named_by_its_error_type_only() -> None:
    async def leaky() -> None:
        raise RuntimeError("password=hunter2-secret")

    shutdown = Shutdown("test", bound_s=5)
    with structlog.testing.capture_logs() as logs:
        shutdown.begin("SIGTERM")
        try:
            assert not await shutdown.step("store", leaky)
        finally:
            shutdown.disarm()
    failed = [entry for entry in logs if entry["event"] == "shutdown_step_failed"]
    assert failed[0]["error"] == "RuntimeError"
    assert "hunter2" not in repr(logs)


def _run(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_line(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdout is not None
    assert process.stdout.readline().strip() == line


@pytest.mark.slow
def test_the_watchdog_ends_a_process_whose_loop_is_blocked() -> None:
    process = _run("""
        import asyncio, time
        from payportal.shutdown import Shutdown

        async def main():
            shutdown = Shutdown("blocked", bound_s=0.5, grace_s=0.5)
            shutdown.begin("SIGTERM")
            await shutdown.step("sync sleep", lambda: asyncio.to_thread(lambda: None))
            shutdown._current = "blocking call"
            time.sleep(60)  # the loop itself is stuck: no step can time out

        asyncio.run(main())
    """)
    began = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_HUNG, stderr
    assert time.monotonic() - began < 20
    assert "in step 'blocking call'" in stderr


@pytest.mark.slow
def test_a_second_signal_while_stopping_exits_at_once() -> None:
    process = _run("""
        import asyncio
        from payportal.shutdown import wait_for_stop_signal

        async def main():
            stopped = asyncio.ensure_future(wait_for_stop_signal("slow stopper"))
            await asyncio.sleep(0)  # its handlers are installed
            print("ready", flush=True)
            await stopped
            print("stopping", flush=True)
            await asyncio.sleep(60)  # a stop that would take a minute

        asyncio.run(main())
    """)
    _wait_for_line(process, "ready")
    process.send_signal(signal.SIGTERM)
    _wait_for_line(process, "stopping")
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_SECOND_SIGNAL, stderr
    assert time.monotonic() - began < 10
    assert "SIGINT again while stopping" in stderr
