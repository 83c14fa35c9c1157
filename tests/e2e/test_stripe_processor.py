"""Paying through the HTTP API with PAYPORTAL_PROCESSOR=stripe: the front door charges a
Stripe-shaped local server through the SDK, and Stripe's webhooks (signed as Stripe signs
them, checked by the SDK) come back to ``/v1/processors/stripe/callbacks``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from payportal.actors import AccountShardCore, ShardRouter
from payportal.http import create_app
from payportal.http.callbacks import add_callback_routes
from payportal.http.stripe_callbacks import STRIPE_CALLBACK_PATH, add_stripe_callback_routes
from payportal.persistence import Store, tables
from payportal.persistence.keys import create_api_key_async
from payportal.processors.stripe import StripeProcessor
from tests import artifacts
from tests.stripe_fake.server import FakeStripe, create_stripe_app, sign

from .api_harness import DirectHandle

SECRET_KEY = "sk_test_" + "e2eFakeFakeFakeFake01234"  # test-only
WEBHOOK_SECRET = "whsec_" + "newSigningSecretForTheTests0123"  # test-only
OLD_WEBHOOK_SECRET = "whsec_" + "oldSigningSecretBeforeRotation9"  # test-only
artifacts.remember_secret(SECRET_KEY)


class StripeApi:
    def __init__(self, client: TestClient[Any, Any], fake: FakeStripe, key: str,
                 store: Store, router: ShardRouter) -> None:  # fmt: skip
        self.client = client
        self.fake = fake
        self.merchant = {"Authorization": f"Bearer {key}"}
        artifacts.remember_secret(key)
        self.store = store
        self.router = router

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, headers=self.merchant, **kwargs)
        body = await response.json()
        assert response.status == 200, (response.status, body)
        return body

    async def account_with_method(self, method: str) -> tuple[str, str]:
        account = await self.ok("POST", "/v1/accounts", json={
            "name": "Ada Lovelace", "email": "ada@example.com", "currency": "USD"})  # fmt: skip
        due = (dt.date.today() + dt.timedelta(days=30)).isoformat()
        await self.ok("POST", f"/v1/accounts/{account['id']}/invoices",
                      json={"amount": 10_000, "due_date": due})  # fmt: skip
        saved = await self.ok("POST", f"/v1/accounts/{account['id']}/payment_methods",
                              json={"token": f"cus_fakeE2e:{method}", "brand": "visa",
                                    "last4": "4242"})  # fmt: skip
        return account["id"], saved["id"]

    async def pay(self, account_id: str, method_id: str, amount: int) -> Any:
        headers = {**self.merchant, "Idempotency-Key": uuid.uuid4().hex}
        response = await self.client.post("/v1/payments", headers=headers, json={
            "account": account_id, "amount": amount, "currency": "USD",
            "payment_method": method_id})  # fmt: skip
        return await response.json()

    async def webhook(self, payload: str, *, secret: str = WEBHOOK_SECRET,
                      timestamp: int | None = None) -> tuple[int, Any]:  # fmt: skip
        response = await self.client.post(STRIPE_CALLBACK_PATH, data=payload.encode(), headers={
            "Stripe-Signature": sign(payload, secret, timestamp),
            "Content-Type": "application/json"})  # fmt: skip
        return response.status, await response.json()


PUBLIC_URL = "https://pay.example.com"


@pytest.fixture
async def stripe_api(database_url: str, aiohttp_server: Any,
                     aiohttp_client: Any) -> AsyncIterator[StripeApi]:  # fmt: skip
    fake = FakeStripe()
    server = await aiohttp_server(create_stripe_app(fake), host="127.0.0.1")
    processor = StripeProcessor(SECRET_KEY, api_base=str(server.make_url("")), timeout_ms=2_000,
                                public_url=PUBLIC_URL)  # fmt: skip
    store = await Store.connect(database_url)
    router = ShardRouter([DirectHandle(AccountShardCore(i, store)) for i in range(2)],
                         batch_max_wait_ms=1)  # fmt: skip
    app = create_app(router=router, store=store, processor=processor)
    add_stripe_callback_routes(app, store=store, router=router, client=processor.client,
                               secrets=[WEBHOOK_SECRET, OLD_WEBHOOK_SECRET],
                               lookup_attempts=2, lookup_wait_ms=10)  # fmt: skip
    # The sandbox's route as serve mounts it: Stripe's, added first, still answers.
    add_callback_routes(app, store=store, router=router, secrets={"sandbox": [
        "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]})  # fmt: skip
    client = await aiohttp_client(app)
    router.follow_balances()
    key = await create_api_key_async(store, "tests")
    try:
        yield StripeApi(client, fake, key, store, router)
    finally:
        await client.close()
        await router.close()
        await processor.close()
        await store.close()


async def _journal_outcomes(api: StripeApi, payment_id: str) -> list[str]:
    await api.router.drain()
    async with api.store.engine.connect() as connection:
        rows = await connection.execute(
            sa.select(tables.journal.c.event_type).where(tables.journal.c.payment_id == payment_id)
        )
        return [row.event_type for row in rows]


async def test_paid_once_though_the_webhook_repeats_it(stripe_api: StripeApi) -> None:
    api = stripe_api
    account_id, method_id = await api.account_with_method("pm_card_visa")
    payment = await api.pay(account_id, method_id, 2_500)
    assert payment["status"] == "succeeded", payment
    (sent,) = api.fake.posts("/v1/payment_intents")
    attempt_id = sent.headers["Idempotency-Key"]
    assert sent.form["metadata[payment]"] == payment["id"]
    assert sent.form["metadata[attempt]"] == attempt_id
    assert sent.form["customer"] == "cus_fakeE2e"
    intent = next(iter(api.fake.intents.values()))
    event = api.fake.event("payment_intent.succeeded", intent)
    assert await api.webhook(event) == (200, {"received": True, "duplicate": True})
    # The same event again (Stripe retries), and under the old secret during a rotation.
    assert (await api.webhook(event))[1]["duplicate"] is True
    assert (await api.webhook(event, secret=OLD_WEBHOOK_SECRET))[0] == 200
    # A second event with the same news: the engine answers it as a duplicate too.
    other = api.fake.event("payment_intent.succeeded", intent)
    assert (await api.webhook(other))[0] == 200
    # Out of order: a failure reported after the success changes nothing.
    failed = dict(intent, status="requires_payment_method",
                  last_payment_error={"code": "card_declined", "decline_code": "do_not_honor"})
    assert (await api.webhook(api.fake.event("payment_intent.payment_failed", failed)))[0] == 200
    body = await api.ok("GET", f"/v1/payments/{payment['id']}")
    assert body["status"] == "succeeded"
    assert body["amount"] == 2_500
    kinds = await _journal_outcomes(api, payment["id"])
    assert kinds.count("attempt_succeeded") == 1, kinds


async def test_a_3d_secure_step_is_requires_action_with_stripes_page_then_a_webhook_decides(
    stripe_api: StripeApi,
) -> None:
    api = stripe_api
    account_id, method_id = await api.account_with_method("pm_card_authenticationRequired")
    payment = await api.pay(account_id, method_id, 1_000)
    # The payer's step (docs/processors.md "3-D Secure"): Stripe's page, and back to the
    # payment's own page in the portal.
    assert payment["status"] == "requires_action", payment
    redirect = payment["next_action"]["redirect_to_url"]
    assert redirect["url"].startswith("https://hooks.stripe.com/3d_secure_2/")
    assert redirect["return_url"] == f"{PUBLIC_URL}/payments/{payment['id']}"
    sent = [r for r in api.fake.requests if r.path == "/v1/payment_intents"][-1]
    assert sent.form["return_url"] == redirect["return_url"]
    assert "off_session" not in sent.form
    intent = next(iter(api.fake.intents.values()))
    status, _ = await api.webhook(api.fake.event("payment_intent.requires_action", intent))
    assert status == 200
    # The payer completes the challenge; Stripe captures and says so.
    intent.update(status="succeeded", latest_charge="ch_fakeAfterChallenge", next_action=None)
    assert (await api.webhook(api.fake.event("payment_intent.succeeded", intent)))[0] == 200
    await api.router.drain()
    body = await api.ok("GET", f"/v1/payments/{payment['id']}")
    assert body["status"] == "succeeded"
    assert body["next_action"] is None
    kinds = await _journal_outcomes(api, payment["id"])
    assert kinds.count("attempt_succeeded") == 1, kinds


async def test_a_decline_takes_its_retry_class(stripe_api: StripeApi) -> None:
    api = stripe_api
    account_id, method_id = await api.account_with_method(
        "pm_card_chargeDeclinedInsufficientFunds"
    )
    payment = await api.pay(account_id, method_id, 3_000)
    attempt = payment["attempts"][-1]
    # Soft (docs/processors.md): retried on the policy's backoff.
    assert attempt["decline_code"] == "insufficient_funds"
    assert payment["status"] == "retry_scheduled"
    assert payment["next_retry_at"] is not None
    # generic_decline is hard: never retried.
    hard_account, hard_method = await api.account_with_method("pm_card_chargeDeclined")
    hard = await api.pay(hard_account, hard_method, 3_000)
    assert hard["error"]["type"] == "card_error", hard
    assert hard["error"]["decline_code"] == "generic_decline", hard


async def test_a_refund_and_a_dispute(stripe_api: StripeApi) -> None:
    api = stripe_api
    account_id, method_id = await api.account_with_method("pm_card_visa")
    payment = await api.pay(account_id, method_id, 4_000)
    headers = {**api.merchant, "Idempotency-Key": uuid.uuid4().hex}
    response = await api.client.post(f"/v1/payments/{payment['id']}/refunds",
                                     headers=headers, json={"amount": 1_000})  # fmt: skip
    assert response.status == 200, await response.text()
    (sent,) = api.fake.posts("/v1/refunds")
    intent = next(iter(api.fake.intents.values()))
    assert sent.form == {"amount": "1000", "charge": intent["latest_charge"]}
    charge = api.fake.charge_of(intent["id"])
    assert (await api.webhook(api.fake.event("charge.refunded", charge)))[0] == 200
    body = await api.ok("GET", f"/v1/payments/{payment['id']}")
    assert body["amount_refunded"] == 1_000
    # A dispute finds its payment through the charge the read models hold.
    for _ in range(50):
        await api.router.drain()
        await asyncio.gather(*(api.store.project_pending(s) for s in range(2)))
        dispute = api.fake.dispute_of(intent["id"])
        status, _ = await api.webhook(api.fake.event("charge.dispute.created", dispute))
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    body = await api.ok("GET", f"/v1/payments/{payment['id']}")
    assert body["status"] == "disputed"


async def test_webhooks_that_are_not_stripes_are_refused(stripe_api: StripeApi) -> None:
    api = stripe_api
    payload = api.fake.event("payment_intent.succeeded", {"id": "pi_x", "metadata": {}})
    wrong = "whsec_" + "notTheSecretAtAllNotTheSecret00"
    assert (await api.webhook(payload, secret=wrong))[1]["error"]["code"] == "signature_invalid"
    old = int(time.time()) - 600
    status, body = await api.webhook(payload, timestamp=old)
    assert (status, body["error"]["code"]) == (400, "timestamp_out_of_tolerance")
    # A body changed after signing.
    header = sign(payload, WEBHOOK_SECRET)
    tampered = json.dumps({**json.loads(payload), "type": "charge.dispute.created"})
    response = await api.client.post(STRIPE_CALLBACK_PATH, data=tampered.encode(),
                                     headers={"Stripe-Signature": header})  # fmt: skip
    assert response.status == 400
    response = await api.client.post(STRIPE_CALLBACK_PATH, data=payload.encode())
    assert (await response.json())["error"]["code"] == "parameter_missing"
    # An intent made outside the portal: verified, understood, ignored.
    assert (await api.webhook(payload))[0] == 200
