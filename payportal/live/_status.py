"""What a live status event says, and which journal events say it.

The model: every journal event that sets a payment's status becomes one ``StatusEvent``
whose id is the event's journal id. An account lives on one shard and a shard commits
one batch at a time, so journal ids grow with each account's commit order: they are
a monotonic, gap-free-to-resume event id per account stream. Rules:

- ``STATUS_OF`` below is the whole mapping; an event type missing from it changes no
  payment status (invoices, credit, an attempt whose outcome is unknown: the payment
  stays ``processing``) and is not published.
- Times are unix seconds and money minor units, as everywhere in the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

import msgspec
import sqlalchemy as sa

from payportal.engine import (
    AttemptDeclined,
    AttemptErrored,
    AttemptSucceeded,
    Event,
    PaymentCanceled,
    PaymentCreated,
    PaymentDisputed,
    PaymentMethodReplaced,
    PaymentRefunded,
    PaymentStatus,
    RetriesExhausted,
    RetryDeferred,
    RetryStarted,
)
from payportal.persistence import tables

__all__ = [
    "STATUS_EVENT_TYPES",
    "STATUS_OF",
    "StatusEntry",
    "StatusEvent",
    "journal_last_id",
    "journal_payment_start",
    "journal_status_after",
    "status_entry",
]


class StatusEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The ``data:`` of one server-sent event."""

    payment: str
    account: str
    status: PaymentStatus
    amount_applied: int | None = None  # once succeeded
    next_retry_at: int | None = None  # unix seconds, while retry_scheduled
    version: int  # the account version the change produced
    at: int  # unix seconds


class StatusEntry(NamedTuple):
    """One stream entry: the journal id, the payment it concerns, the encoded event."""

    id: int
    payment: str
    data: bytes


def _seconds(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


_Status = Callable[[Event], PaymentStatus]

# Journal event → the payment status it leaves behind.
STATUS_OF: Final[dict[type[Event], _Status]] = {
    PaymentCreated: lambda e: PaymentStatus.processing,
    AttemptSucceeded: lambda e: PaymentStatus.succeeded,
    AttemptDeclined: lambda e: e.status,  # type: ignore[attr-defined]
    AttemptErrored: lambda e: e.status,  # type: ignore[attr-defined]
    RetryStarted: lambda e: PaymentStatus.processing,
    RetryDeferred: lambda e: PaymentStatus.retry_scheduled,
    RetriesExhausted: lambda e: PaymentStatus.failed,
    PaymentMethodReplaced: lambda e: PaymentStatus.processing,
    PaymentCanceled: lambda e: PaymentStatus.canceled,
    PaymentRefunded: lambda e: e.status,  # type: ignore[attr-defined]
    PaymentDisputed: lambda e: PaymentStatus.disputed,
}
# The journal's ``event_type`` values worth decoding (the events' msgspec tags).
STATUS_EVENT_TYPES: Final = frozenset(
    msgspec.inspect.type_info(t).tag for t in STATUS_OF  # type: ignore[attr-defined]
)

_event_decoder: Final = msgspec.msgpack.Decoder(Event)
_encoder: Final = msgspec.json.Encoder()


def status_entry(
    journal_id: int, account_id: str, version: int, event_type: str, payload: bytes
) -> StatusEntry | None:
    """The stream entry for one journal row, or None when it changes no payment status."""
    if event_type not in STATUS_EVENT_TYPES:
        return None
    event = _event_decoder.decode(payload)
    status_of = STATUS_OF[type(event)]
    payment_id: str = event.payment_id  # type: ignore[union-attr]
    applied = None
    if isinstance(event, AttemptSucceeded):
        applied = sum(a.amount_minor for a in event.allocations)
    status = StatusEvent(
        payment=payment_id, account=account_id, status=status_of(event),
        amount_applied=applied,
        next_retry_at=_seconds(getattr(event, "next_retry_at_ms", None)),
        version=version, at=event.at_ms // 1000,
    )  # fmt: skip
    return StatusEntry(journal_id, payment_id, _encoder.encode(status))


async def journal_status_after(
    engine: sa.ext.asyncio.AsyncEngine, account_id: str, after_id: int, *,
    before_id: int | None = None, limit: int = 500,
) -> tuple[list[StatusEntry], int]:  # fmt: skip
    """An account's status entries straight from the journal, with ids in (after_id,
    before_id): what a resuming client missed when its stream no longer holds it. Also
    returns the last journal id looked at (``after_id`` when none), to page on."""
    j = tables.journal
    query = (
        sa.select(j.c.id, j.c.version, j.c.event_type, j.c.payload)
        .where(j.c.account_id == account_id, j.c.id > after_id)
        .order_by(j.c.id)
        .limit(limit)
    )
    if before_id is not None:
        query = query.where(j.c.id < before_id)
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    entries = []
    for row in rows:
        entry = status_entry(row.id, account_id, row.version, row.event_type, row.payload)
        if entry is not None:
            entries.append(entry)
    return entries, rows[-1].id if rows else after_id


async def journal_last_id(engine: sa.ext.asyncio.AsyncEngine, account_id: str) -> int:
    """The newest journal id of an account (0 when it has none): "now" for a new subscriber."""
    j = tables.journal
    query = sa.select(sa.func.max(j.c.id)).where(j.c.account_id == account_id)
    async with engine.connect() as connection:
        found = (await connection.execute(query)).scalar()
    return int(found or 0)


async def journal_payment_start(
    engine: sa.ext.asyncio.AsyncEngine, account_id: str, payment_id: str
) -> int | None:
    """The journal id of a payment's creation, or None when it was never created."""
    j = tables.journal
    query = sa.select(j.c.id).where(
        j.c.account_id == account_id, j.c.event_type == "payment_created",
        j.c.payment_id == payment_id,
    )  # fmt: skip
    async with engine.connect() as connection:
        found = (await connection.execute(query)).scalar()
    return None if found is None else int(found)
