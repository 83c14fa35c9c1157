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
