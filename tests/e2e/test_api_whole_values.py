"""Values with a newline after them are refused by the API (SQLite and PostgreSQL): an
email, a currency, a card's last 4 digits and a metrics window each get a 400
``parameter_invalid`` naming the field, and nothing is stored."""

from __future__ import annotations

from .api_harness import Api


def _refused(status: int, body: dict[str, object], param: str) -> None:
    assert status == 400, body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error", error
    assert error["code"] == "parameter_invalid", error
    assert error["param"] == param, error


async def test_a_trailing_newline_is_refused_on_every_validated_field(api: Api) -> None:
    account = await api.account()
    before = await api.ok("GET", "/v1/accounts", params={"limit": 100})

    for email in ("ada@example.com\n", "ada@example.com\r\n", "ada\x00@example.com"):
        status, body, _ = await api.call("POST", "/v1/accounts", json={
            "name": "Ada", "email": email, "currency": "USD"})  # fmt: skip
        _refused(status, body, "email")
    status, body, _ = await api.call("POST", "/v1/accounts", json={
        "name": "Ada", "email": "ada@example.com", "currency": "USD\n"})  # fmt: skip
    _refused(status, body, "currency")
    status, body, _ = await api.call("POST", f"/v1/accounts/{account}/payers",
                                     json={"email": "payer@example.com\n"})  # fmt: skip
    _refused(status, body, "email")
    status, body, _ = await api.call("POST", f"/v1/accounts/{account}/payment_methods",
                                     json={"token": "tok_x", "last4": "4242\n"})  # fmt: skip
    _refused(status, body, "last4")
    status, body, _ = await api.call("GET", "/v1/metrics/summary", params={"window": "24h\n"})
    _refused(status, body, "window")

    after = await api.ok("GET", "/v1/accounts", params={"limit": 100})
    assert [a["id"] for a in after["data"]] == [a["id"] for a in before["data"]]
    methods = await api.ok("GET", f"/v1/accounts/{account}/payment_methods")
    assert methods["data"] == []


async def test_control_characters_in_text_and_ids_are_refused_and_nothing_is_stored(
    api: Api,
) -> None:
    account = await api.account()
    before = await api.ok("GET", "/v1/accounts", params={"limit": 100})

    for name in ("Ada\x00", "Ada\nLovelace", "Ada\u2028", "Ada\x85"):
        status, body, _ = await api.call("POST", "/v1/accounts", json={
            "name": name, "email": "ada@example.com", "currency": "USD"})  # fmt: skip
        _refused(status, body, "name")
    status, body, _ = await api.call("POST", f"/v1/accounts/{account}/invoices", json={
        "amount": 100, "due_date": "2026-01-01", "description": "Work\u2028"})  # fmt: skip
    _refused(status, body, "description")
    status, body, _ = await api.call("POST", "/v1/plans", json={
        "name": "Gold\x00", "amount": 100, "currency": "USD", "interval": "month"})  # fmt: skip
    _refused(status, body, "name")
    # A NUL in a cursor or an account id reached PostgreSQL, which answered with a 500.
    status, body, _ = await api.call("GET", "/v1/accounts", params={"starting_after": "a\x00"})
    _refused(status, body, "starting_after")
    status, body, _ = await api.call("GET", "/v1/payments", params={"account": f"{account}\x00"})
    _refused(status, body, "account")

    after = await api.ok("GET", "/v1/accounts", params={"limit": 100})
    assert [a["id"] for a in after["data"]] == [a["id"] for a in before["data"]]


async def test_a_content_type_that_is_no_media_type_is_refused_and_nothing_is_stored(
    api: Api,
) -> None:
    before = await api.ok("GET", "/v1/accounts", params={"limit": 100})
    body = b'{"name": "Ada", "email": "ada@example.com", "currency": "USD"}'

    for declared in ("application/json\u2028", "application/json\x85", "application/\u00e9"):
        status, answer, _ = await api.call("POST", "/v1/accounts", data=body, headers={
            **api.merchant, "Content-Type": declared})  # fmt: skip
        _refused(status, answer, "Content-Type")
    status, _, _ = await api.call("POST", "/v1/accounts", data=body, headers={
        **api.merchant, "Content-Type": "application/json; charset=utf-8"})  # fmt: skip

    after = await api.ok("GET", "/v1/accounts", params={"limit": 100})
    assert status == 200
    assert len(after["data"]) == len(before["data"]) + 1
