"""The Stripe adapter through the official SDK against a local Stripe-shaped server: each
test asserts the request Stripe would receive and the outcome the engine is given."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from payportal.engine import OutcomeKind
from payportal.engine.retry_policy import DeclineClass, classify
from payportal.processors import InquiryStatus, ProcessorRequestError
from payportal.processors.stripe import StripeProcessor
from tests import artifacts
from tests.stripe_fake.server import FakeStripe, create_stripe_app

SECRET_KEY = "sk_test_" + "fakeFakeFakeFakeFake0123"  # test-only
artifacts.remember_secret(SECRET_KEY)


@pytest.fixture
async def stripe_fake(aiohttp_server: Any) -> AsyncIterator[tuple[FakeStripe, StripeProcessor]]:
    fake = FakeStripe()
    server = await aiohttp_server(create_stripe_app(fake), host="127.0.0.1")
    processor = StripeProcessor(SECRET_KEY, api_base=str(server.make_url("")), timeout_ms=500)
    try:
        yield fake, processor
    finally:
        await processor.close()


async def test_a_charge_is_a_confirmed_intent_under_the_attempt_id(stripe_fake: Any) -> None:
    fake, processor = stripe_fake
    result = await processor.charge(
        "cus_fake1:pm_card_visa", 12_345, "USD", "att_1", metadata={"payment": "pay_1"}
    )
    assert result.outcome is OutcomeKind.succeeded
    (sent,) = fake.posts("/v1/payment_intents")
    assert sent.headers["Idempotency-Key"] == "att_1"
    assert sent.headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.form["amount"] == "12345"
    assert sent.form["currency"] == "usd"
    assert sent.form["confirm"] == "true"
    assert sent.form["customer"] == "cus_fake1"
    assert sent.form["payment_method"] == "pm_card_visa"
    assert sent.form["metadata[payment]"] == "pay_1"
    assert sent.form["metadata[attempt]"] == "att_1"
    assert "off_session" not in sent.form  # the payer is here: 3-D Secure may be asked
    intent = next(iter(fake.intents.values()))
    assert result.charge_id == intent["latest_charge"]
    assert (result.amount_minor, result.currency) == (12_345, "USD")


async def test_a_merchant_initiated_attempt_is_off_session(stripe_fake: Any) -> None:
    fake, processor = stripe_fake
    await processor.charge("pm_card_visa", 500, "EUR", "att_2",
                           metadata={"payment": "pay_2"}, off_session=True)  # fmt: skip
    (sent,) = fake.posts("/v1/payment_intents")
    assert sent.form["off_session"] == "true"
    assert "customer" not in sent.form


async def test_a_retried_request_never_charges_twice(stripe_fake: Any) -> None:
    fake, processor = stripe_fake
    first = await processor.charge("pm_card_visa", 700, "USD", "att_3", {"payment": "pay_3"})
    again = await processor.charge("pm_card_visa", 700, "USD", "att_3", {"payment": "pay_3"})
    assert first == again
    assert len(fake.intents) == 1
    assert [r.headers["Idempotency-Key"] for r in fake.posts("/v1/payment_intents")] == [
        "att_3", "att_3",
    ]  # fmt: skip
    # The same key with another body is our bug, never a second charge.
    with pytest.raises(ProcessorRequestError):
        await processor.charge("pm_card_visa", 701, "USD", "att_3", {"payment": "pay_3"})
    assert len(fake.intents) == 1


@pytest.mark.parametrize(
    ("method", "outcome", "code", "decline_class"),
    [
        ("pm_card_chargeDeclinedInsufficientFunds", OutcomeKind.declined, "insufficient_funds",
         DeclineClass.soft),
        ("pm_card_chargeDeclined", OutcomeKind.declined, "generic_decline", DeclineClass.hard),
        ("pm_card_chargeDeclinedLostCard", OutcomeKind.declined, "lost_card", DeclineClass.hard),
        ("pm_card_chargeDeclinedProcessingError", OutcomeKind.errored, "processing_error",
         DeclineClass.technical),
    ],
)  # fmt: skip
async def test_declines_carry_stripes_codes_onto_our_classes(
    stripe_fake: Any, method: str, outcome: OutcomeKind, code: str, decline_class: DeclineClass
) -> None:
    _, processor = stripe_fake
    result = await processor.charge(method, 1_000, "USD", f"att_{method}", {"payment": "p"})
    assert (result.outcome, result.decline_code) == (outcome, code)
    assert result.charge_id is not None
    assert result.charge_id.startswith("ch_")
    signals = {"visa_category": result.visa_category, "advice_code": result.advice_code}
    assert classify(result.decline_code, **signals) is decline_class


async def test_authentication_required(stripe_fake: Any) -> None:
    _, processor = stripe_fake
    # On session: the payer's 3-D Secure step, on the page Stripe names; back to the
    # return_url given.
    waiting = await processor.charge("pm_card_authenticationRequired", 900, "USD", "att_4",
                                     {"payment": "p4"}, return_url="https://pay.example/p4")
    assert waiting.outcome is OutcomeKind.requires_action
    assert waiting.next_action is not None
    assert waiting.next_action.redirect_to_url.return_url == "https://pay.example/p4"
    assert waiting.next_action.redirect_to_url.url.startswith("https://hooks.stripe.com/")
    # Off session: the issuer asks for the payer, who is not there.
    declined = await processor.charge("pm_card_authenticationRequired", 900, "USD", "att_5",
                                      {"payment": "p5"}, off_session=True)  # fmt: skip
    assert (declined.outcome, declined.decline_code) == (
        OutcomeKind.declined, "authentication_required",
    )  # fmt: skip


@pytest.mark.parametrize(("status", "code"), [(500, "api_error"), (429, "rate_limited")])
async def test_stripe_failing_is_errored(stripe_fake: Any, status: int, code: str) -> None:
    fake, processor = stripe_fake
    fake.fail_next.append(status)
    result = await processor.charge("pm_card_visa", 100, "USD", "att_6", {"payment": "p"})
    assert (result.outcome, result.decline_code) == (OutcomeKind.errored, code)
    assert not fake.intents


async def test_a_timeout_is_unknown_and_the_inquiry_finds_the_charge(stripe_fake: Any) -> None:
    fake, processor = stripe_fake
    fake.delay_next_s = 1.0  # past the adapter's 500 ms
    result = await processor.charge("pm_card_visa", 4_200, "USD", "att_7", {"payment": "p7"})
    assert result.outcome is OutcomeKind.unknown
    inquiry = await processor.inquire("att_7")
    assert (inquiry.outcome, inquiry.inquiry) == (OutcomeKind.succeeded, InquiryStatus.succeeded)
    search = [r for r in fake.requests if r.path == "/v1/payment_intents/search"]
    assert search[-1].query["query"] == "metadata['attempt']:'att_7'"
    assert inquiry.charge_id == next(iter(fake.intents.values()))["latest_charge"]


async def test_an_inquiry_for_an_attempt_stripe_never_saw(stripe_fake: Any) -> None:
    _fake, processor = stripe_fake
    result = await processor.inquire("att_never")
    assert (result.outcome, result.inquiry) == (OutcomeKind.errored, InquiryStatus.not_found)
    await processor.charge("pm_card_chargeDeclined", 1, "USD", "att_8", {"payment": "p8"})
    declined = await processor.inquire("att_8")
    assert (declined.inquiry, declined.decline_code) == (InquiryStatus.declined,
                                                         "generic_decline")  # fmt: skip


async def test_a_refund(stripe_fake: Any) -> None:
    fake, processor = stripe_fake
    charged = await processor.charge("pm_card_visa", 5_000, "USD", "att_9", {"payment": "p9"})
    assert charged.charge_id is not None
    refund = await processor.refund(charged.charge_id, 1_500, "ref_1")
    assert refund.outcome is OutcomeKind.succeeded
    assert (refund.charge_id, refund.amount_minor, refund.currency) == (
        charged.charge_id, 1_500, "USD",
    )  # fmt: skip
    (sent,) = fake.posts("/v1/refunds")
    assert sent.headers["Idempotency-Key"] == "ref_1"
    assert sent.form == {"amount": "1500", "charge": charged.charge_id}
    missing = await processor.refund("ch_unknown", 1, "ref_2")
    assert (missing.outcome, missing.failure_code) == (OutcomeKind.declined, "resource_missing")


async def test_saving_a_card_makes_a_customer_and_a_setup_intent(stripe_fake: Any) -> None:
    fake, processor = stripe_fake
    saved = await processor.save_card("pm_card_visa", email="ada@example.com",
                                      idempotency_key="pm_ours_1")  # fmt: skip
    (customer,) = fake.posts("/v1/customers")
    assert customer.form == {"email": "ada@example.com"}
    (setup,) = fake.posts("/v1/setup_intents")
    assert setup.form["customer"] == saved.customer_id
    assert setup.form["payment_method"] == "pm_card_visa"
    assert setup.form["confirm"] == "true"
    assert setup.form["usage"] == "off_session"
    assert saved.token == f"{saved.customer_id}:pm_card_visa"
    assert saved.customer_id not in repr(saved)  # sensitive: never in a repr (or a log)
    # The saved card then charges with its Customer.
    await processor.charge(saved.token, 100, "USD", "att_10", {"payment": "p10"})
    assert fake.posts("/v1/payment_intents")[-1].form["customer"] == saved.customer_id
    with pytest.raises(ProcessorRequestError):
        await processor.save_card("pm_card_authenticationRequired",
                                  customer_id=saved.customer_id, idempotency_key="pm_ours_2")


async def test_the_settlement_report_from_payouts_and_balance_transactions(
    stripe_fake: Any,
) -> None:
    fake, processor = stripe_fake
    for n in range(3):
        await processor.charge("pm_card_visa", 1_000 + n, "USD", f"att_s{n}", {"payment": "p"})
    first, second, _third = fake.intents
    payout_id = fake.pay_out([first, second], fee=59, others_net=-300)
    report = await processor.settlement_report()
    assert [(x.charge, x.payout, x.amount, x.fee, x.net, x.currency) for x in report.lines] == [
        (fake.intents[first]["latest_charge"], payout_id, 1_000, 59, 941, "USD"),
        (fake.intents[second]["latest_charge"], payout_id, 1_001, 59, 942, "USD"),
    ]  # fmt: skip
    (payout,) = report.payouts
    # Stripe's total less the refund it netted: the sum of the charge lines.
    assert (payout.id, payout.amount, payout.charges, payout.status) == (
        payout_id, 941 + 942, 2, "paid",
    )  # fmt: skip
    assert report.covers_until is not None
    assert fake.requests[-1].query == {"payout": payout_id, "limit": "100"}


@pytest.mark.skipif(
    not os.environ.get("PAYPORTAL_TEST_STRIPE_SECRET_KEY"),
    reason="opt-in: set PAYPORTAL_TEST_STRIPE_SECRET_KEY to a Stripe test-mode key",
)
async def test_against_stripes_test_mode() -> None:
    key = os.environ["PAYPORTAL_TEST_STRIPE_SECRET_KEY"]
    assert key.startswith(("sk_test_", "rk_test_")), "test-mode keys only"
    artifacts.remember_secret(key)
    async with StripeProcessor(key) as processor:
        saved = await processor.save_card("pm_card_visa", idempotency_key=os.urandom(8).hex())
        attempt = f"att_live_{os.urandom(8).hex()}"
        charged = await processor.charge(saved.token, 1_234, "USD", attempt, {"payment": "p"})
        assert charged.outcome is OutcomeKind.succeeded
        again = await processor.charge(saved.token, 1_234, "USD", attempt, {"payment": "p"})
        assert again.charge_id == charged.charge_id
        declined = await processor.charge(
            "pm_card_chargeDeclinedInsufficientFunds", 1_234, "USD",
            f"att_live_{os.urandom(8).hex()}", {"payment": "p"},
        )  # fmt: skip
        assert (declined.outcome, declined.decline_code) == (
            OutcomeKind.declined, "insufficient_funds",
        )  # fmt: skip
        assert charged.charge_id is not None
        refund = await processor.refund(charged.charge_id, 234, os.urandom(8).hex())
        assert refund.outcome is OutcomeKind.succeeded
