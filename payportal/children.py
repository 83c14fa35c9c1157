"""Side services of ``payportal serve`` as child processes: started, waited for, stopped.

The model: the sandbox processor and the mail service are other processes in production
(a real processor, a real SMTP server), so ``serve`` runs them as processes of their own
too; their CPU is then not taken from the front door's event loop, and benchmarks see
the shape a deployment has. A child is ready when its port accepts connections (one that
listens on nothing, the mail sender, once it is started). Stopping
is SIGTERM, a bounded wait, then SIGKILL. On Linux a child also asks for SIGTERM when
``serve`` dies without stopping it (``die_with_parent``), so none is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Sequence

import structlog

__all__ = ["Child", "ChildFailed", "die_with_parent", "start_child", "stop_children"]

log = structlog.get_logger("payportal.children")

# Importing payportal and binding a port takes a second or two; a loaded machine, more.
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.05
# prctl(2) option: the signal a process gets when its parent thread dies.
_PR_SET_PDEATHSIG = 1
# Set by ``start_child`` in the child's environment: the pid it must outlive no longer.
PARENT_PID_ENV = "PAYPORTAL_PARENT_PID"


class ChildFailed(RuntimeError):
    """A child exited or did not listen in time."""


class Child:
    def __init__(self, name: str, process: asyncio.subprocess.Process, port: int | None) -> None:
        self.name = name
        self.process = process
        self.port = port

    @property
    def pid(self) -> int:
        return self.process.pid

    def __repr__(self) -> str:
        return f"Child({self.name!r}, pid={self.pid}, port={self.port})"


def die_with_parent(parent: int | None = None) -> None:
    """In a child started by ``start_child`` (or given its parent's pid): exit with
    SIGTERM when the parent dies.

    Called by the child itself, not between fork and exec, where a process with threads
    (Ray's) must not load libraries. The parent forks from its event loop's thread, which
    lives as long as it does."""
    if parent is None:
        inherited = os.environ.get(PARENT_PID_ENV)
        parent = None if inherited is None else int(inherited)
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def start_child(
    name: str,
    argv: Sequence[str],
    *,
    port: int | None,
    host: str = "127.0.0.1",
    ready_timeout_s: float = READY_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> Child:
    """Start ``argv`` and return once it accepts connections on ``host:port`` (with no
    port: once it is started)."""
    if port is not None and await _accepts(host, port):
        raise ChildFailed(f"{name}: {host}:{port} is already in use")
    # A session of its own: Ctrl-C in a terminal reaches serve only, which stops its
    # children after the front door has drained (a sandbox gone first would fail the
    # charges still in flight); if serve dies instead, die_with_parent ends them.
    process = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, **(env or {}), PARENT_PID_ENV: str(os.getpid())},
        start_new_session=True,
    )
    child = Child(name, process, port)
    if port is None:
        log.info("child_started", child=name, pid=process.pid)
        return child
    deadline = time.monotonic() + ready_timeout_s
    while not await _accepts(host, port):
        if process.returncode is not None:
            raise ChildFailed(f"{name} exited with status {process.returncode} before listening")
        if time.monotonic() > deadline:
            await stop_children([child], timeout_s=5)
            raise ChildFailed(f"{name} did not listen on {host}:{port} in {ready_timeout_s:.0f} s")
        await asyncio.sleep(READY_POLL_S)
    log.info("child_started", child=name, pid=process.pid, port=port)
    return child


async def stop_children(children: Sequence[Child], *, timeout_s: float) -> list[str]:
    """SIGTERM every child, wait up to ``timeout_s`` for all, SIGKILL the rest; the names
    of those that had to be killed."""
    for child in children:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    killed = []
    for child in children:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(child.process.wait(), remaining)
        except TimeoutError:
            log.warning("child_killed", child=child.name, pid=child.pid, after_s=timeout_s)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
            killed.append(child.name)
        else:
            log.info("child_stopped", child=child.name, status=child.process.returncode)
    return killed
