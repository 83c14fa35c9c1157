"""Processes the end-to-end benchmark and the load-test check start, and how they stop.

Rules, because the machine is shared: every port is a free one picked here (never a
default other people's servers may hold); only processes started here are signalled,
by pid, and so are their descendants that outlive them (Ray's daemons, should a server
die before stopping its own), found by walking the tree before the stop, never by
matching names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

__all__ = ["Managed", "clean_environment", "free_port", "wait_http"]

STOP_S = 60.0
KILL_WAIT_S = 10.0

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, and one not handed out before in this run."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class Managed:
    """One child process, its output in a log file (a pipe nobody reads would fill up
    and stall it)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log: Path,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.log = log
        self.stop_signal = stop_signal
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Managed:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = STOP_S) -> int | None:
        """Signal it, wait, then SIGKILL; then whatever it started that outlived it."""
        if self.process is None:
            return None
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # psutil's Process remembers its start time: a reused pid is not signalled.
        survivors = [p for p in descendants if p.is_running()]
        for process in survivors:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(survivors, timeout=KILL_WAIT_S)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        return self.process.returncode


def _get(url: str, timeout_s: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # loopback only
        return int(answer.status)


async def wait_http(url: str, process: Managed, timeout_s: float) -> None:
    """Until ``url`` answers 200; fails early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not process.running():
            raise RuntimeError(f"{process.name} exited while starting:\n{process.tail()}")
        try:
            if await asyncio.to_thread(_get, url, 2.0) == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not answer {url} in {timeout_s:.0f} s:\n"
                               f"{process.tail()}")  # fmt: skip
        await asyncio.sleep(0.2)


def clean_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without settings that would point a child elsewhere, plus ``extra``."""
    # The run's data keys stay: the benchmark reads the databases its children write.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PAYPORTAL_") or k == "PAYPORTAL_DATA_KEYS"}  # fmt: skip
    env.update(extra)
    return env
