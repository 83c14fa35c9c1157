"""The payer portal's pages through aiohttp's test client on SQLite and PostgreSQL: the
dashboard, paying part of the balance with a hosted-fields token (allocation, receipt,
new balance), one charge for a double submit, declines in plain words, the allocation
preview against the API's, live status over the cookie-authenticated stream, history
filters, saved methods and statements. Harness: ``test_portal_security.portal``."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re
import uuid
from typing import Any

import msgspec
import pytest
from aiohttp import ClientResponse

from .test_portal_security import Portal, _email, portal

__all__ = ["portal"]

READ_TIMEOUT_S = 5.0


async def _signed_in(portal: Portal, **options: Any) -> str:
    email = _email()
    account_id = await portal.payer(email, **options)
    assert (await portal.sign_in(email)).status == 303
    return account_id


async def _pay(portal: Portal, account_id: str, amount: str, *, card: str = "visa",
               key: str | None = None, **extra: str) -> ClientResponse:  # fmt: skip
    token = await portal.token(f"/pay?account={account_id}")
    fields = {"account": account_id, "amount": amount, "method": "card",
              "idempotency_key": key or uuid.uuid4().hex, **extra}  # fmt: skip
    if fields["method"] == "card":
        fields.update(await portal.card_token(card))
    return await portal.post("/pay", fields, token=token)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_the_dashboard_shows_the_balance_open_invoices_and_marks_the_overdue_one(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    response = await portal.client.get("/")
    assert response.status == 200
    text = _text(await response.text())
    assert "You owe 1730.50 USD" in text
    assert "INV-1 Overdue" in text
    assert "INV-2 Overdue" not in text
    assert "No payments yet" in text
    assert account_id in await (await portal.client.get(f"/?account={account_id}")).text()


async def test_paying_part_of_the_balance_with_a_new_card_shows_the_receipt_and_new_balance(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    response = await _pay(portal, account_id, "1,300.00")
    assert response.status == 303
    location = response.headers["Location"]
    assert location.startswith("/payments/pay_")
    page = await portal.client.get(location)
    text = _text(await page.text())
    assert "Paid" in text
    assert "Receipt" in text
    # Oldest first: INV-1 (overdue) in full, the rest to INV-2.
    assert "INV-1 1250.00 USD" in text
    assert "INV-2 50.00 USD" in text
    assert "Balance now: 430.50 USD" in text
    assert "Visa ending in 4242" in text
    charges = portal.api.charges()
    assert [c.amount for c in charges] == [130_000]
    # The card number never reached the portal: only the token and what may be printed.
    methods = await portal.api.ok("GET", f"/v1/accounts/{account_id}/payment_methods",
                                  params={"include_deleted": "true"})  # fmt: skip
    assert [m["last4"] for m in methods["data"]] == ["4242"]


async def test_chosen_invoices_are_paid_first_and_a_double_submit_charges_once(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    invoices = await portal.api.ok("GET", f"/v1/accounts/{account_id}/invoices")
    second = next(i["id"] for i in invoices["data"] if i["number"] == "INV-2")
    key = uuid.uuid4().hex
    token = await portal.token(f"/pay?account={account_id}")
    fields = {"account": account_id, "amount": "480.50", "invoice": second, "method": "card",
              "idempotency_key": key, **(await portal.card_token())}  # fmt: skip
    first, again = await asyncio.gather(
        portal.post("/pay", fields, token=token), portal.post("/pay", fields, token=token)
    )
    locations = {r.headers.get("Location") for r in (first, again) if r.status == 303}
    # Both answered with the one payment, or the second was told it is still in flight.
    assert len(locations) == 1
    assert {first.status, again.status} <= {303, 409}
    replay = await portal.post("/pay", fields, token=token)
    assert replay.status == 303
    assert replay.headers["Location"] in locations
    assert len(portal.api.charges()) == 1
    text = _text(await (await portal.client.get(replay.headers["Location"])).text())
    assert "INV-2 480.50 USD" in text
    assert "INV-1" not in text.split("What went to which invoice")[1]


async def test_a_hard_decline_asks_for_another_payment_method_and_a_soft_one_says_retry(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    hard = await _pay(portal, account_id, "10.00", card="do_not_honor")
    assert hard.status == 303
    text = _text(await (await portal.client.get(hard.headers["Location"])).text())
    assert "Your card was declined" in text
    assert "use another payment method" in text
    assert "without giving a reason" in text
    soft = await _pay(portal, account_id, "10.00", card="insufficient_funds")
    text = _text(await (await portal.client.get(soft.headers["Location"])).text())
    assert "Retry scheduled" in text
    assert "not have enough funds" in text
    dashboard = _text(await (await portal.client.get("/")).text())
    assert "You owe 1730.50 USD" in dashboard


async def test_the_preview_splits_an_amount_as_the_api_would(portal: Portal) -> None:
    account_id = await _signed_in(portal)
    for amount_minor in (1, 125_000, 130_000, 200_000):
        amount = f"{amount_minor // 100}.{amount_minor % 100:02d}"
        mine = await (await portal.client.get(
            "/pay/preview.json", params={"account": account_id, "amount": amount}
        )).json()  # fmt: skip
        api = await portal.api.ok("GET", "/v1/payments/preview_allocation",
                                  params={"account": account_id, "amount": amount_minor})
        assert [(a["invoice"], a["amount"]) for a in mine["allocations"]] == [
            (a["invoice"], a["amount"]) for a in api["allocations"]
        ]
        assert mine["unapplied"] == api["amount_unapplied"]
    bad = await portal.client.get("/pay/preview.json", params={"account": account_id,
                                                               "amount": "12.345"})  # fmt: skip
    assert bad.status == 400
    assert (await bad.json())["error"]["param"] == "amount"


async def test_an_invalid_amount_is_shown_next_to_the_field_and_nothing_is_charged(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    response = await _pay(portal, account_id, "ten dollars")
    assert response.status == 400
    html = await response.text()
    assert 'aria-invalid="true" aria-describedby="amount-error"' in html
    assert 'id="amount-error">Enter an amount' in html
    assert portal.api.charges() == []


async def _next_event(response: ClientResponse) -> dict[str, Any]:
    fields: dict[str, str] = {}
    async with asyncio.timeout(READ_TIMEOUT_S):
        while True:
            line = (await response.content.readline()).decode()
            assert line, "the stream ended"
            line = line.rstrip("\r\n")
            if not line:
                if "data" in fields:
                    return dict(msgspec.json.decode(fields["data"]))
                continue
            if not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value


async def test_the_status_page_streams_the_payments_changes_to_the_signed_in_payer(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    paid = await _pay(portal, account_id, "20.00")
    location = paid.headers["Location"]
    await portal.publisher.run_once()
    stream = await portal.client.get(location + "/events")
    assert stream.status == 200
    assert stream.content_type == "text/event-stream"
    statuses = [(await _next_event(stream))["status"] for _ in range(2)]
    assert statuses == ["processing", "succeeded"]
    stream.close()
    polled = await (await portal.client.get(location + "/status.json")).json()
    assert polled["status"] == "succeeded"
    assert polled["final"] is True
    signed_out = await (await portal.browser()).get(location + "/events")
    assert signed_out.status == 401
    # The dashboard's stream: what happens to the account after the page was rendered.
    dashboard = await (await portal.client.get("/")).text()
    events_url = re.search(r'data-events="(/accounts/[^"]+)"', dashboard)
    assert events_url is not None
    account_stream = await portal.client.get(events_url.group(1).replace("&amp;", "&"))
    assert account_stream.status == 200
    second = await _pay(portal, account_id, "1.00")
    await portal.publisher.run_once()
    seen = [await _next_event(account_stream) for _ in range(2)]
    assert [e["status"] for e in seen] == ["processing", "succeeded"]
    assert {e["payment"] for e in seen} == {second.headers["Location"].rsplit("/", 1)[1]}
    account_stream.close()


async def test_history_filters_by_status_and_invoice_and_links_receipts(portal: Portal) -> None:
    account_id = await _signed_in(portal)
    await _pay(portal, account_id, "1250.00")  # INV-1
    await _pay(portal, account_id, "5.00", card="do_not_honor")
    await _pay(portal, account_id, "30.00")  # INV-2
    everything = await (await portal.client.get("/payments")).text()
    assert everything.count("data-payment=") == 3
    paid = await (await portal.client.get("/payments", params={"status": "succeeded"})).text()
    assert paid.count("data-payment=") == 2
    inv2 = await (await portal.client.get("/payments", params={"invoice": "INV-2"})).text()
    assert inv2.count("data-payment=") == 1
    assert "30.00 USD" in inv2
    bad = await portal.client.get("/payments", params={"from": "yesterday"})
    assert 'id="from-error"' in await bad.text()
    future = await (await portal.client.get("/payments", params={"from": "2999-01-01"})).text()
    assert "No payments match" in future


async def test_saved_methods_can_be_added_made_default_used_and_removed(portal: Portal) -> None:
    account_id = await _signed_in(portal)
    for card in ("visa", "mastercard"):
        token = await portal.token(f"/methods?account={account_id}")
        added = await portal.post("/methods", {"account": account_id,
                                               **(await portal.card_token(card))}, token=token)
        assert added.status == 303
    page = await (await portal.client.get(f"/methods?account={account_id}")).text()
    cards = dict(re.findall(r'data-method="(pm_[^"]+)">\s*<p><strong>(\w+)', page))
    assert sorted(cards.values()) == ["Mastercard", "Visa"]
    assert re.search(r"Visa ending in 4242</strong> <span[^>]*>Default<", page)  # the first
    ids = sorted(cards, key=lambda i: cards[i] == "Mastercard")  # Visa, then Mastercard
    token = await portal.token(f"/methods?account={account_id}")
    assert (await portal.post(f"/methods/{ids[1]}/default", {}, token=token)).status == 303
    pay_page = await (await portal.client.get(f"/pay?account={account_id}")).text()
    assert re.search(rf'value="{ids[1]}" checked', pay_page)
    paid = await _pay(portal, account_id, "15.00", method=ids[1])
    assert paid.status == 303
    assert "Mastercard ending in 4444" in _text(await (await portal.client.get(
        paid.headers["Location"])).text())  # fmt: skip
    token = await portal.token(f"/methods?account={account_id}")
    assert (await portal.post(f"/methods/{ids[1]}/remove", {}, token=token)).status == 303
    page = await (await portal.client.get(f"/methods?account={account_id}")).text()
    assert re.findall(r'data-method="(pm_[^"]+)"', page) == [ids[0]]
    reuse = await _pay(portal, account_id, "15.00", method=ids[1])
    assert reuse.status == 400
    assert "Choose how to pay" in await reuse.text()


async def test_statements_download_as_pdf_and_csv_with_the_ledgers_totals(portal: Portal) -> None:
    account_id = await _signed_in(portal)
    await _pay(portal, account_id, "100.00")
    page = await portal.client.get(f"/statements?account={account_id}")
    assert page.status == 200
    text = _text(await page.text())
    assert "Closing balance 1630.50 USD" in text
    assert "Payments 100.00 USD" in text
    pdf = await portal.client.get("/statements/download",
                                  params={"account": account_id, "format": "pdf"})  # fmt: skip
    assert pdf.status == 200
    assert pdf.content_type == "application/pdf"
    assert (await pdf.read()).startswith(b"%PDF")
    assert "attachment" in pdf.headers["Content-Disposition"]
    sheet = await portal.client.get("/statements/download",
                                    params={"account": account_id, "format": "csv"})  # fmt: skip
    assert sheet.status == 200
    rows = list(csv.reader(io.StringIO(await sheet.text())))
    assert any("100.00" in cell or "10000" in cell for row in rows for cell in row)
    bad = await portal.client.get(f"/statements?account={account_id}&from=2026-02-01&to=2026-01-01")
    assert bad.status == 400
    assert 'id="to-error"' in await bad.text()


async def test_autopay_is_turned_off_and_on_for_the_accounts_subscriptions(portal: Portal) -> None:
    account_id = await _signed_in(portal)
    page = await (await portal.client.get(f"/methods?account={account_id}")).text()
    assert "no subscriptions to pay automatically" in page
    plan = await portal.api.ok("POST", "/v1/plans", json={
        "name": "Support", "amount": 9_900, "currency": "USD", "interval": "month",
    })  # fmt: skip
    await portal.api.ok("POST", f"/v1/accounts/{account_id}/subscriptions",
                        json={"plan": plan["id"], "autopay": False})  # fmt: skip
    page = await (await portal.client.get(f"/methods?account={account_id}")).text()
    assert 'data-autopay>off<' in page
    token = await portal.token(f"/methods?account={account_id}")
    response = await portal.post("/autopay", {"account": account_id, "enabled": "yes"},
                                 token=token)  # fmt: skip
    assert response.status == 303
    page = await (await portal.client.get(response.headers["Location"])).text()
    assert 'data-autopay>on<' in page
    assert "Autopay is on." in page
    subscriptions = await portal.api.ok("GET", f"/v1/accounts/{account_id}/subscriptions")
    assert [s["autopay"] for s in subscriptions["data"]] == [True]
    token = await portal.token(f"/methods?account={account_id}")
    await portal.post("/autopay", {"account": account_id, "enabled": "no"}, token=token)
    subscriptions = await portal.api.ok("GET", f"/v1/accounts/{account_id}/subscriptions")
    assert [s["autopay"] for s in subscriptions["data"]] == [False]


async def test_a_wallet_token_pays_and_the_receipt_names_the_wallet(portal: Portal) -> None:
    account_id = await _signed_in(portal)
    async with portal.client.session.post(f"{portal.sandbox_url}/v1/tokens", json={
        "type": "wallet", "wallet": "apple_pay", "card_number": "4242424242424242",
    }) as response:  # fmt: skip
        wallet = await response.json()
    token = await portal.token(f"/pay?account={account_id}")
    paid = await portal.post("/pay", {
        "account": account_id, "amount": "12.00", "method": "wallet", "wallet": "apple_pay",
        "idempotency_key": uuid.uuid4().hex,
        **{k: str(wallet[k]) for k in ("token", "brand", "last4", "exp_month", "exp_year")},
    }, token=token)  # fmt: skip
    assert paid.status == 303
    text = _text(await (await portal.client.get(paid.headers["Location"])).text())
    assert "Apple Pay (Visa ending in 4242)" in text
    assert "Paid" in text
    methods = await portal.api.ok("GET", f"/v1/accounts/{account_id}/payment_methods")
    assert methods["data"] == []  # a wallet payment keeps nothing for reuse


async def test_the_pages_streams_refuse_a_last_event_id_that_is_no_event_id(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    location = (await _pay(portal, account_id, "20.00")).headers["Location"]
    await portal.publisher.run_once()
    for path in (location + "/events", f"/accounts/{account_id}/events"):
        for value in ("9999999999999999999", "9223372036854775808", "²", "-1"):
            response = await portal.client.get(path, headers={"Last-Event-ID": value})
            assert response.status == 400, (path, value, response.content_type)
            error = (await response.json())["error"]
            assert (error["code"], error["param"]) == ("parameter_invalid", "Last-Event-ID")
        # ``after`` comes from the page itself: one that is no id is ignored, not a failure.
        for after in ("9999999999999999999", "²"):
            stream = await portal.client.get(path, params={"after": after})
            assert stream.status == 200, (path, after)
            assert stream.content_type == "text/event-stream"
            stream.close()


async def test_a_chosen_invoice_that_is_not_the_accounts_is_refused_and_nothing_is_paid(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    other = await portal.api.account()
    foreign = await portal.api.invoice(other, 1_000, dt.date(2026, 1, 1))

    for chosen in (foreign, "inv_0_0\x00", "not-an-invoice"):
        response = await _pay(portal, account_id, "10.00", invoice=chosen)
        assert response.status == 400, (chosen, response.status)
        assert "This form is out of date" in await response.text()
    payments = await portal.api.ok("GET", "/v1/payments", params={"account": account_id})
    assert payments["data"] == []


@pytest.mark.parametrize(("field", "value"), [
    ("brand", "vi\x00sa"), ("brand", "vi\u2028sa"), ("token", "tok_a\nbc"), ("last4", "42424"),
    ("exp_month", "1\x0b2"), ("exp_year", "20300"), ("brand", "v" * 33),
    # A saved method's id with a NUL failed the PostgreSQL query: a 500.
    ("method", "pm_x\x00y"),
])  # fmt: skip
async def test_card_facts_that_are_not_the_hosted_fields_are_refused_and_nothing_is_paid(
    portal: Portal, field: str, value: str
) -> None:
    account_id = await _signed_in(portal)
    token = await portal.token(f"/pay?account={account_id}")
    fields = {"account": account_id, "amount": "10.00", "method": "card",
              "idempotency_key": uuid.uuid4().hex, **await portal.card_token()}  # fmt: skip

    response = await portal.post("/pay", {**fields, field: value}, token=token)

    assert response.status == 400, (field, response.status)
    payments = await portal.api.ok("GET", "/v1/payments", params={"account": account_id})
    assert payments["data"] == []
    methods = await portal.api.ok("GET", f"/v1/accounts/{account_id}/payment_methods",
                                  params={"include_deleted": "true"})  # fmt: skip
    assert methods["data"] == []


async def test_an_autopay_choice_that_is_neither_yes_nor_no_is_refused(portal: Portal) -> None:
    account_id = await _signed_in(portal)
    token = await portal.token(f"/methods?account={account_id}")

    response = await portal.post("/autopay", {"account": account_id, "enabled": "maybe"},
                                 token=token)  # fmt: skip

    assert response.status == 400


async def test_a_refused_payment_form_stores_not_even_its_new_card(portal: Portal) -> None:
    account_id = await _signed_in(portal)

    refused = [await _pay(portal, account_id, "ten dollars"),
               # The API refuses such a key; the page used to after storing the card.
               await _pay(portal, account_id, "10.00", key=f"{uuid.uuid4().hex}\x00")]

    assert [response.status for response in refused] == [400, 400]
    methods = await portal.api.ok("GET", f"/v1/accounts/{account_id}/payment_methods",
                                  params={"include_deleted": "true"})  # fmt: skip
    assert methods["data"] == []


# -- 3-D Secure --------------------------------------------------------------------------------


async def _forward_callbacks(portal: Portal) -> None:
    """The sandbox here sends no callbacks: deliver the ones it recorded, signed, as its
    sender would (the status page moves on the challenge's callback alone)."""
    from standardwebhooks.webhooks import Webhook

    from .api_harness import SECRET

    for event in portal.api.sandbox.callbacks.events:
        at = dt.datetime.now(dt.UTC)
        headers = {"content-type": "application/json", "webhook-id": event.id,
                   "webhook-timestamp": str(int(at.timestamp())),
                   "webhook-signature": Webhook(SECRET).sign(event.id, at, event.body.decode())}
        response = await portal.client.post("/v1/processors/sandbox/callbacks",
                                            data=event.body, headers=headers)  # fmt: skip
        assert response.status == 200, await response.text()


def _challenge_url(html: str) -> str:
    match = re.search(r'<iframe[^>]*data-challenge-frame src="([^"]+)"', html)
    assert match is not None, _text(html)
    return match.group(1)


async def _answer(portal: Portal, url: str, result: str) -> None:
    """The payer's press inside the bank's frame: a form post to the processor's origin."""
    async with portal.client.session.post(url, data={"result": result}) as answer:
        assert answer.status == 200
        assert "Authentication" in await answer.text()


async def test_a_payment_that_needs_3ds_frames_the_banks_challenge_then_reads_paid(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    response = await _pay(portal, account_id, "25.00", card="sca_always")
    assert response.status == 303
    location = response.headers["Location"]
    page = await portal.client.get(location)
    html = await page.text()
    text = _text(html)
    assert "Confirm this payment with your bank" in text
    assert "Needs your confirmation" in text
    url = _challenge_url(html)
    # The bank's page is the processor's, on its origin, and the CSP lets the page frame it.
    assert url.startswith(f"{portal.sandbox_url}/v1/challenges/chl_")
    assert f"frame-src {portal.sandbox_url}" in page.headers["Content-Security-Policy"]
    assert 'title="Your bank\'s confirmation page"' in html
    polled = await (await portal.client.get(location + "/status.json")).json()
    assert polled["status"] == "requires_action"
    assert polled["final"] is False

    await _answer(portal, url, "complete")
    await _forward_callbacks(portal)
    text = _text(await (await portal.client.get(location)).text())
    assert "Paid" in text
    assert "Confirm this payment with your bank" not in text
    assert [c.status for c in portal.api.charges()] == ["succeeded"]


async def test_a_failed_challenge_reads_as_a_decline_in_plain_words(portal: Portal) -> None:
    account_id = await _signed_in(portal)
    response = await _pay(portal, account_id, "25.00", card="sca_unless_set_up")
    location = response.headers["Location"]
    await _answer(portal, _challenge_url(await (await portal.client.get(location)).text()),
                  "fail")  # fmt: skip
    await _forward_callbacks(portal)
    text = _text(await (await portal.client.get(location)).text())
    assert "Your card was declined" in text
    assert "confirmation step was not completed" in text
    assert "No money was taken" in text


async def _autopay_waiting_for_the_payer(portal: Portal, account_id: str) -> str:
    """A merchant-initiated payment (as autopay creates) whose off-session attempt the
    issuer declines ``authentication_required``."""
    from payportal.engine import Allocation, CreatePayment, Initiator, PaymentMethodRef
    from payportal.http import ids
    from payportal.http.typedefs import GATEWAY, ROUTER

    method_id = await portal.api.payment_method(account_id, card="sca_unless_set_up")
    app = portal.client.server.app
    invoices = await portal.api.ok("GET", f"/v1/accounts/{account_id}/invoices")
    first = next(i["id"] for i in invoices["data"] if i["number"] == "INV-1")
    payment_id = ids.child_id("pay", account_id)
    reply = await app[ROUTER].submit(CreatePayment(
        account_id=account_id, payment_id=payment_id,
        attempt_id=ids.child_id("att", account_id), idempotency_key=uuid.uuid4().hex,
        amount_minor=125_000, currency="USD",
        payment_method=PaymentMethodRef(id=method_id, brand="visa", kind="card"),
        allocations=(Allocation(invoice_id=first, amount_minor=125_000),),
        initiator=Initiator.merchant,
    ))  # fmt: skip
    reply = await app[GATEWAY].charge_attempt(reply, account_id)
    assert reply.payment is not None
    assert reply.payment.status.value == "requires_action"
    return payment_id


async def test_a_payment_waiting_for_the_payer_shows_a_banner_and_confirm_opens_the_challenge(
    portal: Portal,
) -> None:
    account_id = await _signed_in(portal)
    payment_id = await _autopay_waiting_for_the_payer(portal, account_id)
    dashboard = await (await portal.client.get("/")).text()
    assert "A payment needs you to confirm it" in _text(dashboard)
    assert f'href="/payments/{payment_id}" data-confirm-link' in dashboard
    page = await portal.client.get(f"/payments/{payment_id}")
    html = await page.text()
    assert "Your bank asks you to confirm this payment" in _text(html)
    assert "data-challenge-frame" not in html
    # Confirm is a state change: refused without this browser's CSRF token.
    forged = await portal.client.post(f"/payments/{payment_id}/confirm",
                                      data={"csrf_token": "x"}, allow_redirects=False)
    assert forged.status == 403
    assert len(portal.api.charges()) == 1
    token = await portal.token(f"/payments/{payment_id}")
    confirmed, twice = await asyncio.gather(
        portal.post(f"/payments/{payment_id}/confirm", {}, token=token),
        portal.post(f"/payments/{payment_id}/confirm", {}, token=token),
    )
    assert confirmed.status == twice.status == 303
    assert confirmed.headers["Location"] == f"/payments/{payment_id}"
    # One on-session attempt, however many presses: its challenge is on the page.
    assert len(portal.api.charges()) == 2
    html = await (await portal.client.get(f"/payments/{payment_id}")).text()
    url = _challenge_url(html)
    await _answer(portal, url, "complete")
    await _forward_callbacks(portal)
    text = _text(await (await portal.client.get(f"/payments/{payment_id}")).text())
    assert "Paid" in text
    dashboard = _text(await (await portal.client.get("/")).text())
    assert "A payment needs you to confirm it" not in dashboard
    assert "You owe 480.50 USD" in dashboard
