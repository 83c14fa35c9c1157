"""kill -9 of one front-door worker of ``serve --workers 2`` under load.

The worker dies with requests half-done: some payments journaled (even charged) whose
answer never left. Its clients see a reset or refused connection and send the same
request again with the same Idempotency-Key; the surviving process answers them, with
the payment the first send created where there was one. Afterwards the audit holds:
nothing acknowledged lost, no key or payment applied twice, nothing captured twice, the
ledger balanced. A charge the dead worker had started is resolved by the janitor.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from .harness import Load, audit, portal, settle

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

BEFORE_KILL = 200
AFTER_KILL_S = 4.0


def _workers(serve_pid: int) -> list[psutil.Process]:
    """serve's front-door processes besides itself: multiprocessing's spawned children
    (not its resource tracker, which is one too)."""
    found = []
    for child in psutil.Process(serve_pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_killed_front_door_worker_loses_nothing_acknowledged(
    tmp_path: Path, scratch_postgres: str
) -> None:
    with portal(tmp_path, scratch_postgres, args=("--workers", "2")) as running:
        running.add_card(running.served.sandbox_port)
        [worker] = _workers(running.served.pid)
        load = Load(running).start()
        try:
            load.wait_for(BEFORE_KILL)
            killed_at = time.monotonic()
            os.kill(worker.pid, signal.SIGKILL)
            time.sleep(AFTER_KILL_S)
        finally:
            load.stop()
        interrupted = sum(load.refusals.values())
        # The fault must have hit: some client was on the killed worker.
        assert interrupted, "no client noticed the worker's death"
        assert not load.gave_up, f"{load.gave_up} payments never answered"
        answered = load.interrupted_answers(killed_at)
        assert answered, "no resent payment was answered"
        back = load.first_success_after(killed_at)
        assert back is not None, "no payment sent after the kill succeeded"
        unknown, resolved_s, ended = settle(tmp_path, load)
    held = load.refusals["409"]
    audit(
        "front-door worker kill -9",
        load,
        back - killed_at,
        f"{interrupted} sends not answered and resent, {len(answered)} payments answered "
        f"after resending, the first {answered[0] - killed_at:.1f} s and the last "
        f"{answered[-1] - killed_at:.1f} s after the kill"
        + (
            f" ({held} answers 409 for a key whose request died with the worker, until "
            "its takeover at 60 s)"
            if held
            else ""
        )
        + f"; {unknown} left unknown, resolved in {resolved_s:.1f} s to "
        f"{dict(sorted(ended.items()))}",
    )
