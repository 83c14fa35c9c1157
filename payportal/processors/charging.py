"""Charging one attempt: the one place that turns a processor call into an engine outcome.

Both the payments route (the first attempt) and the shards' retry janitor (later
attempts) charge through here, so they agree on every edge: a payment method whose token
is gone is a decline; a timeout is ``unknown``, resolved later by inquiry and never by a
new charge; a request the processor refuses as malformed is ``unknown`` too, because an
earlier send under the same idempotency key may have captured.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from payportal.engine import OutcomeKind, Payment

from .adapter import ChargeResult, ProcessorAdapter, ProcessorRequestError

__all__ = [
    "DECLINE_CODE_METHOD_UNAVAILABLE", "METADATA_PAYMENT", "charge_attempt",
]  # fmt: skip

log = logging.getLogger(__name__)

# A saved payment method whose processor token no longer exists: the payer must choose
# another method, exactly as after a hard decline.
DECLINE_CODE_METHOD_UNAVAILABLE: Final = "payment_method_unavailable"
# The charge's metadata key that names our payment; callbacks carry it back.
METADATA_PAYMENT: Final = "payment"


def _off_session(payment: Payment, attempt_id: str) -> bool:
    return any(a.off_session for a in payment.attempts if a.attempt_id == attempt_id)


async def charge_attempt(
    processor: ProcessorAdapter,
    token: str | None,
    payment: Payment,
    attempt_id: str,
    *,
    timeout_s: float,
    return_url: str | None = None,
) -> ChargeResult:
    """Charge ``payment``'s amount for ``attempt_id`` (the processor idempotency key).
    An attempt made without the payer (``Attempt.off_session``) is sent off session, so
    a card that needs authentication is declined rather than left waiting for a
    challenge nobody will see."""
    if token is None:
        return ChargeResult(
            outcome=OutcomeKind.declined, decline_code=DECLINE_CODE_METHOD_UNAVAILABLE
        )
    try:
        async with asyncio.timeout(timeout_s):
            return await processor.charge(
                token, payment.amount_minor, payment.currency, idempotency_key=attempt_id,
                metadata={METADATA_PAYMENT: payment.payment_id},
                off_session=_off_session(payment, attempt_id), return_url=return_url,
            )  # fmt: skip
    except TimeoutError:
        return ChargeResult(outcome=OutcomeKind.unknown)
    except ProcessorRequestError:
        log.exception("processor refused the charge for attempt %s", attempt_id)
        return ChargeResult(outcome=OutcomeKind.unknown)
