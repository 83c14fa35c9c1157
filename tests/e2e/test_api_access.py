"""Who may see what: merchants by API key, payers by session token, and another
principal's object answered 404 on every route — checked with a matrix of every route
that names an object, called by a payer who does not own it, plus the request-id,
error-shape and logout-free session rules."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from yarl import URL

from .api_harness import Api


async def _world(api: Api) -> dict[str, Any]:
    """Two accounts with a payer each; objects of every kind on the second account."""
    mine, theirs = await api.account(), await api.account()
    me = await api.payer(mine, "me@example.com")
    them = await api.payer(theirs, "them@example.com")
    invoice = await api.invoice(theirs, 1_000, dt.date(2026, 1, 1))
    method = await api.payment_method(theirs)
    _, payment, _ = await api.pay(theirs, 500, method)
    return {"mine": mine, "theirs": theirs, "me": me, "them": them, "invoice": invoice,
            "method": method, "payment": payment["id"]}  # fmt: skip


def _routes(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None, dict[str, Any]]]:
    """(method, path, json, params) of every route that names one of ``theirs``'s objects."""
    theirs = w["theirs"]
    return [
        ("GET", f"/v1/accounts/{theirs}", None, {}),
        ("GET", f"/v1/accounts/{theirs}/invoices", None, {}),
        ("POST", f"/v1/accounts/{theirs}/invoices", {"amount": 1, "due_date": "2026-01-01"}, {}),
        ("POST", f"/v1/invoices/{w['invoice']}/void", None, {}),
        ("POST", f"/v1/accounts/{theirs}/payers", {"email": "x@example.com"}, {}),
        ("POST", f"/v1/accounts/{theirs}/payment_methods", {"token": "tok_x"}, {}),
        ("GET", f"/v1/accounts/{theirs}/payment_methods", None, {}),
        ("GET", f"/v1/payment_methods/{w['method']}", None, {}),
        ("DELETE", f"/v1/payment_methods/{w['method']}", None, {}),
        ("GET", "/v1/payments/preview_allocation", None, {"account": theirs, "amount": 10}),
        ("POST", "/v1/payments", {"account": theirs, "amount": 10, "currency": "USD",
                                  "payment_method": w["method"]}, {}),
        ("GET", "/v1/payments", None, {"account": theirs}),
        ("GET", f"/v1/payments/{w['payment']}", None, {}),
        ("POST", f"/v1/payments/{w['payment']}/cancel", None, {}),
        ("POST", f"/v1/payments/{w['payment']}/refunds", {"amount": 1}, {}),
    ]  # fmt: skip


async def test_another_payers_objects_are_404_on_every_route(api: Api) -> None:
    w = await _world(api)
    charges_before = len(api.charges())

    for method, path, body, params in _routes(w):
        headers = {**w["me"], "Idempotency-Key": f"matrix-{method}-{path}"}
        status, answer, _ = await api.call(method, path, headers=headers, json=body,
                                           params=params)  # fmt: skip
        assert status == 404, (method, path, status, answer)
        assert answer["error"]["code"] == "resource_missing", (method, path)

    assert len(api.charges()) == charges_before
    # ...and nothing changed: the owner still sees the same objects.
    owner_view = await api.ok("GET", f"/v1/payments/{w['payment']}", headers=w["them"])
    assert owner_view["status"] == "succeeded"
    method_view = await api.ok("GET", f"/v1/payment_methods/{w['method']}")
    assert method_view["deleted"] is False


async def test_a_payer_reads_and_pays_their_own_account_but_cannot_invoice_or_refund(
    api: Api,
) -> None:
    account = await api.account()
    me = await api.payer(account, "payer@example.com")
    await api.invoice(account, 1_000, dt.date(2026, 1, 1))
    method = await api.payment_method(account, headers=me)

    listed = await api.ok("GET", "/v1/payer/accounts", headers=me)
    got = await api.ok("GET", f"/v1/accounts/{account}", headers=me)
    status, paid, _ = await api.pay(account, 1_000, method, headers=me)
    invoices = await api.ok("GET", f"/v1/accounts/{account}/invoices", headers=me)
    invoice_status, _, _ = await api.call(
        "POST", f"/v1/accounts/{account}/invoices", headers=me,
        json={"amount": 1, "due_date": "2026-01-01"},
    )  # fmt: skip
    refund_status, _, _ = await api.call(
        "POST", f"/v1/payments/{paid['id']}/refunds", headers={**me, "Idempotency-Key": "r"},
        json={"amount": 1},
    )  # fmt: skip

    assert [a["id"] for a in listed["data"]] == [account]
    assert got["balance"]["outstanding"] == 1_000
    assert status == 200
    assert paid["status"] == "succeeded"
    assert invoices["data"][0]["status"] == "paid"
    assert invoice_status == 404
    assert refund_status == 404


@pytest.mark.parametrize(
    "authorization", [None, "Bearer sk_wrong", "Bearer pt_wrong", "Basic abc", "Bearer "]
)
async def test_missing_or_bad_credentials_are_401(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    status, body, _ = await api.call("GET", "/v1/accounts", headers=headers)

    assert status == 401
    assert body["error"]["type"] == "authentication_error"


async def test_a_wrong_password_is_401_and_only_a_token_hash_is_stored(api: Api) -> None:
    account = await api.account()
    me = await api.payer(account, "hash@example.com", password="long enough pw")

    status, _, _ = await api.call(
        "POST", "/v1/payer/sessions", headers={},
        json={"email": "hash@example.com", "password": "nope"},
    )  # fmt: skip

    assert status == 401
    token = me["Authorization"].removeprefix("Bearer ")
    import sqlalchemy as sa

    from payportal.persistence.tables_payers import payer_sessions, payers

    async with api.store.engine.connect() as connection:
        hashes = [r.token_hash for r in await connection.execute(sa.select(payer_sessions))]
        stored = [r.password_hash for r in await connection.execute(sa.select(payers))]
    assert token not in hashes
    assert all(h.startswith("$argon2id$") for h in stored)


async def test_unknown_fields_are_400_naming_the_field_and_every_answer_has_a_request_id(
    api: Api,
) -> None:
    response = await api.client.post(
        "/v1/accounts", headers={**api.merchant, "X-Request-Id": "req-from-client"},
        json={"name": "A", "email": "a@example.com", "currency": "USD", "colour": "red"},
    )  # fmt: skip
    body = await response.json()
    missing = await api.client.get("/v1/nowhere", headers=api.merchant)

    assert response.status == 400
    assert body["error"]["param"] == "colour"
    assert response.headers["X-Request-Id"] == "req-from-client"
    assert missing.status == 404
    assert missing.headers["X-Request-Id"].startswith("req_")


@pytest.mark.parametrize("after", ["\u2028", "\x85", "\u00a0", " x"])
async def test_a_valid_key_followed_by_anything_is_401(api: Api, after: str) -> None:
    headers = {"Authorization": api.merchant["Authorization"] + after}

    status, body, _ = await api.call("GET", "/v1/accounts", headers=headers)

    assert status == 401, body
    assert body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("segment", ["acct_%00x", "acct_x%0A", "x%E2%80%A8", "x" * 65])
async def test_a_path_id_that_is_no_id_is_a_404_before_any_handler(api: Api, segment: str) -> None:
    # A NUL in an id reached PostgreSQL from a handler, which answered 500.
    for method, path in (("GET", "/v1/accounts/{}"), ("POST", "/v1/accounts/{}/invoices"),
                         ("GET", "/v1/payment_methods/{}"), ("GET", "/v1/accounts/{}/events")):
        response = await api.client.request(method, URL(path.format(segment), encoded=True),
                                            headers=api.merchant, json={})  # fmt: skip
        body = await response.json()
        assert response.status == 404, (method, path, response.status, body)
        assert body["error"]["code"] == "resource_missing"
