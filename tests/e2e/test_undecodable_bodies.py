"""A request body that is not UTF-8 is answered 400 ``parameter_invalid`` on every route
that reads one, and no part of it — the password it carries least of all — reaches a log.

How: through the portal harness (the API, the signed processor callbacks and the pages in
one app, on SQLite and PostgreSQL) with payportal's logging set up as ``serve`` sets it
up, each route gets a body holding a secret next to a byte that is not UTF-8 (JSON for
the API and the callbacks, a url-encoded form with its CSRF token for the pages). The
answer must be a 400 (the contract's error for the API, an error page for the pages);
everything written to stdout and stderr and every stdlib log record (aiohttp's own server
log included, tracebacks formatted) must not hold the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from payportal.logs import configure_logging

from .api_harness import SECRET
from .test_portal_security import PASSWORD, Portal, _email, portal

__all__ = ["portal"]

# The secret each body carries, and the byte after it that is not UTF-8 (Latin-1 "ö").
LEAK = "Geheimes-Passw"
BROKEN = LEAK.encode() + b"\xf6rt"


@pytest.fixture
def serve_logging() -> Iterator[None]:
    """payportal's logging as serve configures it, to the captured stderr; undone after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ours = logging.getLogger("payportal")
    ours_level = ours.level
    configure_logging()
    try:
        yield
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        ours.setLevel(ours_level)


def _records_text(records: list[logging.LogRecord]) -> str:
    parts = []
    for record in records:
        parts += [record.getMessage(), repr(record.msg), repr(record.args)]
        parts.append(repr({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}))
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        parts += [str(record.exc_text or ""), str(record.stack_info or "")]
    return "\n".join(parts)


_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})))


def _assert_nothing_leaked(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
                           ) -> None:  # fmt: skip
    output = capfd.readouterr()
    written = output.out + output.err
    assert LEAK not in written, written[-4000:]
    assert LEAK not in caplog.text, caplog.text[-4000:]
    assert LEAK not in _records_text(caplog.records)


def _json(*fields: tuple[str, bytes]) -> bytes:
    """A JSON object whose values are raw bytes (so one can hold a byte that is not UTF-8)."""
    return b"{" + b",".join(b'"%s":"%s"' % (k.encode(), v) for k, v in fields) + b"}"


def _signed(body: bytes) -> dict[str, str]:
    """Standard Webhooks headers with a genuine signature over the raw bytes."""
    event_id = f"evt_{uuid.uuid4().hex}"
    timestamp = str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{event_id}.{timestamp}.".encode() + body
    mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {"content-type": "application/json", "webhook-id": event_id,
            "webhook-timestamp": timestamp, "webhook-signature": f"v1,{mac}"}  # fmt: skip


async def test_api_and_callback_bodies_that_are_not_utf8_are_400_and_never_logged(
    portal: Portal, serve_logging: None, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    api = portal.api
    account = await api.account()
    payer = await api.payer(account, _email())
    caplog.set_level(logging.DEBUG)
    merchant = api.merchant
    keyed = {**merchant, "Idempotency-Key": uuid.uuid4().hex}
    cases: list[tuple[str, str, dict[str, str], bytes]] = [
        ("POST", "/v1/payer/sessions", {}, _json(("email", b"x@y.io"), ("password", BROKEN))),
        ("POST", "/v1/payer/sessions", {}, _json(("email", BROKEN), ("password", b"x"))),
        ("POST", "/v1/payments", keyed,
         _json(("account", account.encode()), ("token", BROKEN))),
        ("POST", "/v1/payments", {**payer, "Idempotency-Key": uuid.uuid4().hex},
         _json(("account", BROKEN))),
        ("POST", "/v1/accounts", merchant, _json(("name", BROKEN))),
        ("POST", f"/v1/accounts/{account}/invoices", merchant, _json(("number", BROKEN))),
        ("POST", "/v1/plans", merchant, _json(("name", BROKEN))),
        ("POST", f"/v1/accounts/{account}/payers", merchant,
         _json(("email", b"new@example.com"), ("password", BROKEN))),
        ("POST", f"/v1/accounts/{account}/payment_methods", merchant, _json(("token", BROKEN))),
    ]  # fmt: skip
    for method, path, headers, body in cases:
        response = await api.client.request(
            method, path, data=body, headers={**headers, "content-type": "application/json"}
        )
        answer = await response.json()
        assert response.status == 400, (path, response.status, answer)
        assert answer["error"]["type"] == "invalid_request_error", (path, answer)
        assert answer["error"]["code"] == "parameter_invalid", (path, answer)
        assert LEAK not in str(answer)

    callback = _json(("type", b"charge.succeeded"), ("secret", BROKEN))
    response = await api.client.post("/v1/processors/sandbox/callbacks", data=callback,
                                     headers=_signed(callback))  # fmt: skip
    answer = await response.json()
    assert response.status == 400, answer
    assert answer["error"]["code"] == "parameter_invalid", answer
    _assert_nothing_leaked(capfd, caplog)


async def test_page_forms_that_are_not_utf8_are_a_400_page_and_never_logged(
    portal: Portal, serve_logging: None, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    email = _email()
    account = await portal.payer(email)
    signed_out = await portal.browser()
    signin_token = await portal.token("/signin", signed_out)
    console_token = await portal.token("/console/signin", signed_out)
    assert (await portal.sign_in(email)).status == 303
    caplog.set_level(logging.DEBUG)
    security_token = await portal.token("/security")
    pay_token = await portal.token(f"/pay?account={account}")
    cases: list[tuple[Any, str, bytes]] = [
        (signed_out, "/signin",
         b"csrf_token=%s&email=x%%40y.io&password=%s" % (signin_token.encode(), BROKEN)),
        (signed_out, "/reset", b"csrf_token=%s&email=%s" % (signin_token.encode(), BROKEN)),
        (signed_out, "/console/signin",
         b"csrf_token=%s&api_key=sk_%s" % (console_token.encode(), BROKEN)),
        (portal.client, "/security/password",
         b"csrf_token=%s&current_password=%s&new_password=%s&confirm=x"
         % (security_token.encode(), PASSWORD.encode(), BROKEN)),
        (portal.client, "/pay",
         b"csrf_token=%s&account=%s&amount=1.00&method=card&token=tok_%s"
         % (pay_token.encode(), account.encode(), BROKEN)),
    ]  # fmt: skip
    for client, path, body in cases:
        response = await client.post(path, data=body, allow_redirects=False, headers={
            "content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        page = await response.text()
        assert response.status == 400, (path, response.status, page[:300])
        assert response.content_type == "text/html", path
        assert LEAK not in page
    await signed_out.close()
    _assert_nothing_leaked(capfd, caplog)
