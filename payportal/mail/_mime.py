"""An outgoing email as the bytes SMTP carries, written directly.

Why not ``email.message.EmailMessage``: building one and flattening it costs about 1.5 ms
of CPU per message here, twenty times what rendering its three templates costs, and it
was most of the sender's CPU per email. Every message the portal sends has one shape, so
this writes that shape itself:

- headers From, To, Cc (when there are any), Subject, Date, Message-ID, MIME-Version;
- a ``multipart/alternative`` body: a ``text/plain`` part, then a ``text/html`` part,
  both UTF-8 in quoted-printable. That is 7-bit clean with lines of at most 76
  characters, so any SMTP server takes it, with or without 8BITMIME;
- the boundary contains ``=_``, which quoted-printable never produces, so it cannot occur
  in a part; it is derived from the Message-ID, so every send of one row is the same
  bytes.

A subject with non-ASCII characters or longer than a header line should be is written
as RFC 2047 encoded words by the email package's own encoder (only then: it is slow).
Addresses and the subject lose surrounding whitespace (a trailing newline, as the email
package dropped it too); a non-ASCII address needs a server that offers SMTPUTF8
(``SmtpMessage.utf8``). A header value still holding a CR, LF or NUL is refused with
``ValueError``: it would start a header of its own (header injection). The SMTP client
checks the envelope addresses once more when it sends.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.header
import email.utils
import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Final

import msgspec

__all__ = ["SmtpMessage", "build_message", "envelope_address"]

# RFC 5322: a header line SHOULD be at most 78 characters; longer subjects are folded.
_HEADER_LINE_CHARS: Final = 78
_FORBIDDEN_IN_HEADER: Final = ("\r", "\n", "\x00")
# An address the email package's parser returns unchanged: atext, one @, a plain domain.
_PLAIN_ADDRESS: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")
# What may not appear in an address on an SMTP command line, outside a quoted local part.
_NOT_ON_A_COMMAND_LINE: Final = re.compile(r'[\s<>"\x00-\x1f\x7f]')
_QUOTED_LOCAL_PART: Final = re.compile(r'^"(?:[^"\\\r\n]|\\.)*"')
_PART_HEAD: Final = (
    'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable'
)


class SmtpMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What one SMTP transaction sends: envelope sender, recipients, the message bytes."""

    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    # An address is not ASCII: the server must offer SMTPUTF8.
    utf8: bool = False


def _checked(name: str, value: str) -> str:
    if any(c in value for c in _FORBIDDEN_IN_HEADER):
        raise ValueError(f"{name} header holds a line break or NUL: {value!r}")
    return value


def _subject(subject: str) -> str:
    subject = _checked("Subject", subject.strip())
    if subject.isascii() and len(subject) + len("Subject: ") <= _HEADER_LINE_CHARS:
        return subject
    charset = "us-ascii" if subject.isascii() else "utf-8"
    return email.header.Header(subject, charset, header_name="Subject").encode(linesep="\r\n")


def _addresses(name: str, addresses: Sequence[str]) -> str:
    for address in addresses:
        _checked(name, address)
    joined = ", ".join(addresses)
    if len(joined) + len(name) + 2 <= _HEADER_LINE_CHARS:
        return joined
    return ",\r\n ".join(addresses)  # folded: one address per line


def _quoted_printable(text: str) -> bytes:
    normalized = text.replace("\r\n", "\n").replace("\r", "\n").encode()
    return binascii.b2a_qp(normalized, istext=True).replace(b"\n", b"\r\n")


def envelope_address(value: str) -> str:
    """The bare address an SMTP command carries for a header's address ("Name <a@b>" ->
    "a@b"), by the rules the SMTP client (aiosmtplib) applies; ``ValueError`` when it
    cannot go on a command line. A plain ``local@domain`` is taken as it is: the email
    package's address parser, which the client would run on it three times per message,
    was a third of the sender's CPU per email; only other forms go through it."""
    if _PLAIN_ADDRESS.fullmatch(value):
        return value
    return _parsed_address(value)


@functools.lru_cache(maxsize=64)
def _parsed_address(value: str) -> str:
    address = email.utils.parseaddr(value)[1] or value.strip()
    if _NOT_ON_A_COMMAND_LINE.search(_QUOTED_LOCAL_PART.sub("", address, count=1)):
        raise ValueError(f"address {address!r} cannot be put on an SMTP command line")
    return address


def build_message(
    *, mail_from: str, to: Sequence[str], cc: Sequence[str], subject: str, text: str,
    html: str, message_id: str, date: dt.datetime,
) -> SmtpMessage:  # fmt: skip
    """The message and its envelope; raises ``ValueError`` for a header it cannot write."""
    to = [address.strip() for address in to]
    cc = [address.strip() for address in cc]
    if not to:
        raise ValueError("a message needs a recipient")
    boundary = "=_" + hashlib.sha256(message_id.encode()).hexdigest()[:24]
    headers = [
        f"From: {_checked('From', mail_from)}",
        f"To: {_addresses('To', to)}",
        *([f"Cc: {_addresses('Cc', cc)}"] if cc else []),
        f"Subject: {_subject(subject)}",
        f"Date: {email.utils.format_datetime(date)}",
        f"Message-ID: {_checked('Message-ID', message_id)}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
    ]
    plain = f"--{boundary}\r\n{_PART_HEAD.format('plain')}\r\n\r\n"
    rich = f"\r\n--{boundary}\r\n{_PART_HEAD.format('html')}\r\n\r\n"
    data = b"".join((
        "\r\n".join(headers).encode(), b"\r\n\r\n",
        plain.encode(), _quoted_printable(text), rich.encode(), _quoted_printable(html),
        f"\r\n--{boundary}--\r\n".encode(),
    ))  # fmt: skip
    recipients = tuple(dict.fromkeys(envelope_address(a) for a in (*to, *cc)))
    return SmtpMessage(
        mail_from=envelope_address(mail_from), recipients=recipients, data=data,
        utf8=not all(a.isascii() for a in (mail_from, *recipients)),
    )  # fmt: skip
