"""The card processor misbehaving under load, through a real serve: a burst of 5xx
answers, then a stretch of timeouts after capture (each charge captured and its callback
sent, its HTTP answer held past the portal's timeout), while every callback is sent three
times, held and shuffled, and delayed.

A 5xx is the processor failing before any decision: the payment waits for a quick
re-send under the same processor key. A timeout after capture is an unknown outcome:
answered ``processing``, resolved by the callback or the janitor's inquiry, and never
charged again. The test settles both (moving the shards' clocks past the re-send and
inquiry delays), lets the late callbacks arrive, and then also holds the portal to the
processor's own books: every charge the sandbox captured for a payment is journaled
once, and nothing is journaled that the sandbox did not capture. The audit holds as
after every fault.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from .harness import Load, audit, journal_captures, ok, portal, settle

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

BEFORE = 100  # payments acknowledged before the faults start
BURST_S = 2.0
# Longer than the processor client's 10 s timeout: the portal gives up on the answer.
HELD_MS = 12_000
TIMEOUTS_S = 2.0
AFTER_S = 2.0
CALLBACK_DELAY_MS = 3_000
# Long enough for the held answers, then every delayed callback, to have arrived.
CALLBACKS_DRAIN_S = 5.0
CALLBACKS = {"duplicate_callbacks": 3, "reorder_callbacks": 5, "reorder_hold_ms": 500,
             "callback_delay_ms": CALLBACK_DELAY_MS, "seed": 11}  # fmt: skip


def test_processor_5xx_timeouts_after_capture_and_bad_callbacks_charge_once(
    tmp_path: Path, scratch_postgres: str
) -> None:
    with portal(tmp_path, scratch_postgres) as running:
        sandbox = running.served.sandbox_port
        running.add_card(sandbox)
        ok(sandbox, "POST", "/v1/_faults", CALLBACKS)
        load = Load(running).start()
        try:
            load.wait_for(BEFORE)
            burst_at = time.monotonic()
            ok(sandbox, "POST", "/v1/_faults", {"error_rate_5xx": 0.5})
            time.sleep(BURST_S)
            ok(sandbox, "POST", "/v1/_faults", {"error_rate_5xx": 0.0})
            held_at = time.monotonic()
            ok(sandbox, "POST", "/v1/_faults",
               {"timeout_after_capture": True, "capture_timeout_delay_ms": HELD_MS})  # fmt: skip
            time.sleep(TIMEOUTS_S)
            ok(sandbox, "POST", "/v1/_faults", {"timeout_after_capture": False})
            recovered_at = time.monotonic()
            deadline = recovered_at + 60
            while (back := load.first_success_after(recovered_at)) is None:
                assert time.monotonic() < deadline, "no payment succeeded after the faults"
                time.sleep(0.1)
            time.sleep(AFTER_S)
        finally:
            load.stop()
        answered = Counter(s for sent, _, s, _, _ in load.timeline if burst_at <= sent)
        # Charged while every answer was held: the portal learnt each outcome from its
        # callback (which cuts the wait short) or gave up on the answer after 10 s.
        held = [(s, answered_at - sent) for sent, answered_at, s, _, _ in load.timeline
                if held_at <= sent < recovered_at]  # fmt: skip
        held_statuses = Counter(s for s, _ in held)
        held_wait_s = max((w for _, w in held), default=0.0)
        assert answered["retry_scheduled"], "no payment met the 5xx burst"
        assert held, "no payment met a timeout after capture"
        time.sleep(CALLBACKS_DRAIN_S)
        unsettled, settled_s, ended = settle(tmp_path, load)
        charges = ok(sandbox, "GET", "/v1/charges")["data"]
    captured = Counter(c["metadata"].get("payment") for c in charges if c["status"] == "succeeded")
    in_journal = journal_captures(scratch_postgres)
    audit(
        "processor 5xx burst, timeouts after capture, callbacks x3 shuffled and delayed",
        load,
        # From the end of the faults to the first payment sent after it succeeding: the
        # clients were still waiting out the held answers.
        back - recovered_at,
        f"{answered['retry_scheduled']} answered retry_scheduled by the 5xx burst; "
        f"{len(held)} charged while answers were held, answered "
        f"{dict(sorted(held_statuses.items()))} after at most {held_wait_s:.1f} s; "
        f"{unsettled} unsettled after the "
        f"load, settled in {settled_s:.1f} s to {dict(sorted(ended.items()))}; the "
        f"processor captured {sum(captured.values())} charges, the journal "
        f"{sum(in_journal.values())}",
    )
    # The processor's books and the journal agree: no capture lost, none invented.
    assert not load.gave_up, f"{load.gave_up} payments never answered"
    assert captured == in_journal, (
        f"processor only: {sorted(set(captured) - set(in_journal))[:5]}, journal only: "
        f"{sorted(set(in_journal) - set(captured))[:5]}, processor twice: "
        f"{[p for p, n in captured.items() if n > 1][:5]}"
    )
