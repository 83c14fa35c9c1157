"""3-D Secure end to end over HTTP: each of the sandbox's SCA test cards paid through the
API, its challenge completed or failed by calling the sandbox's challenge endpoint as the
payer's browser would, and the signed callback that follows moving the payment on.
In-process shards on a real Store, the sandbox on a loopback server sending callbacks to
the front door."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from payportal.actors import AccountShardCore, ShardRouter
from payportal.http import create_app
from payportal.http.callbacks import add_callback_routes
from payportal.persistence import Store
from payportal.persistence.keys import create_api_key_async
from payportal.processors.sandbox import SANDBOX, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor

from .api_harness import SECRET, Api, DirectHandle

pytestmark = pytest.mark.asyncio

ALWAYS = "4000002760003184"
UNLESS_SET_UP = "4000002500003155"
THEN_DECLINED = "4000008260003178"
CALLBACK = "/v1/processors/sandbox/callbacks"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def sca(database_url: str, aiohttp_server: Any, aiohttp_client: Any) -> AsyncIterator[Api]:
    store = await Store.connect(database_url)
    # The processor's address is fixed first: the front door needs it, and the sandbox
    # needs the front door's address for its callbacks.
    port = _free_port()
    processor = SandboxProcessor(f"http://127.0.0.1:{port}", timeout_ms=2_000)
    router = ShardRouter(
        [DirectHandle(AccountShardCore(i, store)) for i in range(2)], batch_max_wait_ms=1
    )
    app = create_app(router=router, store=store, processor=processor)
    add_callback_routes(app, store=store, router=router, secrets={"sandbox": [SECRET]})
    client = await aiohttp_client(app)
    sandbox_app = create_sandbox_app(
        callback_url=str(client.make_url(CALLBACK)), webhook_secret=SECRET,
        callback_retry_delays_ms=(50, 100, 200),
    )  # fmt: skip
    server: TestServer = await aiohttp_server(sandbox_app, host="127.0.0.1", port=port)
    assert server.port == port
    router.follow_balances()
    key = await create_api_key_async(store, "tests")
    api = Api(client, processor, sandbox_app[SANDBOX], key, store)
    api.router = router
    try:
        yield api
    finally:
        await client.close()
        await router.close()
        await processor.close()
        await store.close()


async def _pay_with(api: Api, number: str, amount: int = 2_500) -> dict[str, Any]:
    account = await api.account()
    token = await api.processor.tokenize_test_card(number)
    method = await api.ok("POST", f"/v1/accounts/{account}/payment_methods",
                          json={"token": token})  # fmt: skip
    code, body, _ = await api.pay(account, amount, method["id"])
    assert code == 200, body
    return dict(body)


async def _answer_challenge(url: str, result: str, *, open_: bool = True) -> dict[str, Any]:
    """What the payer's browser does on the issuer's page (JSON, as a test may)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as page:
            assert page.status == 200
            html = await page.text()
            assert ("Complete authentication" in html) is open_
            assert "frame-ancestors" in page.headers["Content-Security-Policy"]
        async with session.post(url, json={"result": result}) as answer:
            assert answer.status == 200, await answer.text()
            return dict(await answer.json())


async def _status_becomes(api: Api, payment_id: str, status: str) -> dict[str, Any]:
    for _ in range(100):
        payment = await api.ok("GET", f"/v1/payments/{payment_id}")
        if payment["status"] == status:
            return dict(payment)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{payment_id} never became {status}: {payment}")


def _charges_for(api: Api, attempt_id: str) -> int:
    return sum(c.idempotency_key == attempt_id for c in api.sandbox.charges.values())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_challenge_completed_captures_once(sca: Api) -> None:
    payment = await _pay_with(sca, ALWAYS)
    assert payment["status"] == "requires_action"
    action = payment["next_action"]
    assert action["type"] == "redirect_to_url"
    url = action["redirect_to_url"]["url"]
    assert url.startswith(str(sca.processor._base_url) + "/v1/challenges/chl_")
    # A mobile client reading the payment gets the same thing to open.
    fetched = await sca.ok("GET", f"/v1/payments/{payment['id']}")
    assert fetched["next_action"] == action

    charge = await _answer_challenge(url, "complete")
    assert charge["status"] == "succeeded"
    done = await _status_becomes(sca, payment["id"], "succeeded")
    assert done["next_action"] is None
    assert len(done["attempts"]) == 1
    assert _charges_for(sca, done["attempts"][0]["id"]) == 1
    # Answering again changes nothing; the other answer is refused in the error shape.
    assert (await _answer_challenge(url, "complete", open_=False))["status"] == "succeeded"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"result": "fail"}) as refused,
    ):
        assert refused.status == 400
        error = (await refused.json())["error"]
        assert error["code"] == "challenge_already_answered"
        assert error["param"] == "result"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_challenge_failed_asks_for_a_payment_method(sca: Api) -> None:
    payment = await _pay_with(sca, UNLESS_SET_UP)
    assert payment["status"] == "requires_action"
    await _answer_challenge(payment["next_action"]["redirect_to_url"]["url"], "fail")
    failed = await _status_becomes(sca, payment["id"], "requires_payment_method")
    assert failed["attempts"][-1]["decline_code"] == "payment_intent_authentication_failure"
    assert failed["next_action"] is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_authenticated_then_declined_schedules_a_retry(sca: Api) -> None:
    payment = await _pay_with(sca, THEN_DECLINED)
    assert payment["status"] == "requires_action"
    await _answer_challenge(payment["next_action"]["redirect_to_url"]["url"], "complete")
    declined = await _status_becomes(sca, payment["id"], "retry_scheduled")
    assert declined["attempts"][-1]["decline_code"] == "insufficient_funds"
    assert declined["next_retry_at"] is not None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_same_request_again_is_answered_with_the_open_challenge(sca: Api) -> None:
    account = await sca.account()
    token = await sca.processor.tokenize_test_card(ALWAYS)
    method = await sca.ok("POST", f"/v1/accounts/{account}/payment_methods",
                          json={"token": token})  # fmt: skip
    key = uuid.uuid4().hex
    first = await sca.pay(account, 900, method["id"], key=key)
    again = await sca.pay(account, 900, method["id"], key=key)
    assert first[0] == again[0] == 200
    assert first[2] == again[2]
    assert _charges_for(sca, first[1]["attempts"][0]["id"]) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_confirm_is_refused_while_a_challenge_is_open(sca: Api) -> None:
    payment = await _pay_with(sca, ALWAYS)
    code, body, _ = await sca.call("POST", f"/v1/payments/{payment['id']}/confirm")
    assert code == 400, body
    assert body["error"]["type"] == "invalid_request_error"


async def _waiting_notices(api: Api) -> list[Any]:
    """The decline notices the journal left in the outbox that ask the payer to come back."""
    import sqlalchemy as sa

    from payportal.mail.payments import decode_notice
    from payportal.persistence import tables

    for shard_id in range(2):
        await api.store.project_pending(shard_id)
    async with api.store.engine.connect() as connection:
        rows = (await connection.execute(sa.select(tables.outbox.c.payload).where(
            tables.outbox.c.kind == "payment_declined"))).all()  # fmt: skip
    notices = [decode_notice(r.payload) for r in rows]
    return [n for n in notices if n.status == "requires_action"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_autopay_that_needs_authentication_asks_the_payer_and_is_not_retried_blindly(
    sca: Api,
) -> None:
    from payportal.actors.janitor import RetryJanitor
    from payportal.billing import BillingRunner
    from payportal.http.typedefs import GATEWAY, ROUTER

    account = await sca.account()
    method = await sca.payment_method(account, card="sca_unless_set_up")
    plan = await sca.ok("POST", "/v1/plans", json={
        "name": "Pro", "amount": 3_000, "currency": "USD", "interval": "month"})  # fmt: skip
    # Autopay charges without the payer: the billing run creates a merchant-initiated
    # payment, so its attempt goes off session and the card's issuer declines it.
    await sca.ok("POST", f"/v1/accounts/{account}/subscriptions",
                 json={"plan": plan["id"], "payment_method": method, "autopay": True})
    invoices = await sca.ok("GET", f"/v1/accounts/{account}/billing_invoices")
    [invoice] = invoices["data"]
    payment = await sca.ok("GET", f"/v1/payments/{invoice['payment']}")
    assert payment["status"] == "requires_action"
    assert payment["next_action"] is None
    [attempt] = payment["attempts"]
    assert attempt["decline_code"] == "authentication_required"
    assert payment["next_retry_at"] is None
    [charge] = [c for c in sca.sandbox.charges.values() if c.idempotency_key == attempt["id"]]
    assert charge.status == "failed"
    # The payer is asked, once, by email.
    [notice] = await _waiting_notices(sca)
    assert notice.payment_id == payment["id"]

    # Nothing charges it again without them: not the billing run, not the retry janitor,
    # however long it waits.
    app = sca.client.server.app
    report = await BillingRunner(app[ROUTER], sca.store.engine, app[GATEWAY]).run_once()
    assert report.charges_started == 0
    janitor = RetryJanitor(app[ROUTER], sca.store, sca.processor,
                           clock_ms=lambda: 10**15)  # fmt: skip
    await janitor.run_once()
    assert len(sca.sandbox.charges) == 1
    assert (await sca.ok("GET", f"/v1/payments/{payment['id']}"))["status"] == "requires_action"

    # The payer confirms: one on-session attempt with its challenge, completed once.
    code, confirmed, _ = await sca.call("POST", f"/v1/payments/{payment['id']}/confirm",
                                        headers=sca.merchant)  # fmt: skip
    assert code == 200, confirmed
    assert confirmed["status"] == "requires_action"
    url = confirmed["next_action"]["redirect_to_url"]["url"]
    again, refused, _ = await sca.call("POST", f"/v1/payments/{payment['id']}/confirm",
                                       headers=sca.merchant)  # fmt: skip
    assert again == 400, refused
    assert refused["error"]["type"] == "invalid_request_error"
    await _answer_challenge(url, "complete")
    done = await _status_becomes(sca, payment["id"], "succeeded")
    assert len(done["attempts"]) == 2
    assert sum(c.status == "succeeded" for c in sca.sandbox.charges.values()) == 1
    assert len(sca.sandbox.charges) == 2
