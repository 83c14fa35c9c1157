"""Recurring billing through the public API: plans, subscriptions billed and charged at
once, dunning to past due and back, plan changes with proration, one-off purchases,
cancellation, and the contract's errors — end to end over HTTP against in-process
shards, a real database and the sandbox processor."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from payportal.billing import BillingRunner
from payportal.http.typedefs import GATEWAY, ROUTER
from payportal.mail import KIND_EMAIL, OutboxEmail, decode_email
from payportal.persistence import tables

from .api_harness import Api

pytestmark = pytest.mark.asyncio


async def _plan(api: Api, amount: int = 3_000, interval: str = "month", name: str = "Pro") -> str:
    body = await api.ok("POST", "/v1/plans", json={
        "name": name, "amount": amount, "currency": "USD", "interval": interval,
    })  # fmt: skip
    return str(body["id"])


async def _subscribe(api: Api, account: str, plan: str, method: str | None, **extra: Any) -> Any:
    payload = {"plan": plan, "payment_method": method, "autopay": method is not None, **extra}
    return await api.ok("POST", f"/v1/accounts/{account}/subscriptions", json=payload)


def _runner(api: Api) -> BillingRunner:
    app = api.client.server.app
    return BillingRunner(app[ROUTER], api.store.engine, app[GATEWAY])


async def _emails(api: Api, template_word: str) -> list[OutboxEmail]:
    async with api.store.engine.connect() as connection:
        rows = (await connection.execute(
            sa.select(tables.outbox.c.payload).where(tables.outbox.c.kind == KIND_EMAIL)
        )).all()  # fmt: skip
    emails = [decode_email(api.store.engine, r.payload) for r in rows]
    return [e for e in emails if template_word in e.subject]


async def test_a_subscription_with_autopay_is_invoiced_and_charged_for_its_first_period(
    api: Api,
) -> None:
    account = await api.account()
    method = await api.payment_method(account)
    plan = await _plan(api)

    subscription = await _subscribe(api, account, plan, method)

    assert subscription["status"] == "active"
    assert subscription["current_period"] is not None
    invoices = await api.ok("GET", f"/v1/accounts/{account}/billing_invoices")
    assert len(invoices["data"]) == 1
    invoice = invoices["data"][0]
    assert invoice["kind"] == "period"
    assert invoice["outcome"] == "paid"
    assert invoice["service_period"] == subscription["current_period"]
    assert [c.amount for c in api.charges()] == [invoice["amount"]]
    assert len(api.charges()) == 1
    payment = await api.ok("GET", f"/v1/payments/{invoice['payment']}")
    assert payment["status"] == "succeeded"
    assert payment["allocations"] == [{"invoice": invoice["id"], "amount": invoice["amount"]}]
    # A second run finds nothing more to bill or charge.
    report = await _runner(api).run_once()
    assert report.periods_claimed == 0
    assert report.charges_started == 0
    assert len(api.charges()) == 1
    fetched = await api.ok("GET", f"/v1/subscriptions/{subscription['id']}")
    assert fetched == subscription


async def test_an_anchor_day_other_than_today_bills_a_prorated_stub_first(api: Api) -> None:
    account = await api.account()
    plan = await _plan(api, amount=3_100)
    subscription = await _subscribe(api, account, plan, None, anchor_day=1)

    invoices = await api.ok("GET", f"/v1/accounts/{account}/billing_invoices")
    invoice = invoices["data"][0]
    period = subscription["current_period"]
    assert period["start"] == subscription["started_on"]
    assert period["end"].endswith(("-28", "-29", "-30", "-31"))
    assert 0 < invoice["amount"] <= 3_100
    # Without autopay nothing is charged; the invoice waits for the payer.
    assert invoice["outcome"] == "invoiced"
    assert api.charges() == []


async def test_a_hard_decline_makes_the_subscription_past_due_until_the_invoice_is_paid(
    api: Api,
) -> None:
    account = await api.account()
    bad = await api.payment_method(account, "do_not_honor")
    plan = await _plan(api)

    subscription = await _subscribe(api, account, plan, bad)

    assert subscription["status"] == "past_due"
    emails = await _emails(api, "past due")
    assert len(emails) == 1
    assert emails[0].to == ("ada@example.com",)
    assert "/methods" in emails[0].text
    invoice = (await api.ok("GET", f"/v1/accounts/{account}/billing_invoices"))["data"][0]
    assert invoice["outcome"] == "unpaid"

    good = await api.payment_method(account, "visa")
    code, body, _ = await api.pay(account, invoice["amount"], good,
                                  allocations=[{"invoice": invoice["id"],
                                                "amount": invoice["amount"]}])  # fmt: skip
    assert code == 200, body
    # Listing waits for the read models to show the payment (read-your-writes).
    listed = await api.ok("GET", f"/v1/accounts/{account}/invoices")
    assert [i["status"] for i in listed["data"]] == ["paid"]
    report = await _runner(api).run_once()

    assert report.reactivated == 1
    fetched = await api.ok("GET", f"/v1/subscriptions/{subscription['id']}")
    assert fetched["status"] == "active"
    # The email is sent once, however often the run looks again.
    await _runner(api).run_once()
    assert len(await _emails(api, "past due")) == 1


async def test_an_upgrade_invoices_the_prorated_difference_and_a_downgrade_credits_it(
    api: Api,
) -> None:
    account = await api.account()
    method = await api.payment_method(account)
    basic = await _plan(api, amount=1_000, name="Basic")
    pro = await _plan(api, amount=4_000, name="Pro")
    subscription = await _subscribe(api, account, basic, method)
    path = f"/v1/subscriptions/{subscription['id']}/change_plan"

    missing_key, body, _ = await api.call("POST", path, json={"plan": pro})
    assert missing_key == 400
    assert body["error"]["code"] == "idempotency_key_missing"

    headers = {**api.merchant, "Idempotency-Key": uuid.uuid4().hex}
    upgraded = await api.ok("POST", path, headers=headers, json={"plan": pro})
    replayed = await api.ok("POST", path, headers=headers, json={"plan": pro})

    assert replayed == upgraded
    assert upgraded["subscription"]["plan"]["id"] == pro
    invoice = upgraded["invoice"]
    # Changed on the period's first day: the whole difference, charged at once.
    assert invoice["kind"] == "proration"
    assert invoice["amount"] == 3_000
    assert invoice["outcome"] == "paid"
    assert len(api.charges()) == 2

    downgraded = await api.ok("POST", path, headers={**api.merchant, "Idempotency-Key": "d1"},
                              json={"plan": basic})  # fmt: skip
    assert downgraded["invoice"] is None
    assert downgraded["subscription"]["credit"] == 3_000
    assert len(api.charges()) == 2


async def test_a_change_to_another_currency_or_interval_is_refused(api: Api) -> None:
    account = await api.account()
    monthly = await _plan(api)
    yearly = await _plan(api, interval="year")
    euro = (await api.ok("POST", "/v1/plans", json={
        "name": "Euro", "amount": 100, "currency": "EUR", "interval": "month"}))["id"]  # fmt: skip
    subscription = await _subscribe(api, account, monthly, None)
    path = f"/v1/subscriptions/{subscription['id']}/change_plan"

    for plan in (yearly, euro):
        code, body, _ = await api.call("POST", path, json={"plan": plan},
                                       headers={**api.merchant, "Idempotency-Key": plan})
        assert code == 400, body
        assert body["error"]["param"] == "plan"

    code, body, _ = await api.call("POST", f"/v1/accounts/{account}/subscriptions",
                                   json={"plan": euro, "autopay": False})  # fmt: skip
    assert code == 400
    assert body["error"]["code"] == "parameter_invalid"


async def test_a_one_off_purchase_is_invoiced_and_charged_once(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account)
    headers = {**api.merchant, "Idempotency-Key": "purchase-1"}
    payload = {"amount": 2_500, "description": "Setup fee", "payment_method": method}

    first = await api.ok("POST", f"/v1/accounts/{account}/invoice_items", headers=headers,
                         json=payload)  # fmt: skip
    again = await api.ok("POST", f"/v1/accounts/{account}/invoice_items", headers=headers,
                         json=payload)  # fmt: skip

    assert again == first
    assert first["kind"] == "item"
    assert first["service_period"] is None
    assert first["outcome"] == "paid"
    assert len(api.charges()) == 1
    invoice_ids = [i["id"] for i in
                   (await api.ok("GET", f"/v1/accounts/{account}/invoices"))["data"]]  # fmt: skip
    assert invoice_ids == [first["id"]]


async def test_cancel_at_period_end_keeps_the_period_and_cancel_now_ends_today(api: Api) -> None:
    account = await api.account()
    plan = await _plan(api)
    later = await _subscribe(api, account, plan, None)
    now = await _subscribe(api, account, plan, None)

    at_end = await api.ok("POST", f"/v1/subscriptions/{later['id']}/cancel",
                          json={"at_period_end": True})  # fmt: skip
    at_once = await api.ok("POST", f"/v1/subscriptions/{now['id']}/cancel",
                           json={"at_period_end": False})  # fmt: skip

    assert at_end["status"] == "active"
    assert at_end["cancel_at_period_end"] is True
    assert at_end["ended_on"] == later["current_period"]["end"]
    assert at_end["next_period_start"] is None
    assert at_once["status"] == "canceled"
    listed = await api.ok("GET", f"/v1/accounts/{account}/subscriptions")
    assert [s["id"] for s in listed["data"]] == [later["id"], now["id"]]


async def test_a_payer_sees_their_own_subscriptions_and_not_anothers(api: Api) -> None:
    mine = await api.account()
    theirs = await api.account()
    plan = await _plan(api)
    subscription = await _subscribe(api, mine, plan, None)
    other = await _subscribe(api, theirs, plan, None)
    payer = await api.payer(mine, "ada@example.com")

    listed = await api.ok("GET", f"/v1/accounts/{mine}/subscriptions", headers=payer)
    assert [s["id"] for s in listed["data"]] == [subscription["id"]]
    for path in (f"/v1/subscriptions/{other['id']}", f"/v1/accounts/{theirs}/subscriptions"):
        code, body, _ = await api.call("GET", path, headers=payer)
        assert code == 404, path
        assert body["error"]["code"] == "resource_missing"
    code, _, _ = await api.call("POST", "/v1/plans", headers=payer, json={
        "name": "x", "amount": 1, "currency": "USD", "interval": "month"})  # fmt: skip
    assert code == 404


@pytest.mark.parametrize(
    ("path", "payload", "status", "param"),
    [
        ("/v1/plans", {"name": "x", "amount": 0, "currency": "USD", "interval": "month"}, 400,
         "amount"),
        ("/v1/plans", {"name": "x", "amount": 1, "currency": "USD", "interval": "week"}, 400,
         "interval"),
        ("/v1/plans", {"name": "x", "amount": 1, "currency": "USD", "interval": "month",
                       "extra": 1}, 400, "extra"),
        ("/v1/accounts/{account}/subscriptions", {"plan": "plan_nope", "autopay": False}, 404,
         "plan"),
        ("/v1/accounts/{account}/subscriptions", {"plan": "{plan}", "autopay": True}, 400,
         "payment_method"),
        ("/v1/accounts/{account}/subscriptions", {"plan": "{plan}", "anchor_day": 32}, 400,
         "anchor_day"),
        ("/v1/accounts/acct_nope/subscriptions", {"plan": "{plan}", "autopay": False}, 404,
         "id"),
        ("/v1/accounts/{account}/subscriptions", {"plan": "{plan}", "payment_method": "pm_x"},
         404, "payment_method"),
    ],
)  # fmt: skip
async def test_bad_billing_requests_get_the_contracts_error_shape(
    api: Api, path: str, payload: dict[str, Any], status: int, param: str
) -> None:
    account = await api.account()
    plan = await _plan(api)
    body = {k: (v.replace("{plan}", plan) if isinstance(v, str) else v)
            for k, v in payload.items()}  # fmt: skip

    code, answer, _ = await api.call("POST", path.replace("{account}", account), json=body)

    assert code == status, answer
    assert answer["error"]["param"] == param
    assert set(answer["error"]) >= {"type", "code", "message"}
