"""The engine's message vocabulary: commands in, events out, and the outcome of each.

Commands say what a caller wants; the engine decides and answers with events (what
happened, journaled and replayed on recovery) and an outcome (what the caller is told).
All are frozen msgspec Structs in tagged unions, so the journal and the actor hop encode
them as compact msgpack, and inbound decoding rejects unknown fields. Ids, times and
the random source are supplied by the caller; nothing here reads a clock.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Final

import msgspec

from .allocation import Allocation
from .payment_state import PaymentStatus
from .rejections import Rejection
from .retry_policy import DeclineClass, Initiator, RetrySchedule

__all__ = [
    "DESCRIPTION_CHARS_MAX",
    "AccountOpened",
    "AnswerRequest",
    "AttemptDeclined",
    "AttemptErrored",
    "AttemptOutcomeUnknown",
    "AttemptRequiresAction",
    "AttemptSucceeded",
    "CancelPayment",
    "ChargeSettled",
    "Command",
    "ConfirmPayment",
    "CreatePayment",
    "CreditApplied",
    "DisputePayment",
    "Event",
    "InvoiceIssued",
    "InvoiceVoided",
    "IssueInvoice",
    "OpenAccount",
    "Outcome",
    "OutcomeKind",
    "PaymentCanceled",
    "PaymentConfirmed",
    "PaymentCreated",
    "PaymentDisputed",
    "PaymentMethodRef",
    "PaymentMethodRemoved",
    "PaymentMethodReplaced",
    "PaymentRefunded",
    "ReadAccount",
    "RecognizeRevenue",
    "RecordOutcome",
    "RefundPayment",
    "RemovePaymentMethod",
    "ReplacePaymentMethod",
    "RequestAnswered",
    "Result",
    "RetriesExhausted",
    "RetryDeferred",
    "RetryStarted",
    "RevenuePart",
    "RevenueRecognized",
    "ReversalKind",
    "ReversalSettled",
    "ServicePeriod",
    "SettleCharge",
    "SettleReversal",
    "StartRetry",
    "VoidInvoice",
]


# The longest free-text description an invoice or a payment may carry: a line a person
# reads on a statement, a receipt and an email.
DESCRIPTION_CHARS_MAX: Final = 500


class ReversalKind(StrEnum):
    """What a processor takes back out of a payout besides charges' fees."""

    refund = "refund"
    dispute = "dispute"


class _Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ServicePeriod(_Message, frozen=True, kw_only=True):
    start: dt.date
    end: dt.date  # inclusive


class RevenuePart(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Revenue of one invoice for one calendar month of service (``YYYY-MM``), in minor
    units: positive when recognized, negative when a void takes it back."""

    invoice_id: str
    month: str
    amount_minor: int


class PaymentMethodRef(_Message, frozen=True, kw_only=True):
    """What the engine needs of a payment method: never the card number."""

    id: str
    brand: str = "visa"
    kind: str = "card"  # card | debit | wallet


# -- commands -----------------------------------------------------------------------------


class OpenAccount(_Message, tag="open_account", frozen=True, kw_only=True):
    account_id: str
    currency: str


class IssueInvoice(_Message, tag="issue_invoice", frozen=True, kw_only=True):
    account_id: str
    invoice_id: str
    number: str
    amount_minor: int
    currency: str
    due_date: dt.date
    service_period: ServicePeriod | None = None
    # What the invoice is for, in the merchant's words; shown to payers, never parsed.
    description: str | None = None


class VoidInvoice(_Message, tag="void_invoice", frozen=True, kw_only=True):
    account_id: str
    invoice_id: str


class CreatePayment(_Message, tag="create_payment", frozen=True, kw_only=True):
    account_id: str
    payment_id: str
    attempt_id: str
    idempotency_key: str
    amount_minor: int
    currency: str
    payment_method: PaymentMethodRef
    allocations: tuple[Allocation, ...] = ()
    initiator: Initiator = Initiator.customer
    schedule: RetrySchedule = RetrySchedule.one_off
    # What "the same request" means to the caller (the API hashes method, path and body):
    # a key sent again with another request is refused, whatever fields differ.
    request_hash: str = ""
    description: str | None = None


class OutcomeKind(StrEnum):
    succeeded = "succeeded"
    declined = "declined"
    errored = "errored"
    unknown = "unknown"
    # The processor holds a 3-D Secure challenge for the payer: nothing is captured yet,
    # and the challenge's outcome follows as ``succeeded`` or ``declined`` for the same
    # attempt. What the payer must do (a URL, secret-bearing) stays with the processor and
    # the adapter's ``ChargeResult.next_action``; the engine keeps only the fact.
    requires_action = "requires_action"


class RecordOutcome(_Message, tag="record_outcome", frozen=True, kw_only=True):
    """The processor's answer for one attempt: from the gateway, an inquiry or a callback."""

    account_id: str
    payment_id: str
    attempt_id: str
    outcome: OutcomeKind
    charge_id: str | None = None
    decline_code: str | None = None
    visa_category: int | None = None
    advice_code: str | None = None
    # When the processor states them, they must match the payment's.
    amount_minor: int | None = None
    currency: str | None = None
    # The caller answers the payment's creating request with the payment as this leaves
    # it: the engine keeps that answer, so the request sent again is answered the same.
    answers_request: bool = False


class StartRetry(_Message, tag="start_retry", frozen=True, kw_only=True):
    """The retry timer fired. ``attempt_id`` names the new attempt after a soft decline;
    after a technical error the errored attempt itself is sent again."""

    account_id: str
    payment_id: str
    attempt_id: str


class ReplacePaymentMethod(_Message, tag="replace_payment_method", frozen=True, kw_only=True):
    account_id: str
    payment_id: str
    attempt_id: str
    payment_method: PaymentMethodRef


class RemovePaymentMethod(_Message, tag="remove_payment_method", frozen=True, kw_only=True):
    """A saved method the account's payers may no longer pay with. Payments already made
    with it keep it (their retries too); a new payment naming it is refused."""

    account_id: str
    payment_method_id: str


class ConfirmPayment(_Message, tag="confirm_payment", frozen=True, kw_only=True):
    """The payer, present now, confirms a payment that waits for them after an attempt
    made without them was declined for authentication: ``attempt_id`` names the new,
    on-session attempt with the same payment method (the processor will challenge it)."""

    account_id: str
    payment_id: str
    attempt_id: str


class AnswerRequest(_Message, tag="answer_request", frozen=True, kw_only=True):
    """Keep the payment as it is now as the answer to its creating request (when the
    caller answers without recording an outcome); nothing if an answer is kept already."""

    account_id: str
    payment_id: str


class CancelPayment(_Message, tag="cancel_payment", frozen=True, kw_only=True):
    account_id: str
    payment_id: str


class RefundPayment(_Message, tag="refund_payment", frozen=True, kw_only=True):
    account_id: str
    payment_id: str
    refund_id: str
    amount_minor: int


class DisputePayment(_Message, tag="dispute_payment", frozen=True, kw_only=True):
    """The cardholder disputed the captured charge: the processor takes back what the payer
    still has charged and its dispute fee (``fee_minor``; 0 when not known yet, then the
    settlement report's fee is posted). Once per payment; a repeat answers ``exists``."""

    account_id: str
    payment_id: str
    # The processor's id of the dispute; the settlement report names it.
    dispute_id: str = ""
    fee_minor: int = 0


class ReadAccount(_Message, tag="read_account", frozen=True, kw_only=True):
    """A read through the account's serial order: changes nothing, answers ``exists`` with
    the ids it names, so the reply carries their snapshots and the balance as of every
    command before it (``account_not_found`` when there is no account)."""

    account_id: str
    payment_id: str | None = None
    invoice_id: str | None = None


class RecognizeRevenue(_Message, tag="recognize_revenue", frozen=True, kw_only=True):
    """Recognize what the account's invoices have earned by the end of ``through`` (a past
    day). Recognizing through a day already done posts nothing; an earlier day than one
    already done changes nothing (recognition never goes backwards)."""

    account_id: str
    through: dt.date


class SettleReversal(_Message, tag="settle_reversal", frozen=True, kw_only=True):
    """The processor withheld a refund or a dispute of a payment (``kind``) from payout
    ``payout_id``: ``amount_minor`` and, for a dispute, its fee ``fee_minor``.
    ``reversal_id`` is the processor's id of the refund or dispute; once per id."""

    account_id: str
    payment_id: str
    kind: ReversalKind
    reversal_id: str
    payout_id: str
    amount_minor: int
    fee_minor: int
    currency: str


class SettleCharge(_Message, tag="settle_charge", frozen=True, kw_only=True):
    """The processor paid a captured charge out: ``amount_minor`` less its fee reached the
    bank in payout ``payout_id``. Once per payment; a replay answers ``exists``."""

    account_id: str
    payment_id: str
    charge_id: str
    payout_id: str
    amount_minor: int
    fee_minor: int
    currency: str


Command = (
    OpenAccount | IssueInvoice | VoidInvoice | CreatePayment | RecordOutcome | StartRetry
    | ReplacePaymentMethod | CancelPayment | RefundPayment | DisputePayment | ReadAccount
    | RecognizeRevenue | SettleCharge | AnswerRequest | RemovePaymentMethod | ConfirmPayment
    | SettleReversal
)  # fmt: skip

# -- events (journaled; replayed by ``evolve``) -------------------------------------------


class _Event(msgspec.Struct, frozen=True, kw_only=True):
    at_ms: int


class AccountOpened(_Event, tag="account_opened", frozen=True, kw_only=True):
    account_id: str
    currency: str


class InvoiceIssued(_Event, tag="invoice_issued", frozen=True, kw_only=True):
    invoice_id: str
    number: str
    amount_minor: int
    due_date: dt.date
    service_period: ServicePeriod | None = None
    # Events journaled before descriptions existed decode with None.
    description: str | None = None


class CreditApplied(_Event, tag="credit_applied", frozen=True, kw_only=True):
    invoice_id: str
    amount_minor: int


class InvoiceVoided(_Event, tag="invoice_voided", frozen=True, kw_only=True):
    invoice_id: str
    # What the invoice still owed leaves receivables; what was paid on it returns to credit.
    amount_remaining_minor: int
    amount_paid_minor: int
    # What the invoice had earned by the end of the day before the void that recognition
    # had not posted yet (a run for that day may come after the void): recognized first,
    # as of that day, so the days before the void keep the revenue they earned.
    revenue_caught_up: tuple[RevenuePart, ...] = ()
    # Then all of its recognized revenue, taken back per month of service (negative).
    revenue_reversed: tuple[RevenuePart, ...] = ()


class PaymentCreated(_Event, tag="payment_created", frozen=True, kw_only=True):
    payment_id: str
    attempt_id: str
    idempotency_key: str
    amount_minor: int
    currency: str
    payment_method: PaymentMethodRef
    allocations: tuple[Allocation, ...] = ()
    initiator: Initiator = Initiator.customer
    schedule: RetrySchedule = RetrySchedule.one_off
    request_hash: str = ""
    description: str | None = None


class PaymentMethodRemoved(_Event, tag="payment_method_removed", frozen=True, kw_only=True):
    payment_method_id: str


class RequestAnswered(_Event, tag="request_answered", frozen=True, kw_only=True):
    """The payment as it stands now is the answer to the request that created it."""

    payment_id: str


class AttemptSucceeded(_Event, tag="attempt_succeeded", frozen=True, kw_only=True):
    payment_id: str
    attempt_id: str
    charge_id: str | None
    allocations: tuple[Allocation, ...]
    unapplied_minor: int


class AttemptDeclined(_Event, tag="attempt_declined", frozen=True, kw_only=True):
    """A decline. ``status`` is where it leaves the payment: retry_scheduled (with
    ``next_retry_at_ms``), requires_payment_method (hard), requires_action (the issuer
    wants the payer to authenticate) or failed (retries spent)."""

    payment_id: str
    attempt_id: str
    decline_code: str | None
    decline_class: DeclineClass
    visa_category: int | None = None
    advice_code: str | None = None
    status: PaymentStatus
    next_retry_at_ms: int | None = None


class AttemptErrored(_Event, tag="attempt_errored", frozen=True, kw_only=True):
    payment_id: str
    attempt_id: str
    decline_code: str | None
    status: PaymentStatus
    next_retry_at_ms: int | None = None


class AttemptOutcomeUnknown(_Event, tag="attempt_outcome_unknown", frozen=True, kw_only=True):
    payment_id: str
    attempt_id: str


class AttemptRequiresAction(_Event, tag="attempt_requires_action", frozen=True, kw_only=True):
    """The processor holds a challenge for the payer. No URL: it may carry a secret, and
    the processor answers it again whenever asked (docs/api.md "3-D Secure")."""

    payment_id: str
    attempt_id: str
    charge_id: str | None = None


class PaymentConfirmed(_Event, tag="payment_confirmed", frozen=True, kw_only=True):
    """A new, on-session attempt with the same method (``ConfirmPayment``)."""

    payment_id: str
    attempt_id: str


class RetryStarted(_Event, tag="retry_started", frozen=True, kw_only=True):
    payment_id: str
    attempt_id: str
    # True when the errored attempt is sent again under its own idempotency key.
    resend: bool


class RetriesExhausted(_Event, tag="retries_exhausted", frozen=True, kw_only=True):
    """The card networks' caps pushed the next retry past the policy's window."""

    payment_id: str


class RetryDeferred(_Event, tag="retry_deferred", frozen=True, kw_only=True):
    payment_id: str
    next_retry_at_ms: int


class PaymentMethodReplaced(_Event, tag="payment_method_replaced", frozen=True, kw_only=True):
    payment_id: str
    attempt_id: str
    payment_method: PaymentMethodRef


class PaymentCanceled(_Event, tag="payment_canceled", frozen=True, kw_only=True):
    payment_id: str


class PaymentRefunded(_Event, tag="payment_refunded", frozen=True, kw_only=True):
    payment_id: str
    refund_id: str
    amount_minor: int
    # The part of the refund taken back out of the account credit this payment created.
    from_credit_minor: int
    status: PaymentStatus


class PaymentDisputed(_Event, tag="payment_disputed", frozen=True, kw_only=True):
    """The defaults are what disputes journaled before they posted anything decode as."""

    payment_id: str
    dispute_id: str = ""
    # What the payer still had charged (the payment less its refunds), taken back.
    amount_minor: int = 0
    fee_minor: int = 0
    # Of ``amount_minor``: taken back out of the credit this payment left on the account,
    # and owed again on the invoices it paid; the rest is written off to ``disputes``.
    from_credit_minor: int = 0
    reopened: tuple[Allocation, ...] = ()


class ReversalSettled(_Event, tag="reversal_settled", frozen=True, kw_only=True):
    payment_id: str
    kind: ReversalKind
    reversal_id: str
    payout_id: str
    amount_minor: int
    fee_minor: int
    # A dispute's fee first learnt from the report (the dispute came without one).
    fee_posted_minor: int = 0


class RevenueRecognized(_Event, tag="revenue_recognized", frozen=True, kw_only=True):
    """Deferred revenue earned by the end of ``through``, per invoice and month of service."""

    through: dt.date
    parts: tuple[RevenuePart, ...]


class ChargeSettled(_Event, tag="charge_settled", frozen=True, kw_only=True):
    payment_id: str
    charge_id: str
    payout_id: str
    amount_minor: int
    fee_minor: int


Event = (
    AccountOpened | InvoiceIssued | CreditApplied | InvoiceVoided | PaymentCreated
    | AttemptSucceeded | AttemptDeclined | AttemptErrored | AttemptOutcomeUnknown
    | RetryStarted | RetryDeferred | RetriesExhausted | PaymentMethodReplaced | PaymentCanceled
    | PaymentRefunded | PaymentDisputed | RevenueRecognized | ChargeSettled | RequestAnswered
    | PaymentMethodRemoved | AttemptRequiresAction | PaymentConfirmed | ReversalSettled
)  # fmt: skip

# -- outcomes -------------------------------------------------------------------------------


class Result(StrEnum):
    ok = "ok"
    # The same id with the same fields: nothing new happened; the original stands.
    exists = "exists"
    rejected = "rejected"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    result: Result
    rejection: Rejection | None = None
    # The payment (or invoice) the command concerned, so callers need no second read.
    payment_id: str | None = None
    invoice_id: str | None = None
