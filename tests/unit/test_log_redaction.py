"""payportal's log pipeline renders no secret: the ``redact`` processor over a table of
fields and texts, and ``configure_logging`` end to end (structlog and stdlib records,
exceptions whose frames hold secrets in their locals) into a string."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from payportal.logs import REDACTED, configure_logging, redact, redact_text

SECRET = "Geheimes-Passwort-7"  # test-only
# These tests log secrets on purpose, and pytest's own capture keeps records as they were
# logged: their captured output is not the suite's to scan (tests/zz_scan).
pytestmark = pytest.mark.plants_secrets


def _redacted(**fields: Any) -> dict[str, Any]:
    return redact(None, "info", {"event": "e", **fields})


@pytest.mark.parametrize("name", [
    "password", "new_password", "password_hash", "token", "session_token", "api_key", "key",
    "secret", "webhook_secret", "authorization", "Authorization", "cookie", "set_cookie", "cvc",
    "cvv", "card_number", "number", "body", "raw", "payload", "form", "data", "signature",
    "X-Api-Key", "webhook-signature", "stripe_api_key",
])  # fmt: skip
def test_a_field_named_like_a_secret_or_a_body_is_replaced(name: str) -> None:
    assert _redacted(**{name: SECRET})[name] == REDACTED


@pytest.mark.parametrize("name", [
    "key_id", "event_id", "request_id", "path", "status", "method", "email", "address",
    "duration_ms", "processor", "attempt_id", "retry_after_s",
])  # fmt: skip
def test_ordinary_fields_are_kept(name: str) -> None:
    assert _redacted(**{name: "value-1"})[name] == "value-1"


def test_bytes_nested_values_and_objects_are_made_safe() -> None:
    class Holder:
        def __repr__(self) -> str:
            return f"Holder(password={SECRET!r})"

    fields = _redacted(
        blob=b'{"password": "x"}', nested={"ok": 1, "token": SECRET, "deep": [{"cvc": "123"}]},
        thing=Holder(), count=3, flag=True, missing=None,
    )  # fmt: skip
    assert fields["blob"] == "<17 bytes>"
    assert fields["nested"] == {"ok": 1, "token": REDACTED, "deep": [{"cvc": REDACTED}]}
    assert SECRET not in str(fields["thing"])
    assert (fields["count"], fields["flag"], fields["missing"]) == (3, True, None)


@pytest.mark.parametrize(("text", "hidden"), [
    ("charging 4242424242424242 now", "4242424242424242"),
    ("card 4242 4242 4242 4242", "4242 4242 4242 4242"),
    ("card 4242-4242-4242-4242", "4242-4242-4242-4242"),
    ("amex 378282246310005", "378282246310005"),
    ("visa 4000000000000002", "4000000000000002"),
    ("mc2 2223003122003222", "2223003122003222"),
    ("Authorization: Bearer sk_live_abcdefghijklmnop", "sk_live_abcdefghijklmnop"),
    ("key sk_abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnopqrstuvwxyz012345"),
    ("session pt_abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"),
    ("link /reset/rs_abcdefghijklmnop", "abcdefghijklmnop"),
    ("signing with whsec_c2VjcmV0LWtleQ==", "c2VjcmV0LWtleQ=="),
    ('body b\'{"email":"x@y.io","password":"Geheimes\\xf6"}\'', "Geheimes"),
    ("{'token': 'tok_live_value', 'amount': 5}", "tok_live_value"),
    ("email=x%40y.io&password=Geheimes&next=/", "Geheimes"),
    ("cvc: 4096", "4096"),
])  # fmt: skip
def test_secrets_inside_text_are_masked(text: str, hidden: str) -> None:
    assert hidden not in redact_text(text)
    assert hidden not in _redacted(message=text)["message"]
    assert hidden not in _redacted(event=text)["event"]


@pytest.mark.parametrize("text", [
    "card 4242424242424241 last4 4242 at 2026-01-01",  # not Luhn-valid
    "next_retry_at_ms=1795447977079",  # a time in ms, Luhn-valid
    "took 0.1795447977079 s",
    "payment pay_01JDEF created for acct_demo_acme",
    "invoice INV-0001 of 130000 minor units",
])  # fmt: skip
def test_harmless_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ours = logging.getLogger("payportal")
    ours_level = ours.level
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        ours.setLevel(ours_level)


def _fails_holding_a_secret(raw: bytes) -> None:
    password = SECRET  # noqa: F841 - a local the traceback must not show
    raw.decode()


def test_logged_exceptions_show_frames_but_never_their_locals(output: io.StringIO) -> None:
    raw = b'{"password":"' + SECRET.encode() + b'\xf6"}'
    try:
        _fails_holding_a_secret(raw)
    except UnicodeDecodeError:
        structlog.get_logger("payportal.http").exception("request_failed", path="/v1/x")
        logging.getLogger("aiohttp.server").exception("Error handling request")
        logging.getLogger("payportal.mail.sender").exception("round failed: %r", raw)
    text = output.getvalue()
    assert text.count("Traceback (most recent call last)") == 3, text
    assert "_fails_holding_a_secret" in text
    assert "request_failed" in text
    assert "path=/v1/x" in text
    assert "Error handling request" in text
    assert SECRET not in text, text
    assert "Geheimes" not in text


def test_structlog_and_stdlib_fields_and_messages_are_redacted(output: io.StringIO) -> None:
    structlog.get_logger("payportal.web").info(
        "signin", password=SECRET, body=b"email=a&password=b", key_id="key_1"
    )
    logging.getLogger("payportal.processors").warning("charge %s with %s", "4242424242424242",
                                                      f"Bearer sk_{SECRET}")  # fmt: skip
    logging.getLogger("payportal.debug").debug("not shown at INFO: %s", SECRET)
    text = output.getvalue()
    assert "signin" in text
    assert "key_id=key_1" in text
    assert "charge [card number] with" in text
    assert SECRET not in text, text
    assert "4242424242424242" not in text


def test_a_request_the_http_parser_refused_is_logged_without_its_bytes(
    output: io.StringIO,
) -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    quoted = f"Invalid header value char:\n\n    b'X-Request-Id: 1\\x00{SECRET}'"
    try:
        raise BadHttpMessage(quoted)
    except BadHttpMessage as error:
        logging.getLogger("aiohttp.server").error(
            "Error handling request from %s", "127.0.0.1", exc_info=error
        )
    text = output.getvalue()
    assert "Error handling request from 127.0.0.1: malformed request (BadHttpMessage)" in text
    assert "[info" in text
    assert SECRET not in text, text
    assert "Traceback" not in text
