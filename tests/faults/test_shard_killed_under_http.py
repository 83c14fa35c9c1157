"""kill -9 of the shard actors under HTTP load, through the whole stack: ``serve``'s
``ray::AccountShard`` processes are killed while clients pay, twice, each time once the
first kill's shards answer again. Ray restarts them; a restarted shard recovers from the
journal. Clients resend what was not answered with the same key. Afterwards the audit
holds: nothing acknowledged lost, no key or payment applied twice, nothing captured
twice, the ledger balanced. (``tests/integration/test_shard_crash_recovery.py`` does the
same below the front door, with 5,000 payments.)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from .harness import ROUNDS, Load, audit, portal, settle

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

BEFORE = 100  # payments acknowledged before the first kill
KILLS = 2 * ROUNDS
BETWEEN_S = 2.0  # after the shards answer again, before the next kill
RECOVERY_S_MAX = 120.0


def _shards(serve_pid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.Process(serve_pid).children(recursive=True):
        try:
            if process.name().startswith("ray::AccountShard") or any(
                part.startswith("ray::AccountShard") for part in process.cmdline()[:1]
            ):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def test_shards_killed_under_http_load_lose_nothing_acknowledged(
    tmp_path: Path, scratch_postgres: str
) -> None:
    with portal(tmp_path, scratch_postgres) as running:
        running.add_card(running.served.sandbox_port)
        load = Load(running).start()
        recoveries: list[float] = []
        killed = 0
        try:
            load.wait_for(BEFORE)
            for _ in range(KILLS):
                shards = _shards(running.served.pid)
                assert shards, "no ray::AccountShard process among serve's"
                killed_at = time.monotonic()
                for shard in shards:
                    os.kill(shard.pid, signal.SIGKILL)
                killed += len(shards)
                deadline = killed_at + RECOVERY_S_MAX
                while (back := load.first_success_after(killed_at + 0.01)) is None:
                    assert time.monotonic() < deadline, "the shards did not come back"
                    time.sleep(0.1)
                recoveries.append(back - killed_at)
                time.sleep(BETWEEN_S)
        finally:
            load.stop()
        assert not load.gave_up, f"{load.gave_up} payments never answered"
        unknown, resolved_s, states = settle(tmp_path, load)
        slowest = max(answered - sent for sent, answered, _, _, _ in load.timeline)
    audit(
        "shard actors kill -9 under HTTP load",
        load,
        max(recoveries),
        f"{killed} shard processes killed in {KILLS} rounds, back after "
        + ", ".join(f"{r:.1f} s" for r in recoveries)
        + f", the slowest answer {slowest:.1f} s; {unknown} left unknown, resolved in "
        f"{resolved_s:.1f} s to {dict(sorted(states.items()))}",
    )
