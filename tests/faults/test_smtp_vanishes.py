"""The SMTP server vanishes in the middle of messages, under load: serve sends payment
confirmations to an SMTP server the test runs (``PAYPORTAL_SMTP_URL``), which cuts the
connection of the first messages after their data arrived and before its reply, keeping
half of them (the message got through, the sender cannot know) and dropping the other
half. The sender must try each of them again (the outbox's first retry comes 24-36 s
later), under the same Message-ID: a receiver that drops a Message-ID it already has
then holds every confirmation exactly once, and nothing else arrives twice.

It waits out the sender's real retry delay, so ``make test`` leaves it to ``make soak``
(``PAYPORTAL_SOAK=1``).
"""

from __future__ import annotations

import email
import email.policy
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from payportal.mail.sender import message_id_for

from .harness import Load, audit, free_port, portal

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get("PAYPORTAL_SOAK"),
                       reason="waits out the mail sender's 30 s retry; make soak runs it"),
]  # fmt: skip

VANISH = 10  # messages whose connection is cut
LOAD_S = 4.0
DELIVERED_S_MAX = 120.0


class VanishingServer:
    """Counts every delivery per Message-ID; while ``cutting`` is set, cuts the
    connection of up to ``VANISH`` messages before answering, keeping every other one of
    those. A cut fails the rest of the sender's batch too; cutting only for a while lets
    each batch's first retry through instead of lengthening its backoff."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self.vanished: dict[str, bool] = {}  # Message-ID -> whether it was kept
        self.cutting = threading.Event()
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        message_id = str(parsed["Message-ID"])
        with self._lock:
            if (self.cutting.is_set() and len(self.vanished) < VANISH
                    and message_id not in self.vanished):  # fmt: skip
                kept = len(self.vanished) % 2 == 0
                self.vanished[message_id] = kept
                if kept:
                    self.deliveries[message_id] += 1
                server.transport.close()
                return "421 gone"  # never reaches the sender: the connection is closed
            self.deliveries[message_id] += 1
        return "250 OK"


def test_confirmations_reach_a_deduping_receiver_once_when_smtp_vanishes(
    tmp_path: Path, scratch_postgres: str
) -> None:
    receiver = VanishingServer()
    smtp = Controller(receiver, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        env = {"PAYPORTAL_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}"}
        with portal(tmp_path, scratch_postgres, env=env) as running:
            running.add_card(running.served.sandbox_port)
            receiver.cutting.set()
            load = Load(running).start()
            try:
                time.sleep(LOAD_S)
            finally:
                receiver.cutting.clear()
                load.stop()
            expected = {message_id_for(f"payment_succeeded:{p}")
                        for p, s in load.acknowledged.items() if s == "succeeded"}  # fmt: skip
            started = time.monotonic()
            while missing := expected - set(receiver.deliveries):
                assert time.monotonic() - started < DELIVERED_S_MAX, (
                    f"{len(missing)} confirmations never arrived")  # fmt: skip
                time.sleep(0.5)
            delivered_s = time.monotonic() - started
        assert receiver.vanished, "the server never vanished"
        twice = {m for m, n in receiver.deliveries.items() if n > 1}
        kept = {m for m, k in receiver.vanished.items() if k}
        # Only a message the receiver kept before vanishing may arrive again.
        assert twice <= kept, f"sent twice without a vanished connection: {sorted(twice - kept)}"
        audit(
            "SMTP server vanishing mid-message",
            load,
            None,
            f"{len(expected)} confirmations, {len(receiver.vanished)} connections cut "
            f"({len(kept)} after "
            f"the receiver kept the message), all delivered {delivered_s:.1f} s after the "
            f"load; {len(twice)} arrived twice, all of them kept before a cut and dropped "
            f"by Message-ID; {len(set(receiver.deliveries))} distinct messages in the inbox",
        )
    finally:
        smtp.stop()
