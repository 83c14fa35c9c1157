"""The processor adapter: what the gateway asks of any card processor, and what it is told.

The model (ports and adapters): the gateway speaks to one small async interface; the
sandbox and every real processor are adapters behind it. An adapter never raises for
what the network does to a request: a timeout or a dropped connection is the outcome
``unknown`` (the charge may or may not have happened), resolved later by ``inquire``
with the same idempotency key (docs/design.md 6), never by a new charge. A processor fault
(5xx, rate limit) is ``errored``: nothing was captured, and the same request may be
sent again under the same key. A decline is ``declined`` with the processor's raw code
and, where the network gives them, the Visa category and Mastercard advice code, which
``payportal.engine.classify`` turns into hard / soft / technical.

Strong Customer Authentication (3-D Secure): a charge the issuer wants the payer to
authenticate is ``requires_action`` with ``ChargeResult.next_action`` saying what the
client must do, shaped as Stripe's ``PaymentIntent.next_action`` (``{"type":
"redirect_to_url", "redirect_to_url": {"url", "return_url"}}``), so a Stripe adapter maps
it field for field. The challenge's outcome follows for the same idempotency key
(callback or inquiry). ``next_action`` is never journaled or stored: its URL may carry a
secret, so it is asked of the processor again (``inquire``) when a client needs it. A
charge made without the payer (``off_session``) that needs authentication is the
decline ``authentication_required`` (Stripe answers the same), never ``requires_action``.

Tokenization is not part of the interface: card data goes from the payer's browser
straight to the processor (docs/design.md 9), and the portal only ever holds the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Literal, Protocol

import msgspec

from payportal.engine import OutcomeKind

__all__ = [
    "ChargeResult",
    "InquiryStatus",
    "NextAction",
    "ProcessorAdapter",
    "ProcessorRequestError",
    "RedirectToUrl",
    "RefundResult",
]


class InquiryStatus(StrEnum):
    """What a status inquiry found for an idempotency key."""

    succeeded = "succeeded"
    declined = "declined"
    # The processor has the request but no decision yet: ask again later.
    processing = "processing"
    # The processor waits for the payer's authentication (``next_action`` says how).
    requires_action = "requires_action"
    # The processor never received the request: sending it again under the same key is
    # safe, which is exactly what the engine does for ``errored``.
    not_found = "not_found"


class RedirectToUrl(msgspec.Struct, frozen=True, kw_only=True):
    """Open ``url`` (the issuer's challenge) in a browser, a frame or a web view; the
    processor sends the browser to ``return_url`` when it is done, if one was given."""

    url: str
    return_url: str | None = None


class NextAction(msgspec.Struct, frozen=True, kw_only=True):
    """What the payer's client must do next: Stripe's ``PaymentIntent.next_action``."""

    type: Literal["redirect_to_url"] = "redirect_to_url"
    redirect_to_url: RedirectToUrl


class ChargeResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a charge or a status inquiry, in the engine's outcome vocabulary."""

    outcome: OutcomeKind
    charge_id: str | None = None
    decline_code: str | None = None
    visa_category: int | None = None
    advice_code: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    # With ``requires_action`` only: never journaled (the URL may carry a secret).
    next_action: NextAction | None = None
    # Set by ``inquire`` only: the processor's own answer behind ``outcome``
    # (processing → unknown, not_found → errored).
    inquiry: InquiryStatus | None = None


class RefundResult(msgspec.Struct, frozen=True, kw_only=True):
    """``declined`` means the processor refused the refund (``failure_code`` says why)."""

    outcome: OutcomeKind
    refund_id: str | None = None
    charge_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    failure_code: str | None = None


class ProcessorRequestError(Exception):
    """The processor refused the request itself, for a reason that is our bug (for
    example the same idempotency key sent with a different body). Retrying cannot help."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(f"processor answered {status} {code}: {message}")
        self.status = status
        self.code = code


class ProcessorAdapter(Protocol):
    """One card processor. Every method is safe to call again with the same key."""

    async def charge(
        self, token: str, amount_minor: int, currency: str, idempotency_key: str,
        metadata: Mapping[str, str] | None = None, *, off_session: bool = False,
        return_url: str | None = None,
    ) -> ChargeResult:  # fmt: skip
        """Capture ``amount_minor`` on the tokenized card. ``idempotency_key`` is the
        attempt id: the same key never captures twice. ``metadata`` is kept with the
        charge and sent back in its callbacks (our payment id: a callback then finds its
        payment without a lookup). ``off_session``: the payer is not there (a retry,
        autopay). ``return_url``: where a 3-D Secure challenge sends the browser after."""
        ...

    async def refund(
        self, charge_id: str, amount_minor: int, idempotency_key: str
    ) -> RefundResult: ...

    async def inquire(self, idempotency_key: str) -> ChargeResult:
        """The status of the charge sent under ``idempotency_key``, without charging."""
        ...
