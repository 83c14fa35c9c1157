"""Through the public payments API and the sandbox processor, a succeeded payment yields
exactly one confirmation in the mail catcher — with what went to which invoice and the
balance the API reports afterwards — and a hard decline one notice that asks for another
payment method; checked end to end with the real outbox sender and an aiosmtpd catcher,
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest

from payportal.mail.catcher import CatchedMessage, MailCatcher, start_catcher
from payportal.mail.sender import OutboxSender, SmtpTarget, message_id_for

from .api_harness import CARDS, SHARDS, Api

pytestmark = pytest.mark.asyncio

BASE_URL = "https://portal.example.test"
# Rounds of "project, then send" before a test gives up waiting for an email.
ROUNDS_MAX = 50


@pytest.fixture
async def catcher() -> AsyncIterator[MailCatcher]:
    catcher = await start_catcher(smtp_port=0, ui_port=0)
    try:
        yield catcher
    finally:
        await catcher.close()


async def _deliver(
    api: Api, catcher: MailCatcher, wanted: Callable[[CatchedMessage], bool]
) -> list[CatchedMessage]:
    """Project every shard and run the sender until a ``wanted`` message arrives (or the
    rounds run out), then once more; returns the wanted messages."""
    sender = OutboxSender(api.store.engine, smtp=SmtpTarget(hostname="127.0.0.1",
                          port=catcher.smtp_port), base_url=BASE_URL)  # fmt: skip
    try:
        for _ in range(ROUNDS_MAX):
            # Once every shard is projected, the outbox holds every email of what committed.
            for shard_id in range(SHARDS):
                await api.store.project_pending(shard_id)
            await sender.run_once()
            if any(wanted(m) for m in catcher.inbox.list()):
                break
            await asyncio.sleep(0.05)
        await sender.run_once()
    finally:
        await sender.close()  # it keeps its SMTP connection between rounds
    return [m for m in catcher.inbox.list() if wanted(m)]


async def test_a_succeeded_payment_yields_one_confirmation_with_allocation_and_balance(
    api: Api, catcher: MailCatcher
) -> None:
    account = await api.account()
    first = await api.invoice(account, 4_000, dt.date(2026, 1, 10), number="INV-001")
    second = await api.invoice(account, 6_000, dt.date(2026, 2, 10), number="INV-002")
    method = await api.payment_method(account, "visa")

    code, payment, _ = await api.pay(account, 5_000, method)

    assert code == 200, payment
    assert payment["status"] == "succeeded"
    message_id = message_id_for(f"payment_succeeded:{payment['id']}")
    messages = await _deliver(api, catcher, lambda m: m.message_id == message_id)
    assert len(messages) == 1
    [message] = messages
    after = await api.ok("GET", f"/v1/accounts/{account}")
    assert after["balance"]["outstanding"] == 5_000
    assert message.to == "ada@example.com"
    assert message.subject == "Payment received: 50.00 USD"
    for body in (message.text, message.html):
        assert "Invoice INV-001" in body
        assert "40.00 USD" in body
        assert "Invoice INV-002" in body
        assert "10.00 USD" in body
        assert "Your balance now" in body
        assert f"{BASE_URL}/payments/{payment['id']}" in body
        assert f"{BASE_URL}/statements" in body
        assert "ending in 4242" in body
    assert "Your balance now: 50.00 USD outstanding." in message.text
    assert "Your balance now: <strong>50.00 USD</strong> outstanding" in message.html
    assert CARDS["visa"] not in message.raw
    allocated = {a["invoice"]: a["amount"] for a in payment["allocations"]}
    assert allocated == {first: 4_000, second: 1_000}
    # Only this one email for the account, however often the sender runs.
    assert len(catcher.inbox.list()) == 1
    assert catcher.inbox.deliveries == 1


async def test_a_hard_decline_yields_one_notice_pointing_to_the_payment_methods(
    api: Api, catcher: MailCatcher
) -> None:
    account = await api.account()
    await api.invoice(account, 3_000, dt.date(2026, 1, 10))
    method = await api.payment_method(account, "do_not_honor")

    code, body, _ = await api.pay(account, 3_000, method)

    assert code == 402, body
    payment = body["error"]["payment"]
    assert payment["status"] == "requires_payment_method"
    messages = await _deliver(api, catcher, lambda m: "declined" in m.subject)
    assert len(messages) == 1
    [message] = messages
    assert message.subject == "Payment of 30.00 USD declined: please use another payment method"
    for text in (message.text, message.html):
        assert "Your bank declined the card and did not give a reason." in text
        assert f"{BASE_URL}/methods" in text
        assert "30.00 USD" in text
    assert CARDS["do_not_honor"] not in message.raw
    assert catcher.inbox.deliveries == 1


async def test_a_soft_decline_that_will_be_retried_sends_no_email_yet(
    api: Api, catcher: MailCatcher
) -> None:
    account = await api.account()
    await api.invoice(account, 3_000, dt.date(2026, 1, 10))
    method = await api.payment_method(account, "insufficient_funds")

    code, payment, _ = await api.pay(account, 3_000, method)

    assert code == 200, payment
    assert payment["status"] == "retry_scheduled"
    sender = OutboxSender(api.store.engine, smtp=SmtpTarget(hostname="127.0.0.1",
                          port=catcher.smtp_port), base_url=BASE_URL)  # fmt: skip
    for shard_id in range(SHARDS):
        await api.store.project_pending(shard_id)
    claimed = await sender.run_once()

    assert claimed == 0
    assert catcher.inbox.deliveries == 0
