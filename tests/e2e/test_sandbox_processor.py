"""The sandbox processor behaves as the public contract says, checked end to end over
loopback HTTP: the real aiohttp app, the real ``SandboxProcessor`` client, and a small
receiver app that verifies every callback with ``standardwebhooks``."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from payportal.engine import DeclineClass, OutcomeKind, classify
from payportal.processors import InquiryStatus
from payportal.processors.sandbox import SANDBOX, Faults, create_sandbox_app, fee_minor
from payportal.processors.sandbox_client import SandboxProcessor
from payportal.tls import make_dev_cert, server_context

SECRET = "whsec_" + base64.b64encode(b"sandbox-test-secret-32-bytes-long!").decode()
NEXT_YEAR = dt.date.today().year + 1

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


# -- fixtures -------------------------------------------------------------------------------


class Receiver:
    """Collects callbacks; answers ``statuses`` in turn, then 200."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    def verified(self) -> list[tuple[str, dict[str, Any]]]:
        """(webhook-id, body) of every delivery, each verified as the portal would."""
        return [
            (headers["webhook-id"], Webhook(SECRET).verify(body, headers))
            for headers, body in self.deliveries
        ]

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.deliveries) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def receiver(aiohttp_server: ServerFactory) -> tuple[Receiver, str]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/callbacks", receiver.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return receiver, str(server.make_url("/callbacks"))


Sandbox = tuple[TestServer, SandboxProcessor]


@pytest.fixture
async def start_sandbox(
    aiohttp_server: ServerFactory,
) -> Any:
    """Starts a sandbox (with ``create_sandbox_app`` options) and a client for it."""
    processors: list[SandboxProcessor] = []

    async def start(*, timeout_ms: int = 2_000, **options: Any) -> Sandbox:
        options.setdefault("callback_url", None)
        app = create_sandbox_app(webhook_secret=SECRET, **options)
        server = await aiohttp_server(app, host="127.0.0.1")
        processor = SandboxProcessor(str(server.make_url("")), timeout_ms=timeout_ms)
        processors.append(processor)
        return server, processor

    yield start
    for processor in processors:
        await processor.close()


async def charge_card(
    processor: SandboxProcessor, number: str, key: str, amount_minor: int = 1_000
) -> Any:
    token = await processor.tokenize_test_card(number)
    return await processor.charge(token, amount_minor, "USD", key)


# -- test cards -----------------------------------------------------------------------------

CARD_OUTCOMES = [
    # number, outcome, decline_code, visa_category, how the engine classifies it
    ("4242424242424242", OutcomeKind.succeeded, None, None, None),
    ("5555555555554444", OutcomeKind.succeeded, None, None, None),
    ("4000056655665556", OutcomeKind.succeeded, None, None, None),
    ("4000000000000002", OutcomeKind.declined, "do_not_honor", 1, DeclineClass.hard),
    ("4000000000000069", OutcomeKind.declined, "expired_card", 3, DeclineClass.hard),
    ("4000000000009995", OutcomeKind.declined, "insufficient_funds", 2, DeclineClass.soft),
    ("4000000000000119", OutcomeKind.errored, "processing_error", 2, DeclineClass.technical),
]


@pytest.mark.parametrize(
    ("number", "outcome", "decline_code", "visa_category", "decline_class"), CARD_OUTCOMES
)
async def test_each_test_card_has_its_documented_outcome(
    start_sandbox: Any,
    number: str,
    outcome: OutcomeKind,
    decline_code: str | None,
    visa_category: int | None,
    decline_class: DeclineClass | None,
) -> None:
    server, processor = await start_sandbox()
    result = await charge_card(processor, number, key="att_1", amount_minor=2_500)
    assert result.outcome is outcome
    assert result.decline_code == decline_code
    assert result.visa_category == visa_category
    if decline_class is not None:
        got = classify(result.decline_code, visa_category=result.visa_category)
        assert got is decline_class
    state = server.app[SANDBOX]
    if outcome is OutcomeKind.succeeded:
        charge = state.charges[result.charge_id]
        assert (charge.status, charge.amount, charge.currency) == ("succeeded", 2_500, "USD")
        assert charge.fee == 73 + 30  # 2.9 % of 2,500 is 72.5, rounded half up
        assert charge.net == 2_500 - charge.fee
    if outcome is OutcomeKind.errored:
        # A processing error captures nothing and leaves the key free for the resend.
        assert state.charges == {}
        assert (await processor.inquire("att_1")).inquiry is InquiryStatus.not_found


async def test_over_https_the_client_trusts_the_ca_it_is_given_besides_the_systems(
    aiohttp_server: ServerFactory, tmp_path: Any
) -> None:
    made = make_dev_cert(tmp_path)
    app = create_sandbox_app(webhook_secret=SECRET, callback_url=None)
    context = server_context(str(made.cert_file), str(made.key_file))
    url = str((await aiohttp_server(app, ssl=context)).make_url(""))
    assert url.startswith("https://")
    async with SandboxProcessor(url, ca_file=str(made.ca_file)) as trusting:
        token = await trusting.tokenize_test_card("4242424242424242")
        result = await trusting.charge(token, 1_000, "USD", "tls_1")
    assert result.outcome is OutcomeKind.succeeded
    # Without the CA the handshake fails before any request: to the caller, an unknown
    # outcome (as for a dropped connection), and the sandbox saw no second charge.
    async with SandboxProcessor(url) as stranger:
        result = await stranger.charge(token, 1_000, "USD", "tls_2")
    assert result.outcome is OutcomeKind.unknown
    assert len(app[SANDBOX].charges) == 1


def test_fee_is_2_9_percent_plus_30_rounded_half_up() -> None:
    assert fee_minor(1_000) == 29 + 30
    assert fee_minor(2_500) == 73 + 30
    assert fee_minor(1) == 0 + 30


async def test_mastercard_declines_carry_the_merchant_advice_code(start_sandbox: Any) -> None:
    _, processor = await start_sandbox()
    soft = await charge_card(processor, "5105105105105100", key="att_soft")
    stop = await charge_card(processor, "5100000000000016", key="att_stop")
    assert (soft.decline_code, soft.advice_code, soft.visa_category) == (
        "insufficient_funds",
        "24",
        None,
    )
    assert classify(soft.decline_code, advice_code=soft.advice_code) is DeclineClass.soft
    assert stop.advice_code == "03"
    assert classify(stop.decline_code, advice_code=stop.advice_code) is DeclineClass.hard


async def test_card_0341_succeeds_when_attached_and_declines_later(start_sandbox: Any) -> None:
    _, processor = await start_sandbox()
    token = await processor.tokenize_test_card("4000000000000341")
    first = await processor.charge(token, 1_000, "USD", "att_1")
    later = await processor.charge(token, 1_000, "USD", "att_2")
    replay_of_first = await processor.charge(token, 1_000, "USD", "att_1")
    assert first.outcome is OutcomeKind.succeeded
    assert later.outcome is OutcomeKind.declined
    assert later.decline_code is not None
    assert replay_of_first == first


async def test_card_3063_captures_then_times_out_and_inquiry_finds_the_charge(
    start_sandbox: Any, receiver: tuple[Receiver, str]
) -> None:
    inbox, url = receiver
    server, processor = await start_sandbox(
        callback_url=url, timeout_ms=300, faults=Faults(capture_timeout_delay_ms=3_000)
    )
    result = await charge_card(processor, "4000000000003063", key="att_3063")
    assert result.outcome is OutcomeKind.unknown
    charges = list(server.app[SANDBOX].charges.values())
    assert [(c.status, c.idempotency_key) for c in charges] == [("succeeded", "att_3063")]
    inquiry = await processor.inquire("att_3063")
    assert inquiry.outcome is OutcomeKind.succeeded
    assert inquiry.inquiry is InquiryStatus.succeeded
    assert inquiry.charge_id == charges[0].id
    assert (inquiry.amount_minor, inquiry.currency) == (1_000, "USD")
    await inbox.wait_for(1)
    [(_, callback)] = inbox.verified()
    assert callback["type"] == "charge.succeeded"
    assert callback["data"]["charge"] == charges[0].id


async def test_timeout_after_capture_knob_holds_any_charge_and_never_captures_twice(
    start_sandbox: Any,
) -> None:
    server, processor = await start_sandbox(
        timeout_ms=300, faults=Faults(timeout_after_capture=True, capture_timeout_delay_ms=3_000)
    )
    token = await processor.tokenize_test_card("4242424242424242")
    assert (await processor.charge(token, 500, "USD", "att_1")).outcome is OutcomeKind.unknown
    # The gateway must not do this, but if it re-sends the same key: still one charge.
    resent = await processor.charge(token, 500, "USD", "att_1")
    assert resent.outcome is OutcomeKind.succeeded
    assert len(server.app[SANDBOX].charges) == 1


async def test_inquiry_sees_processing_while_a_charge_is_being_decided(
    start_sandbox: Any,
) -> None:
    _, processor = await start_sandbox(faults=Faults(latency_ms=400))
    token = await processor.tokenize_test_card("4242424242424242")
    charging = asyncio.create_task(processor.charge(token, 500, "USD", "att_1"))
    await asyncio.sleep(0.1)
    during = await processor.inquire("att_1")
    assert (during.outcome, during.inquiry) == (OutcomeKind.unknown, InquiryStatus.processing)
    concurrent = await processor.charge(token, 500, "USD", "att_1")
    assert concurrent.outcome is OutcomeKind.unknown  # 409: the key is in flight
    assert (await charging).outcome is OutcomeKind.succeeded
    assert (await processor.inquire("att_1")).inquiry is InquiryStatus.succeeded


# -- idempotency ----------------------------------------------------------------------------


async def test_same_idempotency_key_gives_the_same_charge_once(start_sandbox: Any) -> None:
    server, processor = await start_sandbox()
    token = await processor.tokenize_test_card("4242424242424242")
    results = await asyncio.gather(
        *(processor.charge(token, 1_000, "USD", "att_1") for _ in range(3))
    )
    again = await processor.charge(token, 1_000, "USD", "att_1")
    succeeded = [r for r in [*results, again] if r.outcome is OutcomeKind.succeeded]
    assert {r.charge_id for r in succeeded} == {again.charge_id}
    assert len(server.app[SANDBOX].charges) == 1


async def test_same_key_with_a_different_body_is_refused_with_422(
    start_sandbox: Any, aiohttp_client: ClientFactory
) -> None:
    server, processor = await start_sandbox()
    token = await processor.tokenize_test_card("4242424242424242")
    await processor.charge(token, 1_000, "USD", "att_1")
    client = await aiohttp_client(server)
    response = await client.post(
        "/v1/charges",
        json={"token": token, "amount": 999, "currency": "USD", "idempotency_key": "att_1"},
    )
    assert response.status == 422
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("idempotency_error", "idempotency_key_reused")
    assert len(server.app[SANDBOX].charges) == 1


async def test_decline_is_replayed_for_the_same_key(start_sandbox: Any) -> None:
    server, processor = await start_sandbox()
    token = await processor.tokenize_test_card("4000000000009995")
    first = await processor.charge(token, 1_000, "USD", "att_1")
    again = await processor.charge(token, 1_000, "USD", "att_1")
    assert first == again
    assert len(server.app[SANDBOX].charges) == 1


# -- refunds and errors ---------------------------------------------------------------------


async def test_refunds_are_idempotent_and_never_exceed_the_charge(start_sandbox: Any) -> None:
    server, processor = await start_sandbox()
    charge = await charge_card(processor, "4242424242424242", key="att_1")
    first = await processor.refund(charge.charge_id, 600, "ref_1")
    replay = await processor.refund(charge.charge_id, 600, "ref_1")
    too_much = await processor.refund(charge.charge_id, 600, "ref_2")
    rest = await processor.refund(charge.charge_id, 400, "ref_3")
    assert first.outcome is OutcomeKind.succeeded
    assert replay == first
    assert (too_much.outcome, too_much.failure_code) == (OutcomeKind.declined, "amount_too_large")
    assert rest.outcome is OutcomeKind.succeeded
    stored = server.app[SANDBOX].charges[charge.charge_id]
    assert (stored.amount_refunded, stored.refunded) == (1_000, True)


async def test_injected_5xx_is_errored_and_captures_nothing(start_sandbox: Any) -> None:
    server, processor = await start_sandbox(faults=Faults(error_rate_5xx=1.0))
    result = await charge_card(processor, "4242424242424242", key="att_1")
    assert (result.outcome, result.decline_code) == (OutcomeKind.errored, "api_error")
    assert server.app[SANDBOX].charges == {}


async def test_unreachable_processor_is_unknown_not_an_exception() -> None:
    async with SandboxProcessor("http://127.0.0.1:9", timeout_ms=500) as processor:
        result = await processor.charge("tok_x", 100, "USD", "att_1")
        inquiry = await processor.inquire("att_1")
        refund = await processor.refund("ch_x", 100, "ref_1")
    assert result.outcome is OutcomeKind.unknown
    assert inquiry.outcome is OutcomeKind.unknown
    assert refund.outcome is OutcomeKind.unknown


# -- tokenization ---------------------------------------------------------------------------

TOKEN_ERRORS = [
    # body, status, code, param
    ({"number": "4242424242424241"}, 402, "incorrect_number", "number"),
    ({"number": "4242 4242"}, 402, "invalid_number", "number"),
    ({"exp_year": 2020}, 402, "expired_card", "exp_year"),
    ({"exp_month": 13}, 402, "invalid_expiry_month", "exp_month"),
    ({"cvc": "12"}, 402, "invalid_cvc", "cvc"),
    ({"cvc": "12a"}, 402, "invalid_cvc", "cvc"),
    ({"number": 4242424242424242}, 400, "parameter_invalid", "number"),
    ({"surprise": 1}, 400, "parameter_invalid", "surprise"),
]


def _card_body(**changes: Any) -> dict[str, Any]:
    body = {
        "type": "card",
        "number": "4242 4242 4242 4242",
        "exp_month": 12,
        "exp_year": NEXT_YEAR,
        "cvc": "123",
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(("changes", "status", "code", "param"), TOKEN_ERRORS)
async def test_tokenization_refuses_bad_cards_in_the_api_error_shape(
    aiohttp_client: ClientFactory, changes: dict[str, Any], status: int, code: str, param: str
) -> None:
    client = await aiohttp_client(create_sandbox_app(callback_url=None, webhook_secret=SECRET))
    response = await client.post("/v1/tokens", json=_card_body(**changes))
    assert response.status == status
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    error = (await response.json())["error"]
    assert set(error) >= {"type", "code", "message", "param"}
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == ("card_error" if status == 402 else "invalid_request_error")


async def test_missing_field_is_parameter_missing(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_sandbox_app(callback_url=None, webhook_secret=SECRET))
    body = _card_body()
    del body["cvc"]
    response = await client.post("/v1/tokens", json=body)
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["param"]) == (400, "parameter_missing", "cvc")


async def test_tokens_for_cards_and_wallets(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_sandbox_app(callback_url=None, webhook_secret=SECRET))
    card = await (await client.post("/v1/tokens", json=_card_body(exp_month="7"))).json()
    assert card["token"].startswith("tok_")
    assert (card["brand"], card["last4"], card["exp_month"], card["exp_year"]) == (
        "visa",
        "4242",
        7,
        NEXT_YEAR,
    )
    wallet = await (
        await client.post(
            "/v1/tokens",
            json={"type": "wallet", "wallet": "apple_pay", "card_number": "5555555555554444"},
        )
    ).json()
    assert (wallet["brand"], wallet["last4"], wallet["wallet"]) == (
        "mastercard",
        "4444",
        "apple_pay",
    )
    debit = await (
        await client.post("/v1/tokens", json=_card_body(number="4000056655665556"))
    ).json()
    assert debit["funding"] == "debit"


async def test_tokens_answer_the_cors_preflight(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_sandbox_app(callback_url=None, webhook_secret=SECRET))
    response = await client.options(
        "/v1/tokens",
        headers={"Origin": "http://127.0.0.1:8080", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]


async def test_hosted_card_fields_page_has_labelled_autocomplete_fields(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(create_sandbox_app(callback_url=None, webhook_secret=SECRET))
    response = await client.get("/v1/hosted/card-fields")
    assert response.status == 200
    html = await response.text()
    for token in ("cc-number", "cc-exp", "cc-csc"):
        assert f'autocomplete="{token}"' in html
        assert f'<label for="{token}">' in html
    assert "/v1/tokens" in html
    assert "postMessage" in html
    assert "http" not in html.split("<body>")[0]  # no external assets in the head
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]


async def test_no_card_number_in_logs_or_responses(
    start_sandbox: Any, aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, _ = await start_sandbox()
    client = await aiohttp_client(server)
    numbers = [number for number, *_ in CARD_OUTCOMES] + ["4000000000000341"]
    bodies: list[str] = []
    for i, number in enumerate(numbers):
        token_response = await client.post("/v1/tokens", json=_card_body(number=number))
        bodies.append(await token_response.text())
        token = (await token_response.json())["token"]
        charge = await client.post(
            "/v1/charges",
            json={"token": token, "amount": 100, "currency": "USD", "idempotency_key": f"a{i}"},
        )
        bodies.append(await charge.text())
        inquiry = await client.get("/v1/charges", params={"idempotency_key": f"a{i}"})
        bodies.append(await inquiry.text())
    bad = await client.post("/v1/tokens", json=_card_body(number="4242424242424241"))
    bodies.append(await bad.text())
    wrong_type = await client.post("/v1/tokens", json={"type": "4242424242424242"})
    bodies.append(await wrong_type.text())
    bodies.append(await (await client.get("/v1/charges")).text())
    assert caplog.records, "the sandbox logs what it does"
    for number in [*numbers, "4242424242424241"]:
        assert number not in caplog.text
        for body in bodies:
            assert number not in body.replace(" ", "")


# -- callbacks ------------------------------------------------------------------------------


async def test_callbacks_are_signed_and_describe_the_charge(
    start_sandbox: Any, receiver: tuple[Receiver, str], aiohttp_client: ClientFactory
) -> None:
    inbox, url = receiver
    server, processor = await start_sandbox(callback_url=url)
    ok = await charge_card(processor, "4242424242424242", key="att_ok", amount_minor=1_234)
    declined = await charge_card(processor, "4000000000009995", key="att_no")
    await processor.refund(ok.charge_id, 234, "ref_1")
    client = await aiohttp_client(server)
    await client.post(f"/v1/_charges/{ok.charge_id}/dispute")
    await inbox.wait_for(4)
    bodies = {body["type"]: body["data"] for _, body in inbox.verified()}
    assert bodies["charge.succeeded"] == {
        "charge": ok.charge_id,
        "attempt": "att_ok",
        "amount": 1_234,
        "currency": "USD",
    }
    assert bodies["charge.failed"] == {
        "charge": declined.charge_id,
        "attempt": "att_no",
        "amount": 1_000,
        "currency": "USD",
        "decline_code": "insufficient_funds",
        "visa_category": 2,
    }
    assert bodies["charge.refunded"]["amount"] == 234
    assert bodies["charge.disputed"]["charge"] == ok.charge_id


async def test_a_decline_callback_carries_the_network_signals_its_reply_has(
    start_sandbox: Any, receiver: tuple[Receiver, str]
) -> None:
    inbox, url = receiver
    _, processor = await start_sandbox(callback_url=url)
    stop = await charge_card(processor, "5100000000000016", key="att_stop")
    await inbox.wait_for(1)
    [(_, body)] = inbox.verified()
    assert body["data"]["advice_code"] == stop.advice_code == "03"
    assert "visa_category" not in body["data"]  # Visa's alone


async def test_a_tampered_callback_fails_verification(
    start_sandbox: Any, receiver: tuple[Receiver, str]
) -> None:
    inbox, url = receiver
    _, processor = await start_sandbox(callback_url=url)
    await charge_card(processor, "4242424242424242", key="att_1")
    await inbox.wait_for(1)
    headers, body = inbox.deliveries[0]
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body.replace(b"att_1", b"att_2"), headers)


async def test_failed_callback_is_retried_with_the_same_webhook_id(
    start_sandbox: Any, receiver: tuple[Receiver, str]
) -> None:
    inbox, url = receiver
    inbox.statuses = [500, 503]
    _, processor = await start_sandbox(callback_url=url, callback_retry_delays_ms=(20, 20, 20))
    await charge_card(processor, "4242424242424242", key="att_1")
    await inbox.wait_for(3)
    ids = [webhook_id for webhook_id, _ in inbox.verified()]
    assert len(ids) == 3
    assert len(set(ids)) == 1


async def test_duplicate_callbacks_knob_sends_each_event_n_times(
    start_sandbox: Any, receiver: tuple[Receiver, str]
) -> None:
    inbox, url = receiver
    _, processor = await start_sandbox(callback_url=url, faults=Faults(duplicate_callbacks=3))
    await charge_card(processor, "4242424242424242", key="att_1")
    await charge_card(processor, "4000000000000002", key="att_2")
    await inbox.wait_for(6)
    await asyncio.sleep(0.1)
    verified = inbox.verified()
    assert len(verified) == 6
    ids = [webhook_id for webhook_id, _ in verified]
    assert sorted(ids.count(i) for i in set(ids)) == [3, 3]


async def test_reorder_callbacks_knob_shuffles_held_events_deterministically(
    start_sandbox: Any, receiver: tuple[Receiver, str]
) -> None:
    async def run(seed: int) -> tuple[list[str], list[str]]:
        inbox.deliveries.clear()
        server, processor = await start_sandbox(
            callback_url=url, seed=seed, faults=Faults(reorder_callbacks=5)
        )
        charges = [
            await charge_card(processor, "4242424242424242", key=f"att_{i}") for i in range(5)
        ]
        await inbox.wait_for(5)
        emitted = [f"att_{i}" for i in range(5)]
        assert [e.charge_id for e in server.app[SANDBOX].callbacks.events] == [
            processor_charge.charge_id for processor_charge in charges
        ]
        received = [body["data"]["attempt"] for _, body in inbox.verified()]
        return emitted, received

    inbox, url = receiver
    emitted, received = await run(seed=7)
    assert sorted(received) == emitted
    assert received != emitted
    _, received_again = await run(seed=7)
    assert received_again == received


async def test_faults_can_be_changed_at_runtime(
    start_sandbox: Any, aiohttp_client: ClientFactory
) -> None:
    server, processor = await start_sandbox()
    client = await aiohttp_client(server)
    response = await client.post("/v1/_faults", json={"error_rate_5xx": 1.0, "seed": 3})
    assert response.status == 200
    assert (await response.json())["error_rate_5xx"] == 1.0
    result = await charge_card(processor, "4242424242424242", key="att_1")
    assert result.outcome is OutcomeKind.errored
    await client.post("/v1/_faults", json={"error_rate_5xx": 0.0})
    result = await charge_card(processor, "4242424242424242", key="att_1")
    assert result.outcome is OutcomeKind.succeeded
    bad = await client.post("/v1/_faults", json={"latency": 5})
    assert (bad.status, (await bad.json())["error"]["param"]) == (400, "latency")
