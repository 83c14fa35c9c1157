"""GET /v1/accounts/{id}/statement over HTTP: its three formats agree with the account's
balance, a payment or refund shows in the statement as soon as it is acknowledged (with
a new version), who may read it, every wrong parameter is a 400 in the contract's shape,
and no card number, token or key reaches it. Driven through the in-process API harness
(real store, shards and sandbox processor) on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zlib
from decimal import Decimal
from typing import Any

from .api_harness import CARDS, Api


def pdf_text(pdf: bytes) -> str:
    """The text shown by a PDF of the core fonts: every ``(...) Tj`` of its streams."""
    shown: list[str] = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            data = zlib.decompress(match.group(1))
        except zlib.error:
            continue
        for text in re.findall(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj", data):
            shown.append(re.sub(rb"\\(.)", rb"\1", text).decode("latin-1"))
    return "\n".join(shown)


async def _statement(api: Api, account_id: str, headers: dict[str, str] | None = None,
                     **params: str) -> tuple[int, Any, bytes, Any]:  # fmt: skip
    response = await api.client.get(
        f"/v1/accounts/{account_id}/statement", params=params,
        headers=headers if headers is not None else api.merchant,
    )  # fmt: skip
    raw = await response.read()
    body = await response.json() if response.content_type == "application/json" else None
    return response.status, body, raw, response.headers


async def _history(api: Api) -> tuple[str, str, str]:
    """An account with two invoices, an overpayment (so credit) and a partial refund."""
    account_id = await api.account()
    first = await api.invoice(account_id, 10_000, dt.date(2026, 1, 31), number="INV-1")
    await api.invoice(account_id, 5_000, dt.date(2026, 2, 28), number="=HYPERLINK(1)")
    method = await api.payment_method(account_id)
    status, payment, _ = await api.pay(account_id, 17_500, method)
    assert status == 200, payment
    assert payment["status"] == "succeeded", payment
    return account_id, first, payment["id"]


async def test_json_csv_and_pdf_agree_with_the_account_balance(api: Api) -> None:
    account_id, first_invoice, payment_id = await _history(api)
    account = await api.ok("GET", f"/v1/accounts/{account_id}")

    status, body, _, headers = await _statement(api, account_id, format="json")

    assert status == 200, body
    closing = body["closing_balance"]
    assert closing["outstanding"] == account["balance"]["outstanding"] == 0
    assert closing["credit"] == account["balance"]["credit"] == 2_500
    assert closing["balance"] == -2_500
    assert body["opening_balance"] == {"outstanding": 0, "credit": 0, "balance": 0}
    totals = body["totals"]
    assert (totals["invoiced"], totals["payments"], totals["credit_created"]) == (
        15_000, 17_500, 2_500,
    )  # fmt: skip
    allocations = {
        line["invoice"]: line["amount"] for line in body["lines"] if line["kind"] == "allocation"
    }
    assert allocations[first_invoice] == 10_000
    assert sum(allocations.values()) == 15_000
    assert all(line["payment"] == payment_id for line in body["lines"]
               if line["kind"] in ("payment", "allocation"))  # fmt: skip
    assert headers["Statement-Version"] == str(body["version"]) == "3"
    assert headers["Statement-Complete"] == "true"
    assert headers["Cache-Control"] == "no-store"
    assert body["ledger"]["closing"]["customer_credit"] == -2_500

    status, _, raw, headers = await _statement(api, account_id, format="csv")
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    day = r"\d{4}-\d\d-\d\d"
    assert re.fullmatch(
        rf'attachment; filename="statement-{account_id}-{day}-{day}-v3.csv"',
        headers["Content-Disposition"],
    ), headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    closing_row = next(r for r in rows if r["row_type"] == "closing")
    assert Decimal(closing_row["credit"]) == Decimal("25.00")
    assert Decimal(closing_row["balance"]) == Decimal("-25.00")
    references = {r["reference"] for r in rows if r["row_type"] == "line"}
    assert "'=HYPERLINK(1)" in references
    assert "=HYPERLINK(1)" not in references

    status, _, raw, headers = await _statement(api, account_id)  # PDF by default
    assert status == 200
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"].endswith('-v3.pdf"')
    assert raw.startswith(b"%PDF-")
    assert raw.rstrip().endswith(b"%%EOF")
    text = pdf_text(raw)
    assert "Closing balance" in text
    assert "-25.00" in text
    assert "175.00" in text  # the payment
    assert "Statement version" in text


async def test_a_payment_and_a_refund_are_in_the_statement_once_acknowledged(api: Api) -> None:
    account_id = await api.account()
    await api.invoice(account_id, 8_000, dt.date(2026, 3, 1))
    method = await api.payment_method(account_id)
    _, before, _, _ = await _statement(api, account_id, format="json")

    status, payment, _ = await api.pay(account_id, 3_000, method)
    assert status == 200, payment
    _, after_payment, _, _ = await _statement(api, account_id, format="json")
    refund = await api.ok(
        "POST", f"/v1/payments/{payment['id']}/refunds", json={"amount": 1_000},
        headers={**api.merchant, "Idempotency-Key": "refund-1"},
    )  # fmt: skip
    _, after_refund, _, _ = await _statement(api, account_id, format="json")

    assert after_payment["version"] == before["version"] + 1
    assert after_refund["version"] == after_payment["version"] + 1
    paid = [line for line in after_payment["lines"] if line["kind"] == "payment"]
    assert [(line["payment"], line["amount"]) for line in paid] == [(payment["id"], 3_000)]
    assert after_payment["closing_balance"]["outstanding"] == 5_000
    refunds = [line for line in after_refund["lines"] if line["kind"] == "refund"]
    assert [(line["refund"], line["amount"]) for line in refunds] == [(refund["id"], 1_000)]
    assert after_refund["totals"]["refunds"] == 1_000
    account = await api.ok("GET", f"/v1/accounts/{account_id}")
    assert after_refund["closing_balance"]["outstanding"] == account["balance"]["outstanding"]
    assert after_refund["closing_balance"]["credit"] == account["balance"]["credit"]


async def test_payers_see_only_their_own_accounts_statements(api: Api) -> None:
    mine = await api.account()
    theirs = await api.account()
    payer = await api.payer(mine, "owner@example.com")

    status, body, _, _ = await _statement(api, mine, payer, format="json")
    assert status == 200, body
    assert body["account"] == mine

    for account_id in (theirs, "acct_does_not_exist"):
        status, body, _, _ = await _statement(api, account_id, payer, format="json")
        assert status == 404, body
        assert body["error"]["code"] == "resource_missing"
    status, body, _, _ = await _statement(api, "acct_does_not_exist", format="json")
    assert status == 404, body
    status, body, _, _ = await _statement(api, mine, {}, format="json")
    assert status == 401, body
    assert body["error"]["type"] == "authentication_error"


async def test_wrong_parameters_are_400_naming_the_parameter(api: Api) -> None:
    account_id = await api.account()
    cases = [
        ({"format": "xls"}, "format"),
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-02-01", "to": "2026-01-31"}, "from"),
        ({"month": "1"}, "month"),
    ]
    for params, param in cases:
        status, body, _, _ = await _statement(api, account_id, **params)
        assert status == 400, (params, body)
        assert body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["code"] == "parameter_invalid", body
        assert body["error"]["param"] == param, (params, body)


async def test_a_period_slices_the_history_and_days_are_inclusive(api: Api) -> None:
    account_id, _, _ = await _history(api)
    today = dt.datetime.now(dt.UTC).date()
    day = dt.timedelta(days=1)

    _, earlier, _, _ = await _statement(
        api, account_id, format="json", **{"from": "2020-01-01", "to": str(today - day)}
    )
    _, later, _, _ = await _statement(
        api, account_id, format="json", **{"from": str(today), "to": str(today + day)}
    )

    # Everything happened today (UTC) unless the test ran across midnight.
    if earlier["lines"]:
        return
    assert earlier["closing_balance"] == earlier["opening_balance"]
    assert later["opening_balance"] == earlier["closing_balance"]
    assert later["period"] == {"start": str(today), "end": str(today + day)}
    assert later["closing_balance"]["credit"] == 2_500


async def test_no_card_number_token_or_key_in_any_format(api: Api) -> None:
    account_id = await api.account()
    await api.invoice(account_id, 4_000, dt.date(2026, 1, 31))
    token = await api.processor.tokenize_test_card(CARDS["visa"])
    method = await api.ok(
        "POST", f"/v1/accounts/{account_id}/payment_methods",
        json={"token": token, "brand": "visa", "last4": "4242"},
    )  # fmt: skip
    status, payment, _ = await api.pay(account_id, 4_000, method["id"])
    assert status == 200, payment
    secrets = [CARDS["visa"], token, api.merchant["Authorization"].removeprefix("Bearer ")]

    for fmt in ("json", "csv", "pdf"):
        status, _, raw, _ = await _statement(api, account_id, format=fmt)
        assert status == 200
        shown = pdf_text(raw) if fmt == "pdf" else raw.decode()
        assert "40.00" in shown or "4000" in shown, fmt
        for secret in secrets:
            assert secret not in shown, (fmt, secret[:6])
            assert secret.encode() not in raw, (fmt, secret[:6])
