"""An invoice's and a payment's ``description`` is kept and shown wherever a person reads
it: the API's answers and lists, the portal's dashboard, pay page, receipt and history,
the merchant console, the statement in JSON, CSV and PDF, and the payment's confirmation
email, always escaped; a description that is too long or holds a control character is a
400 in the contract's shape, and a replay with another description a 422. Through the
portal harness (API and pages in one app) on SQLite and PostgreSQL, with the real outbox
sender and an aiosmtpd catcher for the email."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from payportal.mail.catcher import MailCatcher, start_catcher
from payportal.mail.sender import OutboxSender, SmtpTarget, message_id_for

from .test_portal_security import SHARDS, Portal, _email, portal
from .test_statement_api import pdf_text
from .web_client import csrf_token

__all__ = ["portal"]

# Markup, quotes and an ampersand: each view must show them as text, never as markup.
INVOICE_TEXT = 'Consulting <b>January</b> & "extras"'
PAYMENT_TEXT = "Deposit <script>alert(1)</script> for order #42"
INVOICE_ESCAPED = "Consulting &lt;b&gt;January&lt;/b&gt; &amp; "
PAYMENT_ESCAPED = "Deposit &lt;script&gt;alert(1)&lt;/script&gt; for order #42"


@pytest.fixture
async def catcher() -> AsyncIterator[MailCatcher]:
    catcher = await start_catcher(smtp_port=0, ui_port=0)
    try:
        yield catcher
    finally:
        await catcher.close()


async def _project(portal: Portal) -> None:
    for shard_id in range(SHARDS):
        await portal.store.project_pending(shard_id)


async def _invoice(portal: Portal, account_id: str, description: Any) -> tuple[int, Any]:
    status, body, _ = await portal.api.call("POST", f"/v1/accounts/{account_id}/invoices", json={
        "amount": 12_000, "due_date": "2026-01-31", "number": f"INV-{uuid.uuid4().hex[:6]}",
        "description": description,
    })  # fmt: skip
    return status, body


async def _pay(portal: Portal, account_id: str, description: Any, key: str | None = None,
               method: str | None = None) -> tuple[int, Any]:  # fmt: skip
    api = portal.api
    method = method or await api.payment_method(account_id)
    status, body, _ = await api.pay(account_id, 5_000, method, key=key, description=description)
    return status, body


def _error(status: int, body: Any) -> tuple[int, str, str, str | None]:
    error = body["error"]
    return status, error["type"], error["code"], error.get("param")


async def test_descriptions_are_kept_and_returned_by_the_api(portal: Portal) -> None:
    api = portal.api
    account_id = await api.account()
    status, invoice = await _invoice(portal, account_id, INVOICE_TEXT)
    assert status == 200, invoice
    assert invoice["description"] == INVOICE_TEXT
    status, payment = await _pay(portal, account_id, PAYMENT_TEXT)
    assert status == 200, payment
    assert payment["description"] == PAYMENT_TEXT
    _, plain = await _invoice(portal, account_id, None)
    assert plain["description"] is None
    _, empty = await _invoice(portal, account_id, "")
    assert empty["description"] is None  # nothing to show is none
    await _project(portal)

    assert (await api.ok("GET", f"/v1/payments/{payment['id']}"))["description"] == PAYMENT_TEXT
    invoices = await api.ok("GET", f"/v1/accounts/{account_id}/invoices", params={"limit": 10})
    assert {i["id"]: i["description"] for i in invoices["data"]} == {
        invoice["id"]: INVOICE_TEXT, plain["id"]: None, empty["id"]: None,
    }  # fmt: skip
    payments = await api.ok("GET", "/v1/payments", params={"account": account_id})
    assert [p["description"] for p in payments["data"]] == [PAYMENT_TEXT]


async def test_a_description_too_long_or_with_control_characters_is_a_400(
    portal: Portal,
) -> None:
    account_id = await portal.api.account()
    for bad in ("x" * 501, "line one\nline two", "tab\there", "bell\x07", "nul\x00",
                "c1 \x85 next line", "trailing\n"):  # fmt: skip
        status, body = await _invoice(portal, account_id, bad)
        assert _error(status, body) == (
            400, "invalid_request_error", "parameter_invalid", "description"), (bad, body)
        status, body = await _pay(portal, account_id, bad)
        assert _error(status, body) == (
            400, "invalid_request_error", "parameter_invalid", "description"), (bad, body)
    status, body = await _invoice(portal, account_id, 42)
    assert _error(status, body)[:3] == (400, "invalid_request_error", "parameter_invalid")
    # The longest there may be, in any script, is kept whole.
    longest = "é" * 250 + "日" * 250
    status, invoice = await _invoice(portal, account_id, longest)
    assert status == 200, invoice
    assert invoice["description"] == longest
    # Nothing was charged for the refused payments.
    await _project(portal)
    payments = await portal.api.ok("GET", "/v1/payments", params={"account": account_id})
    assert payments["data"] == []


async def test_a_payment_replayed_with_another_description_is_refused(portal: Portal) -> None:
    account_id = await portal.api.account()
    method = await portal.api.payment_method(account_id)
    key = uuid.uuid4().hex
    status, first = await _pay(portal, account_id, "first words", key=key, method=method)
    assert status == 200, first
    status, again = await _pay(portal, account_id, "first words", key=key, method=method)
    assert (status, again["id"]) == (200, first["id"])
    status, other = await _pay(portal, account_id, "other words", key=key, method=method)
    assert status == 422, other
    assert other["error"]["code"] == "idempotency_key_reused"


async def test_pages_console_statements_and_email_show_the_descriptions_escaped(
    portal: Portal, catcher: MailCatcher,
) -> None:
    api = portal.api
    email = _email()
    account_id = await api.account()
    status, invoice = await _invoice(portal, account_id, INVOICE_TEXT)
    assert status == 200, invoice
    await api.ok("POST", f"/v1/accounts/{account_id}/payers",
                 json={"email": email, "password": "correct horse battery"})  # fmt: skip
    status, payment = await _pay(portal, account_id, PAYMENT_TEXT)
    assert status == 200, payment
    assert payment["status"] == "succeeded"
    await api.invoice(account_id, 3_000, dt.date(2026, 3, 31))  # still open after the payment
    await _project(portal)
    assert (await portal.sign_in(email)).status == 303

    for path in (f"/?account={account_id}", f"/pay?account={account_id}"):
        page = await (await portal.client.get(path)).text()
        assert INVOICE_ESCAPED in page, path
        assert "<b>January</b>" not in page, path
    for path in (f"/?account={account_id}", f"/payments/{payment['id']}",
                 f"/payments?account={account_id}"):  # fmt: skip
        page = await (await portal.client.get(path)).text()
        assert PAYMENT_ESCAPED in page, path
        assert "<script>alert(1)" not in page, path

    console = await portal.browser()
    token = await csrf_token(console, "/console/signin")
    signed = await console.post("/console/signin", data={
        "csrf_token": token, "api_key": api.merchant["Authorization"].removeprefix("Bearer ")},
        allow_redirects=False)  # fmt: skip
    assert signed.status == 303
    listed = await (await console.get("/console/payments")).text()
    assert PAYMENT_ESCAPED in listed
    assert "<script>alert(1)" not in listed

    statement = f"/v1/accounts/{account_id}/statement"
    shown = json.dumps(await api.ok("GET", statement, params={"format": "json"}))
    assert json.dumps(INVOICE_TEXT)[1:-1] in shown
    assert json.dumps(PAYMENT_TEXT)[1:-1] in shown
    sheet = await api.client.get(statement, params={"format": "csv"}, headers=api.merchant)
    cells = [cell for row in csv.reader(io.StringIO(await sheet.text())) for cell in row]
    assert any(cell.endswith(f": {INVOICE_TEXT}") for cell in cells), cells
    assert any(cell.endswith(f": {PAYMENT_TEXT}") for cell in cells), cells
    pdf = await api.client.get(statement, params={"format": "pdf"}, headers=api.merchant)
    # Wrapped to the description column: one text run per line.
    text = " ".join(pdf_text(await pdf.read()).split())
    assert "Consulting <b>January</b>" in text, text
    assert "Deposit <script>alert(1)</script>" in text, text

    sender = OutboxSender(portal.store.engine, smtp=SmtpTarget(
        hostname="127.0.0.1", port=catcher.smtp_port), base_url="https://portal.example.test")
    wanted = message_id_for(f"payment_succeeded:{payment['id']}")
    for _ in range(50):
        await _project(portal)
        await sender.run_once()
        if any(m.message_id == wanted for m in catcher.inbox.list()):
            break
        await asyncio.sleep(0.05)
    [message] = [m for m in catcher.inbox.list() if m.message_id == wanted]
    assert f"For: {PAYMENT_TEXT}" in message.text
    assert PAYMENT_ESCAPED in message.html
    assert "<script>alert(1)" not in message.html
