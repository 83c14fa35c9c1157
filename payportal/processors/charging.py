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
from payportal.engine.retry_policy import Initiator

from .adapter import ChargeResult, ProcessorAdapter, ProcessorRequestError

__all__ = [
    "DECLINE_CODE_METHOD_UNAVAILABLE", "INITIATOR_MERCHANT", "METADATA_INITIATOR",
    "METADATA_PAYMENT", "charge_attempt", "initiator_of",
]  # fmt: skip

log = logging.getLogger(__name__)

# A saved payment method whose processor token no longer exists: the payer must choose
# another method, exactly as after a hard decline.
DECLINE_CODE_METHOD_UNAVAILABLE: Final = "payment_method_unavailable"
# The charge's metadata key that names our payment; callbacks carry it back.
METADATA_PAYMENT: Final = "payment"
# Who starts this attempt: ``merchant`` (autopay, and every retry the portal makes on its
# own) or ``customer`` (the payer's own first attempt). A processor that knows the
# difference (Stripe's ``off_session``) reads it here; it is a function of the attempt
# alone, so a re-send under the same idempotency key sends the same request.
METADATA_INITIATOR: Final = "initiator"
INITIATOR_MERCHANT: Final = "merchant"


async def charge_attempt(
    processor: ProcessorAdapter,
    token: str | None,
    payment: Payment,
    attempt_id: str,
    *,
    timeout_s: float,
) -> ChargeResult:
    """Charge ``payment``'s amount for ``attempt_id`` (the processor idempotency key)."""
    if token is None:
        return ChargeResult(
            outcome=OutcomeKind.declined, decline_code=DECLINE_CODE_METHOD_UNAVAILABLE
        )
    try:
        async with asyncio.timeout(timeout_s):
            return await processor.charge(
                token, payment.amount_minor, payment.currency, idempotency_key=attempt_id,
                metadata={METADATA_PAYMENT: payment.payment_id,
                          METADATA_INITIATOR: initiator_of(payment, attempt_id)},
            )  # fmt: skip
    except TimeoutError:
        return ChargeResult(outcome=OutcomeKind.unknown)
    except ProcessorRequestError:
        log.exception("processor refused the charge for attempt %s", attempt_id)
        return ChargeResult(outcome=OutcomeKind.unknown)


def initiator_of(payment: Payment, attempt_id: str) -> str:
    """``merchant`` for a merchant-initiated payment and for every attempt after the
    first (the janitor's retries: the payer is not there); else ``customer``."""
    first = payment.attempts[0].attempt_id if payment.attempts else attempt_id
    if payment.initiator is Initiator.merchant or attempt_id != first:
        return Initiator.merchant.value
    return Initiator.customer.value
