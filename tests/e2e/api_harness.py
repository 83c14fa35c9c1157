"""The API under test, assembled in-process: real Store (SQLite file or a fresh PostgreSQL
database), account shards driven directly (no Ray), the sandbox processor on a loopback
test server, and an aiohttp test client for the front door. Imported by test_api_*.py."""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from payportal.actors import AccountShardCore, ShardRouter
from payportal.http import create_app
from payportal.persistence import Store
from payportal.persistence.keys import create_api_key_async
from payportal.processors.sandbox import SANDBOX, Faults, SandboxState, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor
from tests import artifacts

SECRET = "whsec_" + base64.b64encode(b"api-test-webhook-secret-32-bytes").decode()
SHARDS = 2
# The sandbox holds a 3063 response this long; the adapter gives up much sooner.
CAPTURE_HOLD_MS = 3_000
PROCESSOR_TIMEOUT_MS = 400

CARDS = {
    "visa": "4242424242424242",
    "mastercard": "5555555555554444",
    "visa_debit": "4000056655665556",
    "do_not_honor": "4000000000000002",
    "expired": "4000000000000069",
    "insufficient_funds": "4000000000009995",
    "processing_error": "4000000000000119",
    "capture_timeout": "4000000000003063",
    "attach_then_decline": "4000000000000341",
    "sca_always": "4000002760003184",
    "sca_unless_set_up": "4000002500003155",
    "sca_then_declined": "4000008260003178",
}


class DirectHandle:
    """Stands in for a Ray actor handle: ``handle.apply.remote(batch)`` awaits the core."""

    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = self
        self.changes_since = _Remote(core.feed.since)

    def remote(self, batch: bytes) -> Any:
        return self.core.apply(batch)


class _Remote:
    """``handle.method.remote(...)`` of a Ray actor, as a direct call."""

    def __init__(self, function: Any) -> None:
        self.remote = function


class Api:
    """The client plus the helpers every test needs; ``merchant`` is a header dict."""

    def __init__(self, client: TestClient[Any, Any], processor: SandboxProcessor,
                 sandbox: SandboxState, merchant_key: str, store: Store) -> None:  # fmt: skip
        self.client = client
        self.processor = processor
        self.sandbox = sandbox
        self.merchant = {"Authorization": f"Bearer {merchant_key}"}
        artifacts.remember_secret(merchant_key)
        self.store = store
        # Added to the front door's clock (not the shards'): ages what the API sees.
        self.clock_offset_ms = 0
        self.router: ShardRouter | None = None

    def clock_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.clock_offset_ms

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None,
        json: Any = None, params: dict[str, Any] | None = None, data: bytes | None = None,
    ) -> tuple[int, Any, bytes]:  # fmt: skip
        response = await self.client.request(
            method, path, headers=headers if headers is not None else self.merchant,
            json=json, params=params, data=data,
        )  # fmt: skip
        raw = await response.read()
        is_json = raw and response.content_type == "application/json"
        body = await response.json() if is_json else None
        return response.status, body, raw

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body, _ = await self.call(method, path, **kwargs)
        assert status == 200, (status, body)
        return body

    async def account(self, currency: str = "USD") -> str:
        body = await self.ok("POST", "/v1/accounts", json={
            "name": "Ada Lovelace", "email": "ada@example.com", "currency": currency,
        })  # fmt: skip
        return str(body["id"])

    async def invoice(self, account_id: str, amount: int, due: dt.date, number: str | None = None
                      ) -> str:  # fmt: skip
        payload: dict[str, Any] = {"amount": amount, "due_date": due.isoformat()}
        if number is not None:
            payload["number"] = number
        body = await self.ok("POST", f"/v1/accounts/{account_id}/invoices", json=payload)
        return str(body["id"])

    async def payment_method(self, account_id: str, card: str = "visa",
                             headers: dict[str, str] | None = None) -> str:  # fmt: skip
        token = await self.processor.tokenize_test_card(CARDS[card])
        body = await self.ok(
            "POST", f"/v1/accounts/{account_id}/payment_methods", headers=headers,
            json={"token": token, "brand": "visa", "last4": CARDS[card][-4:]},
        )  # fmt: skip
        return str(body["id"])

    async def pay(
        self, account_id: str, amount: int, payment_method: str, *, key: str | None = None,
        headers: dict[str, str] | None = None, **extra: Any,
    ) -> tuple[int, Any, bytes]:  # fmt: skip
        headers = dict(headers if headers is not None else self.merchant)
        headers["Idempotency-Key"] = key or uuid.uuid4().hex
        payload = {"account": account_id, "amount": amount, "currency": "USD",
                   "payment_method": payment_method, **extra}  # fmt: skip
        return await self.call("POST", "/v1/payments", headers=headers, json=payload)

    def charges(self) -> list[Any]:
        return list(self.sandbox.charges.values())

    async def payer(self, account_id: str, email: str, password: str = "correct horse") -> dict[
        str, str
    ]:  # fmt: skip
        await self.ok("POST", f"/v1/accounts/{account_id}/payers",
                      json={"email": email, "password": password})  # fmt: skip
        session = await self.ok("POST", "/v1/payer/sessions", headers={},
                                json={"email": email, "password": password})  # fmt: skip
        artifacts.remember_secret(session["token"])
        return {"Authorization": f"Bearer {session['token']}"}


@pytest.fixture
async def api(database_url: str, aiohttp_server: Any, aiohttp_client: Any) -> AsyncIterator[Api]:
    store = await Store.connect(database_url)
    sandbox_app = create_sandbox_app(
        callback_url=None, webhook_secret=SECRET,
        faults=Faults(capture_timeout_delay_ms=CAPTURE_HOLD_MS),
    )  # fmt: skip
    sandbox_server: TestServer = await aiohttp_server(sandbox_app, host="127.0.0.1")
    processor = SandboxProcessor(str(sandbox_server.make_url("")), timeout_ms=PROCESSOR_TIMEOUT_MS)
    router = ShardRouter(
        [DirectHandle(AccountShardCore(i, store)) for i in range(SHARDS)], batch_max_wait_ms=1
    )
    clock: list[Api] = []
    app = create_app(router=router, store=store, processor=processor,
                     clock_ms=lambda: clock[0].clock_ms())  # fmt: skip
    artifacts.keep_documents(app)
    client = await aiohttp_client(app)
    router.follow_balances()
    key = await create_api_key_async(store, "tests")
    try:
        clock.append(Api(client, processor, sandbox_app[SANDBOX], key, store))
        clock[0].router = router
        yield clock[0]
    finally:
        await client.close()
        await router.close()
        await processor.close()
        await store.close()
