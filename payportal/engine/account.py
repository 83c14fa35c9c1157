"""An account's money: its state, how a command is decided, and how events change it.

The model is event sourcing in two pure halves:

- ``decide(state, command, now_ms, rng)`` reads the state and returns a ``Decision``:
  the events that happen and the outcome the caller is told. It never changes the state.
  Rejections are checked in the order ``Rejection`` declares them.
- ``evolve(state, event)`` applies one event to the state and returns the ledger entry it
  posts. It makes no decisions, so replaying the journal after a checkpoint rebuilds the
  exact state, whatever the clock or random source did the first time.

Revenue (``revenue`` holds the arithmetic): every invoice posts its whole amount to
deferred revenue when issued. ``RecognizeRevenue(through)`` moves to revenue what each
invoice has earned by the end of that day — ratably per day of its service period, or all
of it on the invoice date when it has none — per month of service, so the ledger says
what is recognized and what is still deferred, by month. A day is a UTC calendar date
(the invoice date is the UTC date of its issue). Only past days are recognized, so
nothing issued later can fall on a day already recognized. A void first recognizes what
the invoice earned before the void's day that no run has posted yet (the run for
yesterday may come after a void this morning), dated the day before the void, then takes
back at once all it recognized (per month) and all it still defers. So a report as of a
day is exact once recognition has run through the day before every void since; while
the job lags further behind a void, the days in between show it as a difference. A refund changes no
invoice: it posts to ``refunds``, the contra-revenue account, on the day it happens.
``SettleCharge`` posts the processor's payout of a captured charge: its fee to ``fees``
and the rest to ``cash``, out of ``processor_clearing``.

A dispute takes back what the payer still has charged (the payment less its refunds) and
the processor's dispute fee, out of ``processor_clearing``. The payer owes it again where
that can be said: first the credit this payment left, if the account still holds it, then
the invoices it paid (newest allocation first; a void invoice stays void); what is left
(credit already spent, a void invoice's part) is written off to ``disputes``. Credit the
account holds from other payments then pays the reopened invoices, as it would any open
invoice. ``SettleReversal`` posts a refund or dispute the processor withheld from a
payout: out of ``cash`` and back into ``processor_clearing``, so clearing holds only what
the processor has not paid out or taken back yet (docs/design.md "Disputes and refunds in
the ledger"; the entries are tabled in ``ledger``).

``execute`` does both, which is what an account shard calls per command. Every change
of a payment's status goes through the tables in ``payment_state``.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from enum import StrEnum
from typing import Final

import msgspec

from .allocation import Allocation, AllocationResult, OpenInvoice, allocate, allocate_oldest_first
from .ledger import Entry, LedgerAccount, apply_entry, entry
from .messages import (
    DESCRIPTION_CHARS_MAX,
    AccountOpened,
    AnswerRequest,
    AttemptDeclined,
    AttemptErrored,
    AttemptOutcomeUnknown,
    AttemptRequiresAction,
    AttemptSucceeded,
    CancelPayment,
    ChargeSettled,
    Command,
    ConfirmPayment,
    CreatePayment,
    CreditApplied,
    DisputePayment,
    Event,
    InvoiceIssued,
    InvoiceVoided,
    IssueInvoice,
    OpenAccount,
    Outcome,
    OutcomeKind,
    PaymentCanceled,
    PaymentConfirmed,
    PaymentCreated,
    PaymentDisputed,
    PaymentMethodRef,
    PaymentMethodRemoved,
    PaymentMethodReplaced,
    PaymentRefunded,
    ReadAccount,
    RecognizeRevenue,
    RecordOutcome,
    RefundPayment,
    RemovePaymentMethod,
    ReplacePaymentMethod,
    RequestAnswered,
    Result,
    RetriesExhausted,
    RetryDeferred,
    RetryStarted,
    RevenuePart,
    RevenueRecognized,
    ReversalKind,
    ReversalSettled,
    ServicePeriod,
    SettleCharge,
    SettleReversal,
    StartRetry,
    VoidInvoice,
)
from .money import currency_is_valid
from .payment_state import (
    PAYMENT_TERMINAL,
    AttemptEvent,
    AttemptStatus,
    PaymentEvent,
    PaymentStatus,
    attempt_next,
    payment_next,
)
from .rejections import Rejection
from .retry_policy import (
    ADVICE_WAIT_MS,
    TECHNICAL,
    DeclineClass,
    Initiator,
    Reattempt,
    RetrySchedule,
    classify,
    earliest_reattempt_ms,
    is_stop_signal,
    network_for_brand,
    next_delay_ms,
    policy_for,
)
from .revenue import RevenueInvoice, recognized_by_month

__all__ = [
    "AccountState",
    "Attempt",
    "Decision",
    "Invoice",
    "InvoiceStatus",
    "Payment",
    "SettledReversal",
    "check_invariants",
    "decide",
    "evolve",
    "execute",
    "preview_allocation",
    "utc_date",
]

# Card reattempt history older than the longest network window is never consulted again.
REATTEMPT_HISTORY_MS: Final = 30 * 24 * 3600 * 1000
IDEMPOTENCY_KEY_LENGTH_MAX: Final = 255
# Unicode's control characters (category Cc): C0, DEL and C1.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DAY_MS: Final = 86_400_000
_EPOCH: Final = dt.date(1970, 1, 1)


def utc_date(at_ms: int) -> dt.date:
    """The UTC calendar date of an instant, in integers (the revenue reporting day)."""
    return _EPOCH + dt.timedelta(days=at_ms // _DAY_MS)


class InvoiceStatus(StrEnum):
    open = "open"
    paid = "paid"
    void = "void"


class Invoice(msgspec.Struct, kw_only=True):
    invoice_id: str
    number: str
    amount_due_minor: int
    due_date: dt.date
    issued_at_ms: int
    service_period: ServicePeriod | None = None
    # Checkpoints written before descriptions existed decode with None.
    description: str | None = None
    amount_paid_minor: int = 0
    status: InvoiceStatus = InvoiceStatus.open
    # Revenue recognized so far per month of service (YYYY-MM); emptied by a void.
    recognized_by_month: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def amount_remaining_minor(self) -> int:
        if self.status is InvoiceStatus.void:
            return 0
        return self.amount_due_minor - self.amount_paid_minor

    @property
    def amount_recognized_minor(self) -> int:
        return sum(self.recognized_by_month.values())

    @property
    def issued_on(self) -> dt.date:
        return utc_date(self.issued_at_ms)

    def revenue(self) -> RevenueInvoice:
        return RevenueInvoice(
            invoice_id=self.invoice_id, amount_minor=self.amount_due_minor,
            invoice_date=self.issued_on, service_period=self.service_period,
        )  # fmt: skip


class Attempt(msgspec.Struct, kw_only=True):
    attempt_id: str
    payment_method_id: str
    created_at_ms: int
    status: AttemptStatus = AttemptStatus.processing
    decline_code: str | None = None
    decline_class: DeclineClass | None = None
    visa_category: int | None = None
    advice_code: str | None = None
    charge_id: str | None = None
    # Times this attempt was sent under its one processor idempotency key.
    sends: int = 1
    # Made without the payer present (a retry, a merchant-initiated or autopay charge):
    # if it needs authentication, the payer is asked to come back (docs/api.md "3-D
    # Secure"). Derived from the events that create attempts, so replay agrees.
    off_session: bool = False


class SettledReversal(msgspec.Struct, kw_only=True, array_like=True):
    """A refund or dispute of a payment withheld from a payout (``SettleReversal``)."""

    payout_id: str
    amount_minor: int
    fee_minor: int


class Payment(msgspec.Struct, kw_only=True):
    payment_id: str
    idempotency_key: str
    amount_minor: int
    currency: str
    payment_method: PaymentMethodRef
    requested_allocations: tuple[Allocation, ...]
    initiator: Initiator
    schedule: RetrySchedule
    created_at_ms: int
    attempts: list[Attempt]
    status: PaymentStatus = PaymentStatus.processing
    allocations: tuple[Allocation, ...] = ()
    amount_unapplied_minor: int = 0
    amount_refunded_minor: int = 0
    refunded_from_credit_minor: int = 0
    refunds: dict[str, int] = msgspec.field(default_factory=dict)
    next_retry_at_ms: int | None = None
    finished_at_ms: int | None = None
    # The current series of attempts on one payment method, for the retry policy's caps.
    series_started_at_ms: int = 0
    series_attempts: int = 1
    # Set once the processor paid the charge out (``SettleCharge``).
    payout_id: str | None = None
    fee_minor: int = 0
    # The creating request's hash (``CreatePayment.request_hash``), and the payment as it
    # was when that request was answered (``RequestAnswered``): the same request sent again
    # is answered from this copy, byte for byte, however the payment moved on since.
    request_hash: str = ""
    answer: Payment | None = None
    description: str | None = None
    # The dispute (``PaymentDisputed``): what it took back, its fee, and how the payer owes
    # it again (credit taken back, invoices reopened).
    dispute_id: str | None = None
    disputed_minor: int = 0
    dispute_fee_minor: int = 0
    disputed_from_credit_minor: int = 0
    reopened: tuple[Allocation, ...] = ()
    # Refunds and the dispute withheld from payouts, by "kind:processor's id".
    reversals: dict[str, SettledReversal] = msgspec.field(default_factory=dict)

    @property
    def disputed_written_off_minor(self) -> int:
        reopened_minor = sum(a.amount_minor for a in self.reopened)
        return self.disputed_minor - self.disputed_from_credit_minor - reopened_minor

    def reversals_minor(self, kind: ReversalKind) -> int:
        """Amount and fee withheld from payouts for refunds or for the dispute."""
        prefix = f"{kind.value}:"
        return sum(r.amount_minor + r.fee_minor for k, r in self.reversals.items()
                   if k.startswith(prefix))  # fmt: skip

    @property
    def captured_charge_id(self) -> str | None:
        for attempt in self.attempts:
            if attempt.status is AttemptStatus.succeeded:
                return attempt.charge_id
        return None

    @property
    def captured(self) -> bool:
        return any(a.status is AttemptStatus.succeeded for a in self.attempts)

    @property
    def amount_applied_minor(self) -> int:
        return sum(a.amount_minor for a in self.allocations)

    @property
    def current_attempt(self) -> Attempt:
        return self.attempts[-1]

    @property
    def processing_ms(self) -> int | None:
        if self.finished_at_ms is None:
            return None
        return self.finished_at_ms - self.created_at_ms


# Deep copies of a payment as its kept answer (see ``RequestAnswered``), by round trip.
_answer_encoder: Final = msgspec.msgpack.Encoder()
_answer_decoder: Final = msgspec.msgpack.Decoder(Payment)


class AccountState(msgspec.Struct, kw_only=True):
    account_id: str
    currency: str
    version: int = 0
    credit_minor: int = 0
    invoices: dict[str, Invoice] = msgspec.field(default_factory=dict)
    payments: dict[str, Payment] = msgspec.field(default_factory=dict)
    idempotency: dict[str, str] = msgspec.field(default_factory=dict)
    refunds: dict[str, str] = msgspec.field(default_factory=dict)
    ledger: dict[LedgerAccount, int] = msgspec.field(default_factory=dict)
    reattempts: dict[str, list[Reattempt]] = msgspec.field(default_factory=dict)
    # The latest day revenue was recognized through (None: never).
    recognized_through: dt.date | None = None
    # Saved methods taken away from the account (``RemovePaymentMethod``): never again the
    # method of a new payment. The methods themselves live outside the engine.
    removed_methods: set[str] = msgspec.field(default_factory=set)

    @property
    def outstanding_minor(self) -> int:
        return self.ledger.get(LedgerAccount.accounts_receivable, 0)

    def open_invoices(self, *, excluding: str | None = None) -> list[OpenInvoice]:
        return [
            OpenInvoice(
                invoice_id=i.invoice_id, number=i.number, due_date=i.due_date,
                amount_remaining_minor=i.amount_remaining_minor,
            )
            for i in self.invoices.values()
            if i.status is InvoiceStatus.open and i.invoice_id != excluding
        ]  # fmt: skip


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    events: tuple[Event, ...]
    outcome: Outcome


def _outcome(result: Result, rejection: Rejection | None, ids: dict[str, str]) -> Outcome:
    return Outcome(
        result=result, rejection=rejection,
        payment_id=ids.get("payment_id"), invoice_id=ids.get("invoice_id"),
    )  # fmt: skip


def _ok(events: tuple[Event, ...], **ids: str) -> Decision:
    return Decision(events=events, outcome=_outcome(Result.ok, None, ids))


def _exists(**ids: str) -> Decision:
    return Decision(events=(), outcome=_outcome(Result.exists, None, ids))


def _rejected(rejection: Rejection, **ids: str) -> Decision:
    return Decision(events=(), outcome=_outcome(Result.rejected, rejection, ids))


# -- decide ---------------------------------------------------------------------------------


def decide(
    state: AccountState | None, command: Command, now_ms: int, rng: random.Random
) -> Decision:
    """Decide ``command`` against ``state`` (None: the account was never opened)."""
    if isinstance(command, OpenAccount):
        return _decide_open_account(state, command, now_ms)
    if state is None:
        if isinstance(command, IssueInvoice):
            rejection = _invoice_field_rejection(command)
            if rejection is not None:
                return _rejected(rejection)
        if isinstance(command, CreatePayment):
            rejection = _payment_field_rejection(command)
            if rejection is not None:
                return _rejected(rejection)
        if isinstance(command, RefundPayment) and command.amount_minor <= 0:
            return _rejected(Rejection.amount_must_be_positive)
        if isinstance(command, SettleCharge | SettleReversal):
            rejection = _settlement_field_rejection(command)
            if rejection is not None:
                return _rejected(rejection)
        return _rejected(Rejection.account_not_found)
    assert state.account_id == command.account_id
    if isinstance(command, IssueInvoice):
        return _decide_issue_invoice(state, command, now_ms)
    if isinstance(command, VoidInvoice):
        return _decide_void_invoice(state, command, now_ms)
    if isinstance(command, CreatePayment):
        return _decide_create_payment(state, command, now_ms)
    if isinstance(command, RecordOutcome):
        decision = _decide_record_outcome(state, command, now_ms, rng)
        if command.answers_request:
            return _answering(state, decision, command.payment_id, now_ms)
        return decision
    if isinstance(command, RemovePaymentMethod):
        if command.payment_method_id in state.removed_methods:
            return _exists()
        removed = PaymentMethodRemoved(at_ms=now_ms, payment_method_id=command.payment_method_id)
        return _ok((removed,))
    if isinstance(command, AnswerRequest):
        if command.payment_id not in state.payments:
            return _rejected(Rejection.payment_not_found, payment_id=command.payment_id)
        return _answering(state, _exists(payment_id=command.payment_id), command.payment_id,
                          now_ms)  # fmt: skip
    if isinstance(command, StartRetry):
        return _decide_start_retry(state, command, now_ms)
    if isinstance(command, ConfirmPayment):
        return _decide_confirm_payment(state, command, now_ms)
    if isinstance(command, ReplacePaymentMethod):
        return _decide_replace_payment_method(state, command, now_ms)
    if isinstance(command, CancelPayment):
        return _decide_cancel_payment(state, command, now_ms)
    if isinstance(command, RefundPayment):
        return _decide_refund_payment(state, command, now_ms)
    if isinstance(command, RecognizeRevenue):
        return _decide_recognize_revenue(state, command, now_ms)
    if isinstance(command, SettleCharge):
        return _decide_settle_charge(state, command, now_ms)
    if isinstance(command, SettleReversal):
        return _decide_settle_reversal(state, command, now_ms)
    if isinstance(command, ReadAccount):
        ids = {k: v for k, v in (("payment_id", command.payment_id),
                                  ("invoice_id", command.invoice_id)) if v is not None}  # fmt: skip
        return _exists(**ids)
    assert isinstance(command, DisputePayment), command
    return _decide_dispute_payment(state, command, now_ms)


def _answering(state: AccountState, decision: Decision, payment_id: str, now_ms: int) -> Decision:
    """``decision``, and then the payment as it leaves it kept as its request's answer
    (once: a payment already answered keeps its first answer)."""
    payment = state.payments.get(payment_id)
    if payment is None or payment.answer is not None or decision.outcome.result is Result.rejected:
        return decision
    answered = RequestAnswered(at_ms=now_ms, payment_id=payment_id)
    outcome = decision.outcome
    if outcome.result is Result.exists:  # something new happens now: the answer is kept
        outcome = _outcome(Result.ok, None, {"payment_id": payment_id})
    return Decision(events=(*decision.events, answered), outcome=outcome)


def _decide_open_account(state: AccountState | None, command: OpenAccount, now_ms: int) -> Decision:
    if not currency_is_valid(command.currency):
        return _rejected(Rejection.currency_must_be_valid)
    if state is not None:
        if state.currency != command.currency:
            return _rejected(Rejection.exists_with_different_currency)
        return _exists()
    event = AccountOpened(at_ms=now_ms, account_id=command.account_id, currency=command.currency)
    return _ok((event,))


def _description_is_valid(description: str | None) -> bool:
    """At most ``DESCRIPTION_CHARS_MAX`` characters, none of them a control character:
    a description goes into pages, PDFs, CSV cells and emails as one line of text."""
    if description is None:
        return True
    return len(description) <= DESCRIPTION_CHARS_MAX and _CONTROL.search(description) is None


def _invoice_field_rejection(command: IssueInvoice) -> Rejection | None:
    if command.amount_minor <= 0:
        return Rejection.amount_must_be_positive
    if not currency_is_valid(command.currency):
        return Rejection.currency_must_be_valid
    period = command.service_period
    if period is not None and period.end < period.start:
        return Rejection.service_period_must_be_ordered
    if not _description_is_valid(command.description):
        return Rejection.description_must_be_valid
    return None


def _decide_issue_invoice(state: AccountState, command: IssueInvoice, now_ms: int) -> Decision:
    rejection = _invoice_field_rejection(command)
    if rejection is not None:
        return _rejected(rejection)
    ids = {"invoice_id": command.invoice_id}
    existing = state.invoices.get(command.invoice_id)
    if existing is not None:
        if command.currency != state.currency:
            return _rejected(Rejection.exists_with_different_currency, **ids)
        if existing.amount_due_minor != command.amount_minor:
            return _rejected(Rejection.exists_with_different_amount, **ids)
        if existing.due_date != command.due_date:
            return _rejected(Rejection.exists_with_different_due_date, **ids)
        if existing.number != command.number:
            return _rejected(Rejection.exists_with_different_number, **ids)
        if existing.service_period != command.service_period:
            return _rejected(Rejection.exists_with_different_service_period, **ids)
        if existing.description != command.description:
            return _rejected(Rejection.exists_with_different_description, **ids)
        return _exists(**ids)
    if command.currency != state.currency:
        return _rejected(Rejection.currency_must_match_account, **ids)
    events: list[Event] = [
        InvoiceIssued(
            at_ms=now_ms, invoice_id=command.invoice_id, number=command.number,
            amount_minor=command.amount_minor, due_date=command.due_date,
            service_period=command.service_period, description=command.description,
        )
    ]  # fmt: skip
    # Credit is applied to new invoices at once (docs/api.md), so credit and an open balance
    # never stand side by side.
    applied_minor = min(state.credit_minor, command.amount_minor)
    if applied_minor > 0:
        events.append(
            CreditApplied(at_ms=now_ms, invoice_id=command.invoice_id, amount_minor=applied_minor)
        )
    return _ok(tuple(events), **ids)


def _decide_void_invoice(state: AccountState, command: VoidInvoice, now_ms: int) -> Decision:
    ids = {"invoice_id": command.invoice_id}
    invoice = state.invoices.get(command.invoice_id)
    if invoice is None:
        return _rejected(Rejection.invoice_not_found, **ids)
    if invoice.status is InvoiceStatus.void:
        return _exists(**ids)
    if invoice.status is not InvoiceStatus.open:
        return _rejected(Rejection.invoice_must_be_open, **ids)
    # The days before the void keep what they earned, even if their recognition run has
    # not come yet; the void takes back everything recognized from its own day.
    earned = recognized_by_month(invoice.revenue(), utc_date(now_ms) - dt.timedelta(days=1))
    caught_up: list[RevenuePart] = []
    recognized = dict(invoice.recognized_by_month)
    for month in sorted(earned):
        delta_minor = earned[month] - recognized.get(month, 0)
        if delta_minor > 0:
            caught_up.append(RevenuePart(invoice_id=invoice.invoice_id, month=month,
                                         amount_minor=delta_minor))  # fmt: skip
            recognized[month] = recognized.get(month, 0) + delta_minor
    reversed_parts = tuple(
        RevenuePart(invoice_id=invoice.invoice_id, month=month, amount_minor=-amount_minor)
        for month, amount_minor in sorted(recognized.items())
        if amount_minor
    )
    events: list[Event] = [
        InvoiceVoided(
            at_ms=now_ms, invoice_id=invoice.invoice_id,
            amount_remaining_minor=invoice.amount_remaining_minor,
            amount_paid_minor=invoice.amount_paid_minor, revenue_caught_up=tuple(caught_up),
            revenue_reversed=reversed_parts,
        )
    ]  # fmt: skip
    # What was paid on a voided invoice returns to credit, and credit goes at once to the
    # account's other open invoices.
    credit_minor = state.credit_minor + invoice.amount_paid_minor
    split = allocate_oldest_first(state.open_invoices(excluding=invoice.invoice_id), credit_minor)
    events.extend(
        CreditApplied(at_ms=now_ms, invoice_id=a.invoice_id, amount_minor=a.amount_minor)
        for a in split.allocations
    )
    return _ok(tuple(events), **ids)


def _key_is_valid(key: str) -> bool:
    # Printable ASCII (space to tilde), checked by two C loops rather than one per character.
    return 1 <= len(key) <= IDEMPOTENCY_KEY_LENGTH_MAX and key.isascii() and key.isprintable()


def _payment_field_rejection(command: CreatePayment) -> Rejection | None:
    if command.amount_minor <= 0:
        return Rejection.amount_must_be_positive
    if not currency_is_valid(command.currency):
        return Rejection.currency_must_be_valid
    if not _key_is_valid(command.idempotency_key):
        return Rejection.idempotency_key_must_be_valid
    if any(a.amount_minor <= 0 for a in command.allocations):
        return Rejection.allocation_amount_must_be_positive
    if len({a.invoice_id for a in command.allocations}) != len(command.allocations):
        return Rejection.allocation_invoice_must_be_unique
    if sum(a.amount_minor for a in command.allocations) > command.amount_minor:
        return Rejection.allocations_must_not_exceed_amount
    if not _description_is_valid(command.description):
        return Rejection.description_must_be_valid
    return None


def _decide_create_payment(state: AccountState, command: CreatePayment, now_ms: int) -> Decision:
    rejection = _payment_field_rejection(command)
    if rejection is not None:
        return _rejected(rejection)
    original_id = state.idempotency.get(command.idempotency_key)
    if original_id is not None:
        original = state.payments[original_id]
        ids = {"payment_id": original_id}
        if command.request_hash or original.request_hash:
            # The caller said what "the same request" is; fields it derived from the state
            # (an allocation chosen when the first was sent) may differ and still be it.
            if command.request_hash != original.request_hash:
                return _rejected(Rejection.exists_with_different_request, **ids)
            return _exists(**ids)
        if original.currency != command.currency:
            return _rejected(Rejection.exists_with_different_currency, **ids)
        if original.amount_minor != command.amount_minor:
            return _rejected(Rejection.exists_with_different_amount, **ids)
        if original.payment_method.id != command.payment_method.id:
            return _rejected(Rejection.exists_with_different_payment_method, **ids)
        if original.requested_allocations != command.allocations:
            return _rejected(Rejection.exists_with_different_allocations, **ids)
        # Both change how the payment would be retried (Visa's per-initiator counters,
        # the policy's caps): a replay must not hide that something else was asked for.
        if original.initiator is not command.initiator:
            return _rejected(Rejection.exists_with_different_initiator, **ids)
        if original.schedule is not command.schedule:
            return _rejected(Rejection.exists_with_different_schedule, **ids)
        if original.description != command.description:
            return _rejected(Rejection.exists_with_different_description, **ids)
        return _exists(**ids)
    ids = {"payment_id": command.payment_id}
    if command.payment_id in state.payments:
        return _rejected(Rejection.exists_with_different_idempotency_key, **ids)
    if command.currency != state.currency:
        return _rejected(Rejection.currency_must_match_account, **ids)
    for request in command.allocations:
        if request.invoice_id not in state.invoices:
            return _rejected(Rejection.invoice_not_found, **ids)
    if command.payment_method.id in state.removed_methods:
        return _rejected(Rejection.payment_method_not_found, **ids)
    for request in command.allocations:
        invoice = state.invoices[request.invoice_id]
        if invoice.status is not InvoiceStatus.open:
            return _rejected(Rejection.invoice_must_be_open, **ids)
        if request.amount_minor > invoice.amount_remaining_minor:
            return _rejected(Rejection.allocation_must_not_exceed_invoice_remaining, **ids)
    event = PaymentCreated(
        at_ms=now_ms, payment_id=command.payment_id, attempt_id=command.attempt_id,
        idempotency_key=command.idempotency_key, amount_minor=command.amount_minor,
        currency=command.currency, payment_method=command.payment_method,
        allocations=command.allocations, initiator=command.initiator, schedule=command.schedule,
        request_hash=command.request_hash,
        description=command.description,
    )  # fmt: skip
    return _ok((event,), **ids)


# Outcomes that carry no more than what an attempt already has: a duplicate or a late
# echo. They are answered ``exists`` so they never move anything backwards.
_NO_NEWS: Final[dict[AttemptStatus, frozenset[OutcomeKind]]] = {
    AttemptStatus.succeeded: frozenset({OutcomeKind.succeeded, OutcomeKind.errored,
                                        OutcomeKind.unknown, OutcomeKind.requires_action}),
    AttemptStatus.declined: frozenset({OutcomeKind.declined, OutcomeKind.errored,
                                       OutcomeKind.unknown, OutcomeKind.requires_action}),
    AttemptStatus.errored: frozenset({OutcomeKind.errored, OutcomeKind.unknown}),
    AttemptStatus.unknown: frozenset({OutcomeKind.unknown}),
    # The challenge is pending: the processor neither failed nor went silent on it.
    AttemptStatus.requires_action: frozenset({OutcomeKind.requires_action,
                                              OutcomeKind.errored, OutcomeKind.unknown}),
    AttemptStatus.processing: frozenset(),
}  # fmt: skip

_ATTEMPT_EVENT_FOR: Final[dict[OutcomeKind, AttemptEvent]] = {
    OutcomeKind.succeeded: AttemptEvent.succeeded,
    OutcomeKind.declined: AttemptEvent.declined,
    OutcomeKind.errored: AttemptEvent.errored,
    OutcomeKind.unknown: AttemptEvent.unknown,
    OutcomeKind.requires_action: AttemptEvent.requires_action,
}


def _find_attempt(payment: Payment, attempt_id: str) -> Attempt | None:
    for attempt in reversed(payment.attempts):
        if attempt.attempt_id == attempt_id:
            return attempt
    return None


def _decide_record_outcome(
    state: AccountState, command: RecordOutcome, now_ms: int, rng: random.Random
) -> Decision:
    ids = {"payment_id": command.payment_id}
    if command.currency is not None and not currency_is_valid(command.currency):
        return _rejected(Rejection.currency_must_be_valid, **ids)
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    attempt = _find_attempt(payment, command.attempt_id)
    if attempt is None:
        return _rejected(Rejection.attempt_not_found, **ids)
    if command.outcome in _NO_NEWS[attempt.status]:
        if (
            attempt.status is AttemptStatus.declined
            and command.outcome is OutcomeKind.declined
            and command.decline_code != attempt.decline_code
        ):
            return _rejected(Rejection.exists_with_different_outcome, **ids)
        return _exists(**ids)
    if attempt_next(attempt.status, _ATTEMPT_EVENT_FOR[command.outcome]) is None:
        return _rejected(Rejection.exists_with_different_outcome, **ids)
    if command.currency is not None and command.currency != payment.currency:
        return _rejected(Rejection.currency_must_match_account, **ids)
    if command.amount_minor is not None and command.amount_minor != payment.amount_minor:
        return _rejected(Rejection.amount_must_match_payment, **ids)
    # Only the latest attempt can still be open: a new one starts only after the previous
    # one ended in a decline, which is final.
    assert attempt is payment.current_attempt, (payment.payment_id, attempt.attempt_id)

    event: Event
    if command.outcome is OutcomeKind.unknown:
        event = AttemptOutcomeUnknown(
            at_ms=now_ms, payment_id=payment.payment_id, attempt_id=attempt.attempt_id
        )
        return _transition(payment, PaymentEvent.attempt_outcome_unknown, event, ids)
    if command.outcome is OutcomeKind.requires_action:
        event = AttemptRequiresAction(
            at_ms=now_ms, payment_id=payment.payment_id, attempt_id=attempt.attempt_id,
            charge_id=command.charge_id,
        )  # fmt: skip
        return _transition(payment, PaymentEvent.attempt_requires_action, event, ids)
    if command.outcome is OutcomeKind.succeeded:
        split = _allocate_payment(state, payment)
        event = AttemptSucceeded(
            at_ms=now_ms, payment_id=payment.payment_id, attempt_id=attempt.attempt_id,
            charge_id=command.charge_id, allocations=split.allocations,
            unapplied_minor=split.unapplied_minor,
        )  # fmt: skip
        return _transition(payment, PaymentEvent.attempt_succeeded, event, ids)

    decline_class = classify(
        command.decline_code, visa_category=command.visa_category, advice_code=command.advice_code
    )
    # An "errored" answer that still carries a network stop signal is a hard decline: the
    # signal wins over everything that would retry.
    stop = is_stop_signal(visa_category=command.visa_category, advice_code=command.advice_code)
    technical = command.outcome is OutcomeKind.errored or decline_class is DeclineClass.technical
    if technical and not stop:
        delay_ms = next_delay_ms(TECHNICAL, attempt.sends, rng)
        status = PaymentStatus.failed if delay_ms is None else PaymentStatus.retry_scheduled
        event = AttemptErrored(
            at_ms=now_ms, payment_id=payment.payment_id, attempt_id=attempt.attempt_id,
            decline_code=command.decline_code, status=status,
            next_retry_at_ms=None if delay_ms is None else now_ms + delay_ms,
        )  # fmt: skip
        payment_event = (
            PaymentEvent.attempt_failed_final if delay_ms is None
            else PaymentEvent.attempt_errored_retryable
        )  # fmt: skip
        return _transition(payment, payment_event, event, ids)

    next_retry_at_ms = None
    if decline_class is DeclineClass.soft:
        next_retry_at_ms = _schedule_soft_retry(state, payment, command.advice_code, now_ms, rng)
    if decline_class is DeclineClass.hard:
        status = PaymentStatus.requires_payment_method
    elif decline_class is DeclineClass.authentication:
        # Never retried without the payer: the same issuer would decline the same way.
        status = PaymentStatus.requires_action
    elif next_retry_at_ms is None:
        status = PaymentStatus.failed
    else:
        status = PaymentStatus.retry_scheduled
    payment_event = _declined_payment_event(status)
    event = AttemptDeclined(
        at_ms=now_ms, payment_id=payment.payment_id, attempt_id=attempt.attempt_id,
        decline_code=command.decline_code, decline_class=decline_class,
        visa_category=command.visa_category, advice_code=command.advice_code,
        status=status, next_retry_at_ms=next_retry_at_ms,
    )  # fmt: skip
    return _transition(payment, payment_event, event, ids)


def _schedule_soft_retry(
    state: AccountState, payment: Payment, advice_code: str | None, now_ms: int,
    rng: random.Random,
) -> int | None:  # fmt: skip
    """When the next attempt after a soft decline may run, or None if none may."""
    policy = policy_for(payment.schedule)
    delay_ms = next_delay_ms(policy, payment.series_attempts, rng)
    if delay_ms is None:
        return None
    at_ms = max(now_ms + delay_ms, now_ms + ADVICE_WAIT_MS.get(advice_code or "", 0))
    at_ms = _earliest_allowed_by_network(state, payment, at_ms)
    if at_ms > payment.series_started_at_ms + policy.window_ms:
        return None
    return at_ms


def _earliest_allowed_by_network(state: AccountState, payment: Payment, at_ms: int) -> int:
    method = payment.payment_method
    return earliest_reattempt_ms(
        network_for_brand(method.brand),
        payment.initiator,
        state.reattempts.get(method.id, ()),
        at_ms,
    )


def _transition(
    payment: Payment, payment_event: PaymentEvent, event: Event, ids: dict[str, str]
) -> Decision:
    if payment_next(payment.status, payment_event) is None:
        return _rejected(Rejection.payment_status_must_allow_transition, **ids)
    return _ok((event,), **ids)


def _allocate_payment(state: AccountState, payment: Payment) -> AllocationResult:
    return allocate(state.open_invoices(), payment.amount_minor, payment.requested_allocations)


def _decide_start_retry(state: AccountState, command: StartRetry, now_ms: int) -> Decision:
    ids = {"payment_id": command.payment_id}
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    current = payment.current_attempt
    if payment.status is PaymentStatus.processing and current.attempt_id == command.attempt_id:
        return _exists(**ids)  # the timer fired twice
    if payment.status is not PaymentStatus.retry_scheduled:
        return _rejected(Rejection.payment_status_must_allow_transition, **ids)
    assert payment.next_retry_at_ms is not None
    if now_ms < payment.next_retry_at_ms:
        return _rejected(Rejection.retry_must_be_due, **ids)
    if current.status is AttemptStatus.errored:
        event: Event = RetryStarted(
            at_ms=now_ms, payment_id=payment.payment_id, attempt_id=current.attempt_id, resend=True
        )
        return _transition(payment, PaymentEvent.retry_started, event, ids)
    assert current.status is AttemptStatus.declined, current
    # Other payments on the same card may have used up the networks' caps since this
    # retry was scheduled; they are checked again at the moment it would run.
    allowed_at_ms = _earliest_allowed_by_network(state, payment, now_ms)
    if allowed_at_ms > now_ms:
        policy = policy_for(payment.schedule)
        if allowed_at_ms > payment.series_started_at_ms + policy.window_ms:
            event = RetriesExhausted(at_ms=now_ms, payment_id=payment.payment_id)
            return _transition(payment, PaymentEvent.retries_exhausted, event, ids)
        event = RetryDeferred(
            at_ms=now_ms, payment_id=payment.payment_id, next_retry_at_ms=allowed_at_ms
        )
        return _transition(payment, PaymentEvent.retry_deferred, event, ids)
    if _find_attempt(payment, command.attempt_id) is not None:
        return _rejected(Rejection.exists_with_different_outcome, **ids)
    event = RetryStarted(
        at_ms=now_ms, payment_id=payment.payment_id, attempt_id=command.attempt_id, resend=False
    )
    return _transition(payment, PaymentEvent.retry_started, event, ids)


def _decide_confirm_payment(state: AccountState, command: ConfirmPayment, now_ms: int) -> Decision:
    ids = {"payment_id": command.payment_id}
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    # A late copy of this confirmation (or of anything that used the id) starts nothing.
    seen = _find_attempt(payment, command.attempt_id)
    if seen is not None:
        if seen.payment_method_id != payment.payment_method.id or seen.off_session:
            return _rejected(Rejection.exists_with_different_outcome, **ids)
        return _exists(**ids)
    if payment_next(payment.status, PaymentEvent.payment_confirmed) is None:
        return _rejected(Rejection.payment_status_must_allow_transition, **ids)
    # A pending challenge may still capture: the payer completes it, never a second one.
    if payment.current_attempt.status is not AttemptStatus.declined:
        return _rejected(Rejection.attempt_outcome_must_be_known, **ids)
    event = PaymentConfirmed(
        at_ms=now_ms, payment_id=payment.payment_id, attempt_id=command.attempt_id
    )
    return _ok((event,), **ids)


def _decide_replace_payment_method(
    state: AccountState, command: ReplacePaymentMethod, now_ms: int
) -> Decision:
    ids = {"payment_id": command.payment_id}
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    # Any attempt of this payment, not just the current one: a late copy of an earlier
    # replacement must not start a second attempt under an id already used.
    seen = _find_attempt(payment, command.attempt_id)
    if seen is not None:
        if seen.payment_method_id != command.payment_method.id:
            return _rejected(Rejection.exists_with_different_payment_method, **ids)
        return _exists(**ids)
    if command.payment_method.id in state.removed_methods:
        return _rejected(Rejection.payment_method_not_found, **ids)
    if payment_next(payment.status, PaymentEvent.payment_method_replaced) is None:
        return _rejected(Rejection.payment_status_must_allow_transition, **ids)
    # A pending 3-D Secure challenge may still capture: no second attempt beside it.
    if payment.current_attempt.status is AttemptStatus.requires_action:
        return _rejected(Rejection.attempt_outcome_must_be_known, **ids)
    event = PaymentMethodReplaced(
        at_ms=now_ms, payment_id=payment.payment_id, attempt_id=command.attempt_id,
        payment_method=command.payment_method,
    )  # fmt: skip
    return _transition(payment, PaymentEvent.payment_method_replaced, event, ids)


def _decide_cancel_payment(state: AccountState, command: CancelPayment, now_ms: int) -> Decision:
    ids = {"payment_id": command.payment_id}
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    if payment.status is PaymentStatus.canceled:
        return _exists(**ids)
    if payment_next(payment.status, PaymentEvent.canceled) is None:
        return _rejected(Rejection.payment_status_must_allow_transition, **ids)
    # An errored attempt is sent again under its key and may yet capture: cancel only once
    # the processor has said no.
    if payment.current_attempt.status is not AttemptStatus.declined:
        return _rejected(Rejection.attempt_outcome_must_be_known, **ids)
    return _ok((PaymentCanceled(at_ms=now_ms, payment_id=payment.payment_id),), **ids)


def _decide_refund_payment(state: AccountState, command: RefundPayment, now_ms: int) -> Decision:
    ids = {"payment_id": command.payment_id}
    if command.amount_minor <= 0:
        return _rejected(Rejection.amount_must_be_positive, **ids)
    refunded_payment_id = state.refunds.get(command.refund_id)
    if refunded_payment_id is not None:
        if refunded_payment_id != command.payment_id:
            return _rejected(Rejection.exists_with_different_payment, **ids)
        if state.payments[refunded_payment_id].refunds[command.refund_id] != command.amount_minor:
            return _rejected(Rejection.exists_with_different_amount, **ids)
        return _exists(**ids)
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    refundable_minor = payment.amount_minor - payment.amount_refunded_minor
    fully = command.amount_minor == refundable_minor
    payment_event = PaymentEvent.refunded_fully if fully else PaymentEvent.refunded_partially
    if payment_next(payment.status, payment_event) is None:
        return _rejected(Rejection.payment_status_must_allow_transition, **ids)
    if command.amount_minor > refundable_minor:
        return _rejected(Rejection.refund_must_not_exceed_refundable, **ids)
    # A refund first takes back the credit this payment left on the account, if the
    # account still holds it; the rest is a refund of revenue.
    from_credit_minor = min(
        command.amount_minor,
        state.credit_minor,
        payment.amount_unapplied_minor - payment.refunded_from_credit_minor,
    )
    event = PaymentRefunded(
        at_ms=now_ms, payment_id=payment.payment_id, refund_id=command.refund_id,
        amount_minor=command.amount_minor, from_credit_minor=from_credit_minor,
        status=PaymentStatus.refunded if fully else PaymentStatus.partially_refunded,
    )  # fmt: skip
    return _ok((event,), **ids)


def _decide_recognize_revenue(
    state: AccountState, command: RecognizeRevenue, now_ms: int
) -> Decision:
    if command.through >= utc_date(now_ms):
        return _rejected(Rejection.recognition_date_must_be_past)
    # Never backwards: an earlier day than one already done recognizes as of that one.
    through = command.through
    if state.recognized_through is not None and state.recognized_through > through:
        through = state.recognized_through
    parts: list[RevenuePart] = []
    for invoice in state.invoices.values():
        if invoice.status is InvoiceStatus.void:
            continue
        if invoice.amount_recognized_minor == invoice.amount_due_minor:
            continue  # all of it earned already
        earned = recognized_by_month(invoice.revenue(), through)
        for month in sorted(earned):
            delta_minor = earned[month] - invoice.recognized_by_month.get(month, 0)
            # Earned-by-a-day only grows with the day, and days only move forward.
            assert delta_minor >= 0, (invoice.invoice_id, month, delta_minor)
            if delta_minor:
                parts.append(RevenuePart(invoice_id=invoice.invoice_id, month=month,
                                         amount_minor=delta_minor))  # fmt: skip
    if not parts:
        return _exists()
    return _ok((RevenueRecognized(at_ms=now_ms, through=through, parts=tuple(parts)),))


def _settlement_field_rejection(command: SettleCharge | SettleReversal) -> Rejection | None:
    if command.amount_minor <= 0:
        return Rejection.amount_must_be_positive
    if not currency_is_valid(command.currency):
        return Rejection.currency_must_be_valid
    if isinstance(command, SettleReversal):
        # A dispute's fee is on top of the amount and may exceed it; a refund has none.
        fee_ok = command.fee_minor == 0 if command.kind is ReversalKind.refund else (
            command.fee_minor >= 0)  # fmt: skip
        return None if fee_ok else Rejection.fee_must_be_within_amount
    if not 0 <= command.fee_minor <= command.amount_minor:
        return Rejection.fee_must_be_within_amount
    return None


def _decide_settle_charge(state: AccountState, command: SettleCharge, now_ms: int) -> Decision:
    ids = {"payment_id": command.payment_id}
    rejection = _settlement_field_rejection(command)
    if rejection is not None:
        return _rejected(rejection, **ids)
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    if payment.payout_id is not None:
        if payment.payout_id != command.payout_id:
            return _rejected(Rejection.exists_with_different_payout, **ids)
        if payment.fee_minor != command.fee_minor:
            return _rejected(Rejection.exists_with_different_fee, **ids)
        if payment.amount_minor != command.amount_minor:
            return _rejected(Rejection.exists_with_different_amount, **ids)
        return _exists(**ids)
    if command.currency != payment.currency:
        return _rejected(Rejection.currency_must_match_account, **ids)
    charge_id = payment.captured_charge_id
    if charge_id is None or charge_id != command.charge_id:
        return _rejected(Rejection.charge_must_match_payment, **ids)
    if command.amount_minor != payment.amount_minor:
        return _rejected(Rejection.amount_must_match_payment, **ids)
    event = ChargeSettled(
        at_ms=now_ms, payment_id=payment.payment_id, charge_id=charge_id,
        payout_id=command.payout_id, amount_minor=command.amount_minor,
        fee_minor=command.fee_minor,
    )  # fmt: skip
    return _ok((event,), **ids)


def _decide_settle_reversal(state: AccountState, command: SettleReversal, now_ms: int) -> Decision:
    ids = {"payment_id": command.payment_id}
    rejection = _settlement_field_rejection(command)
    if rejection is not None:
        return _rejected(rejection, **ids)
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    seen = payment.reversals.get(f"{command.kind.value}:{command.reversal_id}")
    if seen is not None:
        if seen.payout_id != command.payout_id:
            return _rejected(Rejection.exists_with_different_payout, **ids)
        if seen.amount_minor != command.amount_minor:
            return _rejected(Rejection.exists_with_different_amount, **ids)
        if seen.fee_minor != command.fee_minor:
            return _rejected(Rejection.exists_with_different_fee, **ids)
        return _exists(**ids)
    if command.currency != payment.currency:
        return _rejected(Rejection.currency_must_match_account, **ids)
    fee_posted_minor = 0
    if command.kind is ReversalKind.refund:
        unsettled_minor = payment.amount_refunded_minor - payment.reversals_minor(command.kind)
        if command.amount_minor > unsettled_minor:
            return _rejected(Rejection.refund_must_not_exceed_refundable, **ids)
    else:
        if payment.disputed_minor == 0:
            return _rejected(Rejection.payment_status_must_allow_transition, **ids)
        if payment.reversals_minor(command.kind):
            return _rejected(Rejection.exists_with_different_payout, **ids)
        if payment.dispute_id and payment.dispute_id != command.reversal_id:
            return _rejected(Rejection.exists_with_different_payment, **ids)
        if command.amount_minor != payment.disputed_minor:
            return _rejected(Rejection.amount_must_match_payment, **ids)
        if payment.dispute_fee_minor == 0:
            fee_posted_minor = command.fee_minor  # the dispute came without its fee
        elif command.fee_minor != payment.dispute_fee_minor:
            return _rejected(Rejection.exists_with_different_fee, **ids)
    event = ReversalSettled(
        at_ms=now_ms, payment_id=payment.payment_id, kind=command.kind,
        reversal_id=command.reversal_id, payout_id=command.payout_id,
        amount_minor=command.amount_minor, fee_minor=command.fee_minor,
        fee_posted_minor=fee_posted_minor,
    )  # fmt: skip
    return _ok((event,), **ids)


def _decide_dispute_payment(state: AccountState, command: DisputePayment, now_ms: int) -> Decision:
    ids = {"payment_id": command.payment_id}
    payment = state.payments.get(command.payment_id)
    if payment is None:
        return _rejected(Rejection.payment_not_found, **ids)
    if payment.status is PaymentStatus.disputed:
        return _exists(**ids)  # the processor told us again
    if command.fee_minor < 0:
        return _rejected(Rejection.fee_must_be_within_amount, **ids)
    if payment_next(payment.status, PaymentEvent.disputed) is None or not payment.captured:
        return _rejected(Rejection.payment_status_must_allow_transition, **ids)
    amount_minor = payment.amount_minor - payment.amount_refunded_minor
    # As a refund does: first the credit this payment left, if the account still has it.
    from_credit_minor = min(
        amount_minor,
        state.credit_minor,
        payment.amount_unapplied_minor - payment.refunded_from_credit_minor,
    )
    rest_minor = amount_minor - from_credit_minor
    paid_by_payment: dict[str, int] = {}
    for allocation in payment.allocations:
        paid_by_payment[allocation.invoice_id] = (
            paid_by_payment.get(allocation.invoice_id, 0) + allocation.amount_minor
        )
    # The invoice due last is reopened first: what the payer owed longest stays settled.
    paid = sorted((state.invoices[i] for i in paid_by_payment),
                  key=lambda i: (i.due_date, i.number, i.invoice_id), reverse=True)  # fmt: skip
    reopened: list[Allocation] = []
    for invoice in paid:
        if rest_minor == 0:
            break
        if invoice.status is InvoiceStatus.void:
            continue
        reopen_minor = min(paid_by_payment[invoice.invoice_id], rest_minor,
                           invoice.amount_paid_minor)  # fmt: skip
        if reopen_minor > 0:
            reopened.append(Allocation(invoice_id=invoice.invoice_id, amount_minor=reopen_minor))
            rest_minor -= reopen_minor
    events: list[Event] = [PaymentDisputed(
        at_ms=now_ms, payment_id=payment.payment_id, dispute_id=command.dispute_id,
        amount_minor=amount_minor, fee_minor=command.fee_minor,
        from_credit_minor=from_credit_minor, reopened=tuple(reopened),
    )]  # fmt: skip
    # Credit beside an open balance is never left standing (``check_invariants``): what the
    # account holds from other payments pays the reopened invoices, oldest first.
    credit_left_minor = state.credit_minor - from_credit_minor
    if credit_left_minor > 0 and reopened:
        owed = {i.invoice_id: i for i in state.open_invoices()}
        for allocation in reopened:
            invoice = state.invoices[allocation.invoice_id]
            owed[invoice.invoice_id] = OpenInvoice(
                invoice_id=invoice.invoice_id, number=invoice.number, due_date=invoice.due_date,
                amount_remaining_minor=invoice.amount_remaining_minor + allocation.amount_minor,
            )  # fmt: skip
        split = allocate_oldest_first(owed.values(), credit_left_minor)
        events.extend(
            CreditApplied(at_ms=now_ms, invoice_id=a.invoice_id, amount_minor=a.amount_minor)
            for a in split.allocations
        )
    return _ok(tuple(events), **ids)


# -- evolve ---------------------------------------------------------------------------------


def evolve(state: AccountState | None, event: Event) -> tuple[AccountState, Entry | None]:
    """Apply one event; return the state (new for ``AccountOpened``) and its ledger entry."""
    if isinstance(event, AccountOpened):
        assert state is None
        return AccountState(account_id=event.account_id, currency=event.currency, version=1), None
    assert state is not None
    posted = _evolve(state, event)
    if posted is not None:
        apply_entry(state.ledger, posted)
    state.version += 1
    return state, posted


def _set_payment_status(payment: Payment, payment_event: PaymentEvent, at_ms: int) -> None:
    after = payment_next(payment.status, payment_event)
    assert after is not None, (payment.payment_id, payment.status, payment_event)
    payment.status = after
    if after in PAYMENT_TERMINAL and payment.finished_at_ms is None:
        payment.finished_at_ms = at_ms
    if after is not PaymentStatus.retry_scheduled:
        payment.next_retry_at_ms = None


def _set_attempt_status(attempt: Attempt, attempt_event: AttemptEvent) -> None:
    after = attempt_next(attempt.status, attempt_event)
    assert after is not None, (attempt.attempt_id, attempt.status, attempt_event)
    attempt.status = after


def _evolve(state: AccountState, event: Event) -> Entry | None:
    ar = LedgerAccount.accounts_receivable
    credit = LedgerAccount.customer_credit
    if isinstance(event, InvoiceIssued):
        assert event.invoice_id not in state.invoices
        invoice = Invoice(
            invoice_id=event.invoice_id, number=event.number, amount_due_minor=event.amount_minor,
            due_date=event.due_date, issued_at_ms=event.at_ms, service_period=event.service_period,
            description=event.description,
        )  # fmt: skip
        state.invoices[invoice.invoice_id] = invoice
        # Earned only as recognition runs, even a one-off purchase (on its invoice date).
        return entry(f"invoice {invoice.invoice_id}", {ar: event.amount_minor},
                     {LedgerAccount.deferred_revenue: event.amount_minor})  # fmt: skip
    if isinstance(event, CreditApplied):
        invoice = state.invoices[event.invoice_id]
        assert 0 < event.amount_minor <= state.credit_minor
        assert event.amount_minor <= invoice.amount_remaining_minor
        state.credit_minor -= event.amount_minor
        _pay_invoice(invoice, event.amount_minor)
        return entry(f"credit to {invoice.invoice_id}", {credit: event.amount_minor},
                     {ar: event.amount_minor})  # fmt: skip
    if isinstance(event, InvoiceVoided):
        invoice = state.invoices[event.invoice_id]
        assert invoice.status is InvoiceStatus.open
        assert event.amount_remaining_minor == invoice.amount_remaining_minor
        assert event.amount_paid_minor == invoice.amount_paid_minor
        # Caught up and taken back in one event: the catch-up moves deferred to revenue
        # and the reversal moves it back, so only what was recognized before shows.
        recognized_minor = invoice.amount_recognized_minor
        recognized = dict(invoice.recognized_by_month)
        for part in event.revenue_caught_up:
            assert part.amount_minor > 0, part
            recognized[part.month] = recognized.get(part.month, 0) + part.amount_minor
        assert {p.month: -p.amount_minor for p in event.revenue_reversed} == {
            m: v for m, v in recognized.items() if v
        }, (event, invoice.recognized_by_month)
        assert sum(recognized.values()) <= invoice.amount_due_minor, (event, invoice)
        invoice.status = InvoiceStatus.void
        invoice.recognized_by_month = {}
        state.credit_minor += event.amount_paid_minor
        return entry(
            f"void {invoice.invoice_id}",
            {LedgerAccount.deferred_revenue: invoice.amount_due_minor - recognized_minor,
             LedgerAccount.revenue: recognized_minor},
            {ar: event.amount_remaining_minor, credit: event.amount_paid_minor},
        )  # fmt: skip
    if isinstance(event, PaymentCreated):
        assert event.payment_id not in state.payments
        state.payments[event.payment_id] = Payment(
            payment_id=event.payment_id, idempotency_key=event.idempotency_key,
            amount_minor=event.amount_minor, currency=event.currency,
            payment_method=event.payment_method, requested_allocations=event.allocations,
            initiator=event.initiator, schedule=event.schedule, created_at_ms=event.at_ms,
            attempts=[Attempt(attempt_id=event.attempt_id,
                              payment_method_id=event.payment_method.id,
                              created_at_ms=event.at_ms,
                              off_session=event.initiator is Initiator.merchant)],
            series_started_at_ms=event.at_ms, request_hash=event.request_hash,
            description=event.description,
        )  # fmt: skip
        state.idempotency[event.idempotency_key] = event.payment_id
        return None
    if isinstance(event, PaymentMethodRemoved):
        state.removed_methods.add(event.payment_method_id)
        return None
    if isinstance(event, RequestAnswered):
        payment = state.payments[event.payment_id]
        assert payment.answer is None, payment.payment_id
        # A copy, not a view: the payment moves on, the answer must not.
        payment.answer = _answer_decoder.decode(_answer_encoder.encode(payment))
        return None
    if isinstance(event, AttemptSucceeded):
        payment = state.payments[event.payment_id]
        attempt = payment.current_attempt
        assert attempt.attempt_id == event.attempt_id
        _set_attempt_status(attempt, AttemptEvent.succeeded)
        attempt.charge_id = event.charge_id
        _set_payment_status(payment, PaymentEvent.attempt_succeeded, event.at_ms)
        applied_minor = sum(a.amount_minor for a in event.allocations)
        assert applied_minor + event.unapplied_minor == payment.amount_minor
        for allocation in event.allocations:
            _pay_invoice(state.invoices[allocation.invoice_id], allocation.amount_minor)
        payment.allocations = event.allocations
        payment.amount_unapplied_minor = event.unapplied_minor
        state.credit_minor += event.unapplied_minor
        return entry(f"payment {payment.payment_id}",
                     {LedgerAccount.processor_clearing: payment.amount_minor},
                     {ar: applied_minor, credit: event.unapplied_minor})  # fmt: skip
    if isinstance(event, AttemptDeclined):
        payment = state.payments[event.payment_id]
        attempt = payment.current_attempt
        assert attempt.attempt_id == event.attempt_id
        _set_attempt_status(attempt, AttemptEvent.declined)
        attempt.decline_code = event.decline_code
        attempt.decline_class = event.decline_class
        attempt.visa_category = event.visa_category
        attempt.advice_code = event.advice_code
        _set_payment_status(payment, _declined_payment_event(event.status), event.at_ms)
        payment.next_retry_at_ms = event.next_retry_at_ms
        return None
    if isinstance(event, AttemptErrored):
        payment = state.payments[event.payment_id]
        attempt = payment.current_attempt
        assert attempt.attempt_id == event.attempt_id
        _set_attempt_status(attempt, AttemptEvent.errored)
        attempt.decline_code = event.decline_code
        attempt.decline_class = DeclineClass.technical
        payment_event = (
            PaymentEvent.attempt_failed_final if event.status is PaymentStatus.failed
            else PaymentEvent.attempt_errored_retryable
        )  # fmt: skip
        _set_payment_status(payment, payment_event, event.at_ms)
        payment.next_retry_at_ms = event.next_retry_at_ms
        return None
    if isinstance(event, AttemptRequiresAction):
        payment = state.payments[event.payment_id]
        attempt = payment.current_attempt
        assert attempt.attempt_id == event.attempt_id
        _set_attempt_status(attempt, AttemptEvent.requires_action)
        attempt.charge_id = event.charge_id
        _set_payment_status(payment, PaymentEvent.attempt_requires_action, event.at_ms)
        return None
    if isinstance(event, PaymentConfirmed):
        payment = state.payments[event.payment_id]
        assert payment.current_attempt.status is AttemptStatus.declined, payment
        _set_payment_status(payment, PaymentEvent.payment_confirmed, event.at_ms)
        payment.attempts.append(Attempt(attempt_id=event.attempt_id,
                                        payment_method_id=payment.payment_method.id,
                                        created_at_ms=event.at_ms))  # fmt: skip
        # The payer is present: a new series, as after a new method, and a new wait.
        payment.series_started_at_ms = event.at_ms
        payment.series_attempts = 1
        payment.finished_at_ms = None
        return None
    if isinstance(event, AttemptOutcomeUnknown):
        payment = state.payments[event.payment_id]
        attempt = payment.current_attempt
        assert attempt.attempt_id == event.attempt_id
        _set_attempt_status(attempt, AttemptEvent.unknown)
        _set_payment_status(payment, PaymentEvent.attempt_outcome_unknown, event.at_ms)
        return None
    if isinstance(event, RetryStarted):
        payment = state.payments[event.payment_id]
        _set_payment_status(payment, PaymentEvent.retry_started, event.at_ms)
        if event.resend:
            attempt = payment.current_attempt
            assert attempt.attempt_id == event.attempt_id
            _set_attempt_status(attempt, AttemptEvent.resent)
            attempt.sends += 1
            return None
        payment.attempts.append(Attempt(attempt_id=event.attempt_id,
                                        payment_method_id=payment.payment_method.id,
                                        created_at_ms=event.at_ms, off_session=True))  # fmt: skip
        payment.series_attempts += 1
        history = state.reattempts.setdefault(payment.payment_method.id, [])
        history.append(Reattempt(event.at_ms, payment.initiator))
        # Only the last 30 days are ever counted by a network cap.
        history[:] = [r for r in history if r.at_ms > event.at_ms - REATTEMPT_HISTORY_MS]
        return None
    if isinstance(event, RetryDeferred):
        payment = state.payments[event.payment_id]
        _set_payment_status(payment, PaymentEvent.retry_deferred, event.at_ms)
        payment.next_retry_at_ms = event.next_retry_at_ms
        return None
    if isinstance(event, RetriesExhausted):
        payment = state.payments[event.payment_id]
        _set_payment_status(payment, PaymentEvent.retries_exhausted, event.at_ms)
        return None
    if isinstance(event, PaymentMethodReplaced):
        payment = state.payments[event.payment_id]
        _set_payment_status(payment, PaymentEvent.payment_method_replaced, event.at_ms)
        payment.payment_method = event.payment_method
        payment.attempts.append(Attempt(attempt_id=event.attempt_id,
                                        payment_method_id=event.payment_method.id,
                                        created_at_ms=event.at_ms))  # fmt: skip
        payment.series_started_at_ms = event.at_ms
        payment.series_attempts = 1
        # The payment is being processed again: its processing time is measured anew.
        payment.finished_at_ms = None
        return None
    if isinstance(event, PaymentCanceled):
        _set_payment_status(state.payments[event.payment_id], PaymentEvent.canceled, event.at_ms)
        return None
    if isinstance(event, PaymentRefunded):
        payment = state.payments[event.payment_id]
        fully = event.status is PaymentStatus.refunded
        payment_event = PaymentEvent.refunded_fully if fully else PaymentEvent.refunded_partially
        _set_payment_status(payment, payment_event, event.at_ms)
        assert event.refund_id not in state.refunds
        payment.refunds[event.refund_id] = event.amount_minor
        payment.amount_refunded_minor += event.amount_minor
        assert payment.amount_refunded_minor <= payment.amount_minor
        assert fully == (payment.amount_refunded_minor == payment.amount_minor)
        payment.refunded_from_credit_minor += event.from_credit_minor
        state.refunds[event.refund_id] = payment.payment_id
        assert 0 <= event.from_credit_minor <= state.credit_minor
        state.credit_minor -= event.from_credit_minor
        return entry(f"refund {event.refund_id}",
                     {credit: event.from_credit_minor,
                      LedgerAccount.refunds: event.amount_minor - event.from_credit_minor},
                     {LedgerAccount.processor_clearing: event.amount_minor})  # fmt: skip
    if isinstance(event, RevenueRecognized):
        recognized_minor = 0
        for part in event.parts:
            invoice = state.invoices[part.invoice_id]
            assert invoice.status is not InvoiceStatus.void, invoice
            assert part.amount_minor > 0, part
            month_minor = invoice.recognized_by_month.get(part.month, 0) + part.amount_minor
            invoice.recognized_by_month[part.month] = month_minor
            assert invoice.amount_recognized_minor <= invoice.amount_due_minor, invoice
            recognized_minor += part.amount_minor
        if state.recognized_through is None or event.through > state.recognized_through:
            state.recognized_through = event.through
        return entry(f"recognize through {event.through.isoformat()}",
                     {LedgerAccount.deferred_revenue: recognized_minor},
                     {LedgerAccount.revenue: recognized_minor})  # fmt: skip
    if isinstance(event, ChargeSettled):
        payment = state.payments[event.payment_id]
        assert payment.payout_id is None, payment
        assert payment.captured_charge_id == event.charge_id, (payment, event)
        assert 0 <= event.fee_minor <= event.amount_minor == payment.amount_minor, event
        payment.payout_id = event.payout_id
        payment.fee_minor = event.fee_minor
        return entry(f"settle {event.charge_id} in {event.payout_id}",
                     {LedgerAccount.cash: event.amount_minor - event.fee_minor,
                      LedgerAccount.fees: event.fee_minor},
                     {LedgerAccount.processor_clearing: event.amount_minor})  # fmt: skip
    if isinstance(event, ReversalSettled):
        payment = state.payments[event.payment_id]
        key = f"{event.kind.value}:{event.reversal_id}"
        assert key not in payment.reversals, (payment.payment_id, key)
        payment.reversals[key] = SettledReversal(
            payout_id=event.payout_id, amount_minor=event.amount_minor, fee_minor=event.fee_minor
        )
        if event.kind is ReversalKind.refund:
            assert payment.reversals_minor(event.kind) <= payment.amount_refunded_minor, payment
        else:
            assert event.amount_minor == payment.disputed_minor, (event, payment.disputed_minor)
            payment.dispute_fee_minor += event.fee_posted_minor
            assert event.fee_minor == payment.dispute_fee_minor, (event, payment.payment_id)
        withheld_minor = event.amount_minor + event.fee_minor
        return entry(f"withhold {event.kind.value} {event.reversal_id} in {event.payout_id}",
                     {LedgerAccount.processor_clearing: withheld_minor - event.fee_posted_minor,
                      LedgerAccount.fees: event.fee_posted_minor},
                     {LedgerAccount.cash: withheld_minor})  # fmt: skip
    assert isinstance(event, PaymentDisputed), event
    payment = state.payments[event.payment_id]
    _set_payment_status(payment, PaymentEvent.disputed, event.at_ms)
    if event.amount_minor == 0:
        return None  # journaled before disputes posted: it moved no money then either
    assert event.amount_minor == payment.amount_minor - payment.amount_refunded_minor, event
    assert 0 <= event.from_credit_minor <= state.credit_minor, event
    assert event.fee_minor >= 0, event
    payment.dispute_id = event.dispute_id or None
    payment.disputed_minor = event.amount_minor
    payment.dispute_fee_minor = event.fee_minor
    payment.disputed_from_credit_minor = event.from_credit_minor
    payment.reopened = event.reopened
    state.credit_minor -= event.from_credit_minor
    for allocation in event.reopened:
        _reopen_invoice(state.invoices[allocation.invoice_id], allocation.amount_minor)
    reopened_minor = sum(a.amount_minor for a in event.reopened)
    assert payment.disputed_written_off_minor >= 0, event
    return entry(f"dispute {event.dispute_id or payment.payment_id}",
                 {ar: reopened_minor, credit: event.from_credit_minor,
                  LedgerAccount.disputes: payment.disputed_written_off_minor,
                  LedgerAccount.fees: event.fee_minor},
                 {LedgerAccount.processor_clearing: event.amount_minor + event.fee_minor},
                 )  # fmt: skip


def _reopen_invoice(invoice: Invoice, amount_minor: int) -> None:
    assert invoice.status is not InvoiceStatus.void, invoice
    assert 0 < amount_minor <= invoice.amount_paid_minor, (invoice, amount_minor)
    invoice.amount_paid_minor -= amount_minor
    invoice.status = InvoiceStatus.open


def _declined_payment_event(status: PaymentStatus) -> PaymentEvent:
    if status is PaymentStatus.requires_payment_method:
        return PaymentEvent.attempt_declined_hard
    if status is PaymentStatus.retry_scheduled:
        return PaymentEvent.attempt_declined_retryable
    if status is PaymentStatus.requires_action:
        return PaymentEvent.attempt_declined_authentication
    assert status is PaymentStatus.failed, status
    return PaymentEvent.attempt_failed_final


def _pay_invoice(invoice: Invoice, amount_minor: int) -> None:
    assert invoice.status is InvoiceStatus.open, invoice
    assert 0 < amount_minor <= invoice.amount_remaining_minor, (invoice, amount_minor)
    invoice.amount_paid_minor += amount_minor
    if invoice.amount_remaining_minor == 0:
        invoice.status = InvoiceStatus.paid


# -- the whole step, queries and invariants ------------------------------------------------


def execute(
    state: AccountState | None, command: Command, now_ms: int, rng: random.Random
) -> tuple[AccountState | None, Decision, list[Entry]]:
    """Decide and apply: the state after, the decision, and the ledger entries posted."""
    decision = decide(state, command, now_ms, rng)
    posted: list[Entry] = []
    for event in decision.events:
        state, entry_posted = evolve(state, event)
        if entry_posted is not None:
            posted.append(entry_posted)
    return state, decision, posted


def preview_allocation(
    state: AccountState, amount_minor: int, explicit: tuple[Allocation, ...] = ()
) -> AllocationResult:
    """The split a payment of ``amount_minor`` would get if it succeeded now."""
    return allocate(state.open_invoices(), amount_minor, explicit)


def check_invariants(state: AccountState) -> None:
    """Assert what must hold between any two commands. Cheap enough for every test step."""
    assert sum(state.ledger.values()) == 0, state.ledger
    open_remaining_minor = sum(
        i.amount_remaining_minor for i in state.invoices.values()
        if i.status is InvoiceStatus.open
    )  # fmt: skip
    assert state.ledger.get(LedgerAccount.accounts_receivable, 0) == open_remaining_minor
    assert state.credit_minor >= 0, state.credit_minor
    assert -state.ledger.get(LedgerAccount.customer_credit, 0) == state.credit_minor
    if state.credit_minor > 0:
        assert open_remaining_minor == 0, "credit stands beside an open balance"
    captured_minor = 0
    deferred_minor = 0
    recognized_minor = 0
    for invoice in state.invoices.values():
        assert 0 <= invoice.amount_paid_minor <= invoice.amount_due_minor, invoice
        paid_in_full = invoice.amount_paid_minor == invoice.amount_due_minor
        assert (invoice.status is InvoiceStatus.paid) == (
            paid_in_full and invoice.status is not InvoiceStatus.void
        ), invoice
        assert all(v > 0 for v in invoice.recognized_by_month.values()), invoice
        assert 0 <= invoice.amount_recognized_minor <= invoice.amount_due_minor, invoice
        if invoice.status is not InvoiceStatus.void:
            recognized_minor += invoice.amount_recognized_minor
            deferred_minor += invoice.amount_due_minor - invoice.amount_recognized_minor
    assert -state.ledger.get(LedgerAccount.revenue, 0) == recognized_minor, state.ledger
    assert -state.ledger.get(LedgerAccount.deferred_revenue, 0) == deferred_minor, state.ledger
    settled_minor = 0
    fees_minor = 0
    withheld_minor = 0
    written_off_minor = 0
    for payment in state.payments.values():
        captured = any(a.status is AttemptStatus.succeeded for a in payment.attempts)
        assert sum(a.status is AttemptStatus.succeeded for a in payment.attempts) <= 1
        if captured:
            assert payment.amount_applied_minor + payment.amount_unapplied_minor == (
                payment.amount_minor
            ), payment
            captured_minor += (payment.amount_minor - payment.amount_refunded_minor
                               - payment.disputed_minor - payment.dispute_fee_minor)  # fmt: skip
        else:
            assert not payment.allocations, payment
            assert payment.amount_refunded_minor == 0, payment
            assert payment.payout_id is None, payment
        if payment.payout_id is not None:
            settled_minor += payment.amount_minor
            fees_minor += payment.fee_minor
        if payment.disputed_minor:
            assert payment.status is PaymentStatus.disputed, payment
            assert payment.disputed_minor == payment.amount_minor - payment.amount_refunded_minor
            assert payment.disputed_written_off_minor >= 0, payment
        fees_minor += payment.dispute_fee_minor
        written_off_minor += payment.disputed_written_off_minor
        withheld_minor += sum(r.amount_minor + r.fee_minor for r in payment.reversals.values())
        assert payment.reversals_minor(ReversalKind.refund) <= payment.amount_refunded_minor
        assert (payment.status is PaymentStatus.retry_scheduled) == (
            payment.next_retry_at_ms is not None
        ), payment
        # Only the current attempt can wait for a challenge, and only while the payment
        # does; a payment waiting for the payer has a challenge or an authentication decline.
        pending = [a for a in payment.attempts if a.status is AttemptStatus.requires_action]
        assert all(a is payment.current_attempt for a in pending), payment
        if pending:
            assert payment.status is PaymentStatus.requires_action, payment
        if payment.status is PaymentStatus.requires_action:
            current = payment.current_attempt
            assert current.status is AttemptStatus.requires_action or (
                current.status is AttemptStatus.declined
                and current.decline_class is DeclineClass.authentication
            ), payment
    clearing_minor = captured_minor - settled_minor + withheld_minor
    assert state.ledger.get(LedgerAccount.processor_clearing, 0) == clearing_minor, state.ledger
    assert state.ledger.get(LedgerAccount.fees, 0) == fees_minor, state.ledger
    # Every fee is paid out of cash in the end: a charge's at once, a dispute's when withheld.
    cash_minor = settled_minor - withheld_minor - sum(
        p.fee_minor for p in state.payments.values())  # fmt: skip
    assert state.ledger.get(LedgerAccount.cash, 0) == cash_minor, state.ledger
    assert state.ledger.get(LedgerAccount.disputes, 0) == written_off_minor, state.ledger
