"""kill -9 of the card processor mid-charge, under load: serve charges through a sandbox
processor the test started itself (``PAYPORTAL_SANDBOX_URL``), which decides each charge
after a delay so that charges are always in flight; the test kills it, leaves it down,
and starts a new one on the same port.

A charge whose answer never came is ``unknown``: the payment is answered ``processing``
and must never be charged again on a guess. The shards' retry janitor asks the processor
about it (the test moves the shards' clocks past the 1-minute inquiry delay); the new
sandbox never heard of it (a killed sandbox forgets everything, as a processor that never
received the request would), so it is re-sent under the same idempotency key and
decided. Afterwards nothing is ``processing``, and the audit holds: nothing acknowledged
lost, nothing applied or captured twice, the ledger balanced.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .harness import Load, Sandbox, audit, free_port, portal, settle

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

# Each charge waits this long before it is decided: a kill always finds some mid-charge.
CHARGE_LATENCY_MS = 300
BEFORE_KILL = 40  # payments acknowledged before the kill
DOWN_S = 2.0
AFTER_RESTART_S = 3.0


def test_a_processor_killed_mid_charge_charges_nothing_twice(
    tmp_path: Path, scratch_postgres: str
) -> None:
    port = free_port()
    sandbox = Sandbox(tmp_path, callback_port=port,
                      faults=f'{{"latency_ms": {CHARGE_LATENCY_MS}}}')  # fmt: skip
    sandbox.start()
    try:
        with portal(
            tmp_path,
            scratch_postgres,
            port=port,
            env={"PAYPORTAL_SANDBOX_URL": f"http://127.0.0.1:{sandbox.port}"},
        ) as running:
            running.add_card(sandbox.port)
            load = Load(running).start()
            try:
                load.wait_for(BEFORE_KILL)
                killed_at = time.monotonic()
                sandbox.kill()
                time.sleep(DOWN_S)
                sandbox.start()
                # Its tokens died with it: payments from now on carry a card it knows.
                running.add_card(sandbox.port)
                restarted_at = time.monotonic()
                deadline = restarted_at + 60
                while (back := load.first_success_after(restarted_at)) is None:
                    assert time.monotonic() < deadline, "no payment succeeded after the restart"
                    time.sleep(0.1)
                recovery_s = back - killed_at
                time.sleep(AFTER_RESTART_S)
            finally:
                load.stop()
            answered_processing = [p for p, s in load.acknowledged.items() if s == "processing"]
            mid_charge = sum(1 for sent, _, status, _, _ in load.timeline
                             if sent < killed_at and status == "processing")  # fmt: skip
            # The fault must have hit: charges in flight when the processor died.
            assert mid_charge, "no charge was in flight at the kill"
            unknown, resolved_s, ended = settle(tmp_path, load)
        audit(
            "sandbox processor kill -9 mid-charge",
            load,
            recovery_s,
            f"{mid_charge} mid-charge at the kill, {len(answered_processing)} answered "
            f"processing in all, {unknown} still unknown after the load, all resolved by "
            f"inquiry and re-send in {resolved_s:.1f} s of moved clocks, to "
            f"{dict(sorted(ended.items()))}",
        )
    finally:
        sandbox.stop()
