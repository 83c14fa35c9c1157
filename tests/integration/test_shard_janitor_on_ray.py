"""The retry schedule runs from the shards: on local Ray, a soft-declined payment is retried
by its own shard's janitor when the shard's clock reaches the retry, and after the shard is
killed the restarted shard resumes the schedule by itself."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from payportal.actors import ShardRouter
from payportal.actors.cluster import ShardJanitor, ensure_shards
from payportal.engine import (
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    PaymentStatus,
    ReadAccount,
    RecordOutcome,
    Result,
)
from payportal.persistence import Store, directory, migrate
from payportal.processors.sandbox import SANDBOX, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor

pytestmark = [pytest.mark.ray]

SECRET = "whsec_" + base64.b64encode(b"shard-janitor-test-secret-32byte").decode()
SOFT_DECLINE = "4000000000009995"
SUCCEEDS = "4242424242424242"
ACCOUNT = "acct_janitor"


async def _status(router: ShardRouter, payment_id: str) -> PaymentStatus:
    reply = await router.submit(ReadAccount(account_id=ACCOUNT, payment_id=payment_id))
    assert reply.payment is not None
    return reply.payment.status


async def _until(router: ShardRouter, payment_id: str, status: PaymentStatus) -> None:
    async with asyncio.timeout(30):
        while await _status(router, payment_id) is not status:  # noqa: ASYNC110 - polled: the shard offers no event
            await asyncio.sleep(0.1)


async def test_a_soft_decline_is_retried_by_its_shard_even_after_the_shard_restarts(
    local_ray: None, tmp_path: Path, aiohttp_server: Any
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/payportal.db"
    await asyncio.to_thread(migrate, url)
    sandbox_app = create_sandbox_app(callback_url=None, webhook_secret=SECRET)
    sandbox = await aiohttp_server(sandbox_app, host="127.0.0.1")
    sandbox_url = str(sandbox.make_url("")).rstrip("/")
    deployment = uuid.uuid4().hex
    handles = ensure_shards(
        1, url, deployment=deployment,
        janitor=ShardJanitor(processor_url=sandbox_url, shards=1, deployment=deployment,
                             interval_ms=100),
    )  # fmt: skip
    router = ShardRouter(handles)
    processor = SandboxProcessor(sandbox_url)
    store = await Store.connect(url)
    try:
        assert (
            await router.submit(OpenAccount(account_id=ACCOUNT, currency="USD"))
        ).outcome.result is Result.ok
        await router.submit(
            IssueInvoice(account_id=ACCOUNT, invoice_id="inv_1", number="1", amount_minor=5_000,
                         currency="USD", due_date=dt.date(2026, 1, 31))
        )  # fmt: skip
        token = await processor.tokenize_test_card(SOFT_DECLINE)
        await directory.insert_payment_method(
            store.engine,
            {"id": "pm_1", "account_id": ACCOUNT, "token": token, "type": "card", "brand": "visa",
             "last4": SOFT_DECLINE[-4:], "exp_month": 12, "exp_year": 2035, "wallet": None},
        )  # fmt: skip
        await router.submit(
            CreatePayment(account_id=ACCOUNT, payment_id="pay_1", attempt_id="att_1",
                          idempotency_key="k1", amount_minor=5_000, currency="USD",
                          payment_method=PaymentMethodRef(id="pm_1", brand="visa"))
        )  # fmt: skip
        result = await processor.charge(token, 5_000, "USD", idempotency_key="att_1")
        declined = await router.submit(
            RecordOutcome(account_id=ACCOUNT, payment_id="pay_1", attempt_id="att_1",
                          outcome=OutcomeKind(result.outcome), decline_code=result.decline_code)
        )  # fmt: skip
        assert declined.payment is not None
        assert declined.payment.status is PaymentStatus.retry_scheduled
        assert declined.payment.next_retry_at_ms is not None

        # The shard dies while the retry waits; the schedule is durable, not in its memory.
        os.kill(await handles[0].pid.remote(), signal.SIGKILL)
        now_ms = await handles[0].advance_clock.remote(0)
        # The payer's bank now approves the card (the sandbox keys behaviour by number).
        sandbox_app[SANDBOX].cards[token].number = SUCCEEDS
        await handles[0].advance_clock.remote(declined.payment.next_retry_at_ms - now_ms + 1)
        await _until(router, "pay_1", PaymentStatus.succeeded)
    finally:
        await processor.close()
        await store.close()
    charges = list(sandbox_app[SANDBOX].charges.values())
    assert len([c for c in charges if c.status == "succeeded"]) == 1
