"""Every request and response body of the API, as msgspec Structs: the one vocabulary the
handlers decode and encode and the OpenAPI document is generated from.

Rules: inbound types forbid unknown fields (400 with ``param``); amounts are integers of
minor units; times are **unix seconds** (integers) everywhere, as in Stripe's API, and
durations carry their unit in the name (``processing_ms``); dates are ISO ``YYYY-MM-DD``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal

import msgspec

from payportal.engine import DESCRIPTION_CHARS_MAX
from payportal.processors.adapter import NextAction

__all__ = [
    "Account",
    "AccountCreate",
    "AccountList",
    "AllocationOut",
    "AllocationPreview",
    "AllocationRequest",
    "Attempt",
    "Balance",
    "ErrorBody",
    "ErrorResponse",
    "Health",
    "Invoice",
    "InvoiceCreate",
    "InvoiceList",
    "InvoiceListQuery",
    "ListQuery",
    "Payer",
    "PayerCreate",
    "PayerSession",
    "PayerSessionCreate",
    "Payment",
    "PaymentCreate",
    "PaymentList",
    "PaymentListQuery",
    "PaymentMethod",
    "PaymentMethodCreate",
    "PaymentMethodList",
    "PaymentMethodListQuery",
    "PreviewQuery",
    "Readiness",
    "Refund",
    "RefundCreate",
    "ServicePeriodBody",
]

# One amount at most 10^12 minor units (ten billion in a two-decimal currency): far above
# any invoice, and low enough that sums over millions of them stay inside the database's
# 64-bit integers.
AMOUNT_MINOR_MAX = 10**12
PositiveMinor = Annotated[
    int,
    msgspec.Meta(gt=0, le=AMOUNT_MINOR_MAX, description="Integer minor units, > 0, <= 10^12."),
]
Minor = Annotated[int, msgspec.Meta(description="Integer minor units.")]
# Up to the last second of year 9999, the latest time the database's timestamps hold.
UNIX_SECONDS_MAX = 253_402_300_799
UnixSeconds = Annotated[
    int, msgspec.Meta(ge=0, le=UNIX_SECONDS_MAX, description="Unix time in seconds.")
]
# Patterns end in ``$(?!\n)``: msgspec matches them with Python's ``re``, whose ``$`` also
# matches before a final newline ("x@y.io\n" would pass, be stored and go into headers);
# ``\Z`` would fix that, but the OpenAPI document's regexes are ECMA-262, which has no
# ``\Z`` and whose ``$`` is the very end, where the lookahead is true too.
Currency = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z]{3}$(?!\n)", description="ISO 4217 code, e.g. USD.")
]
# An address has no spaces, control characters or second "@"; the mail server decides the
# rest.
Email = Annotated[
    str,
    msgspec.Meta(
        min_length=3, max_length=320,
        pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$(?!\n)",
    ),
]
# Text a person wrote is one line: no control characters (C0, DEL, C1) and no Unicode
# line or paragraph separator. It is shown on pages, statements, emails and CSV, and a
# NUL cannot even be stored in PostgreSQL: accepted, it broke the read models' projection.
ONE_LINE: Final = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$(?!\n)"


def one_line(max_length: int, *, min_length: int = 0) -> Any:
    """A text field of one line (``ONE_LINE``) of at most ``max_length`` characters."""
    return Annotated[str, msgspec.Meta(min_length=min_length, max_length=max_length,
                                       pattern=ONE_LINE)]  # fmt: skip


# What an invoice or a payment is for, in the merchant's words: shown to payers.
Description = Annotated[
    str,
    msgspec.Meta(
        max_length=DESCRIPTION_CHARS_MAX, pattern=ONE_LINE,
        description=f"Free text, at most {DESCRIPTION_CHARS_MAX} characters, one line; "
        "shown to payers.",
    ),
]
Name = one_line(200, min_length=1)
ExternalRef = one_line(200)
InvoiceNumber = one_line(64, min_length=1)
ProcessorToken = one_line(255, min_length=1)
Brand = one_line(32)
LoginEmail = one_line(320)
Password = one_line(1024)
NewPassword = one_line(1024, min_length=8)
Limit = Annotated[int, msgspec.Meta(ge=1, le=100)]
# Ids as the API mints them (``ids``): a prefix and hex digits joined by underscores.
# Nothing else names an object; a NUL in a cursor or an account reached PostgreSQL,
# which refused it with a 500 before "no such object" was found.
ObjectId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$(?!\n)")
]


class _In(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    pass


# -- requests -------------------------------------------------------------------------------


class AccountCreate(_In, frozen=True, kw_only=True):
    name: Name
    email: Email
    currency: Currency
    external_ref: ExternalRef | None = None


class ServicePeriodBody(_In, frozen=True, kw_only=True):
    start: dt.date
    end: dt.date


class InvoiceCreate(_In, frozen=True, kw_only=True):
    amount: PositiveMinor
    due_date: dt.date
    number: InvoiceNumber | None = None
    description: Description | None = None
    service_period: ServicePeriodBody | None = None


class AllocationRequest(_In, frozen=True, kw_only=True):
    invoice: ObjectId
    amount: PositiveMinor


class PaymentCreate(_In, frozen=True, kw_only=True):
    account: ObjectId
    amount: PositiveMinor
    currency: Currency
    payment_method: ObjectId | None = None
    token: ProcessorToken | None = None
    allocations: list[AllocationRequest] = []
    description: Description | None = None


class RefundCreate(_In, frozen=True, kw_only=True):
    # Absent: everything still refundable.
    amount: PositiveMinor | None = None


class PaymentMethodCreate(_In, frozen=True, kw_only=True):
    """``token`` comes from the processor's tokenization (the card data never reaches the
    portal). The card facts the tokenization answered may be passed along to be shown."""

    token: ProcessorToken
    type: Literal["card", "debit", "wallet"] = "card"
    brand: Brand = "unknown"
    last4: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}$(?!\n)")] | None = None
    exp_month: Annotated[int, msgspec.Meta(ge=1, le=12)] | None = None
    exp_year: Annotated[int, msgspec.Meta(ge=2000, le=2200)] | None = None
    wallet: Literal["apple_pay", "google_pay"] | None = None


class PayerCreate(_In, frozen=True, kw_only=True):
    email: Email
    # Absent: the payer is invited to set one.
    password: NewPassword | None = None


class PayerSessionCreate(_In, frozen=True, kw_only=True):
    email: LoginEmail
    password: Password


# -- query strings --------------------------------------------------------------------------


class ListQuery(_In, frozen=True, kw_only=True):
    limit: Limit = 10
    starting_after: ObjectId | None = None


class InvoiceListQuery(ListQuery, frozen=True, kw_only=True):
    status: Literal["open", "paid", "void"] | None = None


class PaymentListQuery(ListQuery, frozen=True, kw_only=True):
    account: ObjectId | None = None
    status: (
        Literal[
            "processing", "retry_scheduled", "requires_payment_method", "succeeded", "failed",
            "canceled", "partially_refunded", "refunded", "disputed",
        ]
        | None
    ) = None  # fmt: skip
    created_gte: UnixSeconds | None = None
    created_lt: UnixSeconds | None = None


class PaymentMethodListQuery(ListQuery, frozen=True, kw_only=True):
    # Deleted methods stay in the history; they are listed only when asked for.
    include_deleted: bool = False


class PreviewQuery(_In, frozen=True, kw_only=True):
    account: ObjectId
    amount: PositiveMinor


# -- responses ------------------------------------------------------------------------------


class Balance(_Out, frozen=True, kw_only=True):
    outstanding: Minor
    credit: Minor
    currency: str


class Account(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["account"] = "account"
    name: str
    email: str
    currency: str
    external_ref: str | None
    # Null only in lists, for an account the read model has not caught up with yet.
    balance: Balance | None
    created: UnixSeconds


class AccountList(_Out, frozen=True, kw_only=True):
    data: list[Account]
    has_more: bool


class Invoice(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["invoice"] = "invoice"
    account: str
    number: str
    currency: str
    amount_due: Minor
    amount_paid: Minor
    amount_remaining: Minor
    status: Literal["open", "paid", "void"]
    due_date: dt.date
    service_period: ServicePeriodBody | None
    description: str | None


class InvoiceList(_Out, frozen=True, kw_only=True):
    data: list[Invoice]
    has_more: bool


class Attempt(_Out, frozen=True, kw_only=True):
    id: str
    status: Literal["processing", "succeeded", "declined", "errored", "unknown"]
    decline_code: str | None
    created_at: UnixSeconds


class AllocationOut(_Out, frozen=True, kw_only=True):
    invoice: str
    amount: Minor


class Payment(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["payment"] = "payment"
    account: str
    amount: Minor
    currency: str
    status: str
    payment_method: str
    attempts: list[Attempt]
    allocations: list[AllocationOut]
    amount_applied: Minor
    amount_unapplied: Minor
    amount_refunded: Minor
    # Creation to the first terminal status, once there is one.
    processing_ms: int | None
    next_retry_at: UnixSeconds | None
    created: UnixSeconds
    description: str | None
    # With ``requires_action`` while the processor holds a challenge: what the client
    # opens (Stripe's ``PaymentIntent.next_action``). Asked of the processor, never stored.
    next_action: NextAction | None = None


class PaymentList(_Out, frozen=True, kw_only=True):
    data: list[Payment]
    has_more: bool


class Refund(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["refund"] = "refund"
    payment: str
    amount: Minor
    currency: str
    status: Literal["succeeded"]


class PaymentMethod(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["payment_method"] = "payment_method"
    account: str
    type: str
    brand: str
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    wallet: str | None
    created: UnixSeconds
    deleted: bool


class PaymentMethodList(_Out, frozen=True, kw_only=True):
    data: list[PaymentMethod]
    has_more: bool


class Payer(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["payer"] = "payer"
    email: str
    accounts: list[str]
    # False until the payer has a password (an invitation is pending).
    has_password: bool


class PayerSession(_Out, frozen=True, kw_only=True):
    token: str
    expires_at: UnixSeconds


class AllocationPreview(_Out, frozen=True, kw_only=True):
    account: str
    amount: Minor
    currency: str
    allocations: list[AllocationOut]
    amount_applied: Minor
    amount_unapplied: Minor


class ErrorBody(_Out, frozen=True, kw_only=True, omit_defaults=True):
    type: str
    code: str
    message: str
    param: str | None = None
    decline_code: str | None = None
    # For card errors: the payment the decline happened on.
    payment: Payment | None = None


class ErrorResponse(_Out, frozen=True, kw_only=True):
    error: ErrorBody


class Health(_Out, frozen=True, kw_only=True):
    status: Literal["ok"] = "ok"


class Readiness(_Out, frozen=True, kw_only=True):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
