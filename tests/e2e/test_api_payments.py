"""Payments through the public API behave as docs/api.md says — every test card's outcome,
oldest-first allocation, refunds, cancel, previews and lists — checked end to end over
HTTP against in-process shards, a real database and the sandbox processor."""

from __future__ import annotations

import datetime as dt

import pytest

from .api_harness import Api

pytestmark = pytest.mark.asyncio

# card, HTTP status, payment status, decline_code
CARD_OUTCOMES = [
    ("visa", 200, "succeeded", None),
    ("mastercard", 200, "succeeded", None),
    ("visa_debit", 200, "succeeded", None),
    ("attach_then_decline", 200, "succeeded", None),
    ("do_not_honor", 402, "requires_payment_method", "do_not_honor"),
    ("expired", 402, "requires_payment_method", "expired_card"),
    ("insufficient_funds", 200, "retry_scheduled", "insufficient_funds"),
    ("processing_error", 200, "retry_scheduled", "processing_error"),
]


@pytest.mark.parametrize(("card", "http_status", "status", "decline_code"), CARD_OUTCOMES)
async def test_each_test_card_answers_its_documented_outcome(
    api: Api, card: str, http_status: int, status: str, decline_code: str | None
) -> None:
    account = await api.account()
    method = await api.payment_method(account, card)

    code, body, _ = await api.pay(account, 1_000, method)

    assert code == http_status, body
    payment = body if code == 200 else body["error"]["payment"]
    assert payment["status"] == status
    assert payment["attempts"][-1]["decline_code"] == decline_code
    if code == 402:
        assert body["error"]["type"] == "card_error"
        assert body["error"]["code"] == "card_declined"
        assert body["error"]["decline_code"] == decline_code
    if status == "retry_scheduled":
        assert payment["next_retry_at"] is not None
    if status == "succeeded":
        assert payment["processing_ms"] is not None
    fetched = await api.ok("GET", f"/v1/payments/{payment['id']}")
    assert fetched == payment


async def test_a_card_attached_once_then_declining_declines_the_second_charge(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account, "attach_then_decline")

    first, _, _ = await api.pay(account, 500, method)
    second, body, _ = await api.pay(account, 500, method)

    assert first == 200
    assert second == 402
    assert body["error"]["decline_code"] == "generic_decline"


async def test_an_unknown_outcome_answers_processing_and_is_charged_exactly_once(
    api: Api,
) -> None:
    account = await api.account()
    method = await api.payment_method(account, "capture_timeout")

    code, body, _ = await api.pay(account, 1_234, method)

    assert code == 200, body
    assert body["status"] == "processing"
    assert body["attempts"][0]["status"] == "unknown"
    assert len(api.charges()) == 1
    assert api.charges()[0].status == "succeeded"
    fetched = await api.ok("GET", f"/v1/payments/{body['id']}")
    assert fetched["status"] == "processing"
    assert len(api.charges()) == 1


async def test_a_partial_payment_is_allocated_oldest_first_and_the_rest_goes_to_credit(
    api: Api,
) -> None:
    account = await api.account()
    newer = await api.invoice(account, 3_000, dt.date(2026, 3, 1))
    older = await api.invoice(account, 2_000, dt.date(2026, 2, 1))
    method = await api.payment_method(account)

    preview = await api.ok(
        "GET", "/v1/payments/preview_allocation", params={"account": account, "amount": 3_500}
    )
    code, partial, _ = await api.pay(account, 3_500, method)

    assert code == 200, partial
    assert partial["allocations"] == [
        {"invoice": older, "amount": 2_000}, {"invoice": newer, "amount": 1_500},
    ]  # fmt: skip
    assert preview["allocations"] == partial["allocations"]
    assert partial["amount_applied"] == 3_500
    assert partial["amount_unapplied"] == 0
    balance = (await api.ok("GET", f"/v1/accounts/{account}"))["balance"]
    assert balance == {"outstanding": 1_500, "credit": 0, "currency": "USD"}

    code, over, _ = await api.pay(account, 2_000, method)

    assert code == 200, over
    assert over["allocations"] == [{"invoice": newer, "amount": 1_500}]
    assert over["amount_unapplied"] == 500
    balance = (await api.ok("GET", f"/v1/accounts/{account}"))["balance"]
    assert balance == {"outstanding": 0, "credit": 500, "currency": "USD"}


async def test_explicit_allocations_come_first(api: Api) -> None:
    account = await api.account()
    older = await api.invoice(account, 1_000, dt.date(2026, 1, 1))
    newer = await api.invoice(account, 1_000, dt.date(2026, 2, 1))
    method = await api.payment_method(account)

    code, body, _ = await api.pay(
        account, 1_500, method, allocations=[{"invoice": newer, "amount": 1_000}]
    )

    assert code == 200, body
    assert body["allocations"] == [
        {"invoice": newer, "amount": 1_000}, {"invoice": older, "amount": 500},
    ]  # fmt: skip


async def test_refund_and_cancel_follow_the_payment_status(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account)
    _, paid, _ = await api.pay(account, 1_000, method)
    headers = {**api.merchant, "Idempotency-Key": "refund-1"}

    refund = await api.ok("POST", f"/v1/payments/{paid['id']}/refunds", headers=headers,
                          json={"amount": 400})  # fmt: skip
    again = await api.ok("POST", f"/v1/payments/{paid['id']}/refunds", headers=headers,
                         json={"amount": 400})  # fmt: skip
    after = await api.ok("GET", f"/v1/payments/{paid['id']}")
    code, body, _ = await api.call("POST", f"/v1/payments/{paid['id']}/cancel")

    assert refund == again
    assert refund["amount"] == 400
    assert after["status"] == "partially_refunded"
    assert after["amount_refunded"] == 400
    assert code == 400
    assert body["error"]["code"] == "payment_status_must_allow_transition"

    declined_method = await api.payment_method(account, "do_not_honor")
    _, declined, _ = await api.pay(account, 1_000, declined_method)
    canceled = await api.ok("POST", f"/v1/payments/{declined['error']['payment']['id']}/cancel")
    assert canceled["status"] == "canceled"


async def test_invalid_payments_are_rejected_with_the_field_named(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account)

    zero, zero_body, _ = await api.pay(account, 0, method)
    unknown, unknown_body, _ = await api.pay(account, 100, method, tip=5)
    currency, currency_body, _ = await api.call(
        "POST", "/v1/payments", headers={**api.merchant, "Idempotency-Key": "k-eur"},
        json={"account": account, "amount": 100, "currency": "EUR", "payment_method": method},
    )  # fmt: skip
    missing, missing_body, _ = await api.call(
        "POST", "/v1/payments",
        json={"account": account, "amount": 100, "currency": "USD", "payment_method": method},
    )  # fmt: skip

    assert (zero, zero_body["error"]["param"]) == (400, "amount")
    assert (unknown, unknown_body["error"]["param"]) == (400, "tip")
    assert currency == 400
    assert currency_body["error"]["param"] == "currency"
    assert missing == 400
    assert missing_body["error"]["code"] == "idempotency_key_missing"
    assert len(api.charges()) == 0


async def test_lists_paginate_and_filter(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account)
    for amount in (100, 200, 300):
        await api.invoice(account, amount, dt.date(2026, 1, 1))
    for amount in (100, 200, 300):
        await api.pay(account, amount, method)
    declined = await api.payment_method(account, "do_not_honor")
    await api.pay(account, 400, declined)

    first = await api.ok("GET", "/v1/payments", params={"account": account, "limit": 2})
    rest = await api.ok("GET", "/v1/payments", params={
        "account": account, "limit": 10, "starting_after": first["data"][-1]["id"],
    })  # fmt: skip
    succeeded = await api.ok("GET", "/v1/payments",
                             params={"account": account, "status": "succeeded"})  # fmt: skip
    invoices = await api.ok("GET", f"/v1/accounts/{account}/invoices", params={"status": "paid"})
    accounts = await api.ok("GET", "/v1/accounts", params={"limit": 1})

    assert first["has_more"] is True
    assert len(first["data"]) + len(rest["data"]) == 4
    assert rest["has_more"] is False
    assert [p["amount"] for p in first["data"] + rest["data"]] == [400, 300, 200, 100]
    assert {p["amount"] for p in succeeded["data"]} == {100, 200, 300}
    assert len(invoices["data"]) == 3
    assert accounts["data"][0]["id"] == account

