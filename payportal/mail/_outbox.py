"""Putting an email in the outbox, in the caller's own transaction.

The model: a caller that changes something a person should hear about calls
``enqueue_email`` inside the transaction that makes the change. The message is rendered
now and stored as one ``outbox`` row (kind ``email``); if the transaction rolls back, the
email never existed. ``dedupe_key`` names the effect ("password_reset:{token_id}"): a
second call with the same key inserts nothing and returns False, so a retried request
cannot send a second email. The sender worker (``payportal.mail.sender``) delivers rows
at least once, with a ``Message-ID`` derived from the key; on PostgreSQL the insert
also NOTIFYs it, so it sends at the caller's commit rather than at its next look.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from payportal.persistence import tables
from payportal.persistence.sealing import keyring_of

from ._render import render_email

__all__ = [
    "KIND_EMAIL",
    "OutboxEmail",
    "configure_public_url",
    "decode_email",
    "encode_email",
    "enqueue_email",
    "public_url",
]

KIND_EMAIL: Final = "email"

_encoder: Final = msgspec.msgpack.Encoder()
# A rendered email names its recipient and says what they owe: sealed at rest
# (payportal.persistence.sealing) under the ``message`` data key.
_COLUMN: Final = "outbox.payload"


class OutboxEmail(msgspec.Struct, frozen=True, kw_only=True):
    """A rendered email as stored in ``outbox.payload`` (msgpack, then sealed)."""

    to: tuple[str, ...]
    subject: str
    text: str
    html: str
    cc: tuple[str, ...] = ()


_decoder: Final = msgspec.msgpack.Decoder(OutboxEmail)


def encode_email(bind: Any, email: OutboxEmail) -> bytes:
    """An ``email`` row's payload: ``email`` as msgpack, sealed with ``bind``'s key ring."""
    return keyring_of(bind).seal_bytes("message", _COLUMN, _encoder.encode(email))


def decode_email(bind: Any, payload: bytes) -> OutboxEmail:
    """An ``email`` row's payload, opened with ``bind``'s key ring (an engine or a
    connection). Raises ``SealedFieldError`` if it was altered, ``msgspec.DecodeError``
    if it is not an email."""
    return _decoder.decode(keyring_of(bind).open_bytes(_COLUMN, payload))


_public_url: str | None = None


def configure_public_url(url: str) -> None:
    """Set the base URL for links in emails (``payportal serve`` does, from settings)."""
    global _public_url  # one value per process, set at start-up
    _public_url = url.rstrip("/")


def public_url() -> str:
    """The configured base URL, else the one the process environment's settings give."""
    global _public_url
    if _public_url is None:
        from payportal.config import load_settings

        _public_url = load_settings().public_url
    return _public_url


async def enqueue_email(
    connection: AsyncConnection,
    *,
    dedupe_key: str,
    to: str,
    template: str,
    context: Mapping[str, Any],
) -> bool:
    """Render ``template`` and insert it into the outbox in ``connection``'s transaction.

    Returns True when a row was inserted, False when ``dedupe_key`` was already there
    (nothing is written then). The caller commits; the sender worker delivers.
    """
    assert dedupe_key, "an email needs a dedupe key"
    assert "@" in to, "an email needs an address"
    rendered = render_email(template, context, public_url=public_url())
    payload = encode_email(connection, OutboxEmail(
        to=(to,), subject=rendered.subject, text=rendered.text, html=rendered.html
    ))  # fmt: skip
    values = {
        "kind": KIND_EMAIL,
        "dedupe_key": dedupe_key,
        "payload": payload,
        "due_at_ms": time.time_ns() // 1_000_000,
    }
    dialect = connection.dialect.name
    insert: Any
    if dialect == "postgresql":
        insert = postgresql.insert(tables.outbox)
    else:
        assert dialect == "sqlite", dialect
        insert = sqlite.insert(tables.outbox)
    statement = insert.values(values).on_conflict_do_nothing(index_elements=["dedupe_key"])
    result = await connection.execute(statement.returning(tables.outbox.c.id))
    inserted = result.first() is not None
    if inserted and dialect == "postgresql":
        # Wakes a LISTENing sender when the caller commits (never, if it rolls back).
        await connection.execute(sa.select(sa.func.pg_notify(tables.OUTBOX_CHANNEL, "")))
    return inserted
