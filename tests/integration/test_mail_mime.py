"""The sender's hand-written MIME messages read back, through the email package's own
parser, as exactly the headers, text and HTML they were built from — non-ASCII subjects,
long lines, leading dots and trailing spaces included — stay within SMTP's line limits,
are the same bytes on every build of one row, refuse a header a line break would split,
and put on the envelope exactly the addresses the SMTP client itself would; checked by
building messages and parsing them back."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
from email.message import EmailMessage
from typing import Any

import aiosmtplib.email
import pytest

from payportal.mail._mime import build_message, envelope_address

DATE = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
TEXT = "Hello Zoë,\n\nYou paid 1.819,50 €.\n.\nA line with trailing spaces   \n" + "x" * 300 + "\n"
HTML = (
    '<html><head><meta charset="utf-8"></head><body>\n<p>Zoë — 1.819,50 €</p>\n'
    + "<p>" + "long " * 200 + "</p>\n.\n</body></html>\n"
)  # fmt: skip


def _build(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "mail_from": "Payportal <payments@payportal.localhost>",
        "to": ["billing@example.com"], "cc": ["ada@example.com"],
        "subject": "Payment received: 1,819.50 EUR", "text": TEXT, "html": HTML,
        "message_id": "<abc123@payportal.localhost>", "date": DATE,
    }  # fmt: skip
    return build_message(**{**fields, **overrides})


def _parsed(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.defects, parsed.defects
    return parsed


def _content(part: Any) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


@pytest.mark.parametrize(
    "subject",
    ["Payment received: 1,819.50 EUR",
     "Zahlung über 1.819,50 € erhalten — vielen Dank für Ihre Zahlung an Acme Holdings",
     "A subject in plain ASCII that is rather longer than one header line ought to be, "
     "seventy-eight characters"],
)  # fmt: skip
def test_a_message_parses_back_to_what_it_was_built_from(subject: str) -> None:
    message = _build(subject=subject)

    parsed = _parsed(message.data)

    assert parsed["From"] == "Payportal <payments@payportal.localhost>"
    assert parsed["To"] == "billing@example.com"
    assert parsed["Cc"] == "ada@example.com"
    assert " ".join(str(parsed["Subject"]).split()) == subject
    assert parsed["Message-ID"] == "<abc123@payportal.localhost>"
    assert email.utils.parsedate_to_datetime(parsed["Date"]) == DATE
    assert parsed.get_content_type() == "multipart/alternative"
    plain = parsed.get_body(preferencelist=("plain",))
    rich = parsed.get_body(preferencelist=("html",))
    assert plain is not None
    assert rich is not None
    assert _content(plain) == TEXT
    assert _content(rich) == HTML
    assert message.mail_from == "payments@payportal.localhost"
    assert message.recipients == ("billing@example.com", "ada@example.com")
    assert message.utf8 is False


def test_every_line_fits_smtp_and_the_bytes_are_seven_bit() -> None:
    data = _build().data

    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 78
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_every_build_of_one_row_is_the_same_bytes_and_another_row_has_another_boundary() -> None:
    first, again = _build().data, _build().data
    other = _build(message_id="<def456@payportal.localhost>").data

    assert first == again
    boundary = _parsed(first).get_boundary()
    assert boundary is not None
    assert boundary != _parsed(other).get_boundary()


def test_many_recipients_are_folded_and_read_back_whole() -> None:
    cc = [f"payer{n}@example.com" for n in range(12)]

    parsed = _parsed(_build(cc=cc).data)

    assert [a.addr_spec for a in parsed["Cc"].addresses] == cc


@pytest.mark.parametrize(
    ("field", "value"),
    [("to", ["ada@example.com\nBcc: eve@example.com"]),
     ("cc", ["ada@example.com\r\nX-Injected: 1"]),
     ("subject", "Hello\nBcc: eve@example.com"),
     ("to", ["ada@example.com\x00"])],
)  # fmt: skip
def test_a_header_a_line_break_would_split_is_refused(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match="line break or NUL"):
        _build(**{field: value})


def test_surrounding_whitespace_is_dropped_and_a_non_ascii_address_needs_smtputf8() -> None:
    trailing = _build(to=["ada@example.com\n"], cc=[" bob@example.com"], subject="Hello\n")
    wide = _build(to=["zoë@example.com"])

    assert trailing.recipients == ("ada@example.com", "bob@example.com")
    assert _parsed(trailing.data)["To"] == "ada@example.com"
    assert _parsed(trailing.data)["Subject"] == "Hello"
    assert wide.utf8 is True


@pytest.mark.parametrize(
    "address",
    ["ada@example.com", "A.B-C_d+tag@Sub.Example.COM", "o'neil@example.com", "a..b@x.com",
     "Ada Lovelace <ada@example.com>", '"john doe"@example.com', "<a@b.com> trailing",
     "zoë@example.com", "ada lovelace@example.com", "a<b@example.com>"],
)  # fmt: skip
def test_envelope_addresses_follow_the_smtp_clients_own_rules(address: str) -> None:
    try:
        expected: str | None = aiosmtplib.email.parse_address(address)
    except ValueError:
        expected = None

    if expected is None:
        with pytest.raises(ValueError, match="cannot be put on an SMTP command line"):
            envelope_address(address)
    else:
        assert envelope_address(address) == expected
