"""An independent model of one account's money, checked against the engine after each step.

The model is written from the public contract, not from the engine: it reads commands
through the message vocabulary and never imports the engine's account, allocation or
ledger code. For every command it predicts the result (ok, exists or rejected) and
every amount that follows: each invoice's paid and remaining amount and status, the
account credit, each payment's allocations, unapplied part and refunds, and the
ledger's balances. Its rules:

- Allocation: explicit allocations first, each capped at what the invoice still owes;
  then open invoices by oldest due date, then invoice number, then invoice id; the
  rest becomes account credit.
- Credit is applied to a new invoice at once. Voiding an invoice returns what was paid
  on it to credit, and credit then goes oldest-first to the other open invoices.
- A refund first takes back the payment's own unapplied credit, as far as the account
  still holds it; the rest is a refund expense.
- A dispute takes back what the payer still has charged (the payment less its refunds):
  first the payment's own unapplied credit, as far as the account still holds it, then
  what it paid on its invoices, the one due last first (never a void one); the rest is
  a dispute loss. The dispute fee is a fee. Credit then goes oldest-first to the
  reopened invoices.
- A payment is captured at most once, and a status moves only along ``ALLOWED_NEXT``.

Where the contract leaves a choice to the engine (whether a soft decline is retried or
has run out of retries, when a retry is due), the auditor accepts the engine's status
only if the contract allows that transition, and then follows it.

``JournalAuditor`` is the same model driven by an account's durable journal instead of
the commands sent, for a system that duplicates, loses and retries commands: the journal
is then the one record of what the account decided, and each event is checked against
what the rules above allow and call for before the model follows it.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from payportal.engine.messages import (
    AccountOpened,
    AttemptDeclined,
    AttemptErrored,
    AttemptOutcomeUnknown,
    AttemptSucceeded,
    CancelPayment,
    Command,
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
    PaymentCreated,
    PaymentDisputed,
    PaymentMethodRemoved,
    PaymentMethodReplaced,
    PaymentRefunded,
    RecordOutcome,
    RefundPayment,
    ReplacePaymentMethod,
    RequestAnswered,
    Result,
    RetriesExhausted,
    RetryDeferred,
    RetryStarted,
    StartRetry,
    VoidInvoice,
)

__all__ = ["ALLOWED_NEXT", "AccountAuditor", "AuditError", "JournalAuditor"]

# The currencies the simulation sends; anything else it sends is meant to be invalid.
VALID_CURRENCIES: Final = frozenset({"USD", "EUR", "JPY"})

# The decline codes the simulation sends, classified from the contract's retry rules.
HARD_DECLINE_CODES: Final = frozenset({"do_not_honor", "expired_card", "lost_card", "stolen_card"})
SOFT_DECLINE_CODES: Final = frozenset(
    {"insufficient_funds", "try_again_later", "issuer_unavailable"}
)
# Mastercard advice codes that forbid any reattempt, and those that impose a wait.
ADVICE_CODES_STOP: Final = frozenset({"03", "21"})
ADVICE_CODES_WAIT: Final = frozenset({"24", "25", "26", "27", "28", "29", "30"})
# The shortest wait any of those advice codes asks for (code 24: one hour).
ADVICE_WAIT_MS_MIN: Final = 3_600_000
DAY_MS: Final = 86_400_000
# The contract's default policy caps: attempts per payment method and their window.
SERIES_CAPS: Final[dict[str, tuple[int, int]]] = {
    "one_off": (4, 7 * DAY_MS),
    "subscription": (8, 14 * DAY_MS),
}
IDEMPOTENCY_KEY_LENGTH_MAX: Final = 255

CAPTURED_STATUSES: Final = frozenset({"succeeded", "partially_refunded", "refunded", "disputed"})
# Every status a payment may be in after one command, given its status before.
ALLOWED_NEXT: Final[dict[str, frozenset[str]]] = {
    "processing": frozenset(
        {"processing", "succeeded", "failed", "requires_payment_method", "retry_scheduled"}
    ),
    "retry_scheduled": frozenset(
        {
            "retry_scheduled",
            "processing",
            "succeeded",
            "failed",
            "requires_payment_method",
            "canceled",
        }
    ),
    "requires_payment_method": frozenset({"requires_payment_method", "processing", "canceled"}),
    "succeeded": frozenset({"succeeded", "partially_refunded", "refunded", "disputed"}),
    "partially_refunded": frozenset({"partially_refunded", "refunded", "disputed"}),
    "failed": frozenset({"failed", "succeeded"}),
    "canceled": frozenset({"canceled"}),
    "refunded": frozenset({"refunded"}),
    "disputed": frozenset({"disputed"}),
}
# Attempt states in which the processor may still capture.
OPEN_ATTEMPT_STATES: Final = frozenset({"processing", "unknown", "errored"})

OK: Final = frozenset({Result.ok})
EXISTS: Final = frozenset({Result.exists})
REJECTED: Final = frozenset({Result.rejected})
NOT_OK: Final = frozenset({Result.exists, Result.rejected})
ANY: Final = frozenset(Result)


class AuditError(AssertionError):
    """The engine disagrees with the auditor."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AuditError(message)


def decline_is_hard(code: str | None, visa_category: int | None, advice_code: str | None) -> bool:
    """The contract's classification; stop signals win over everything that would retry."""
    if advice_code in ADVICE_CODES_STOP or visa_category == 1:
        return True
    if code in SOFT_DECLINE_CODES or visa_category in (2, 3):
        return False
    assert code in HARD_DECLINE_CODES, f"the simulation sent an unclassified code {code!r}"
    return True


@dataclass
class AuditedInvoice:
    invoice_id: str
    number: str
    amount_due_minor: int
    due_date: dt.date
    service_period: Any
    paid_minor: int = 0
    voided: bool = False

    @property
    def remaining_minor(self) -> int:
        return 0 if self.voided else self.amount_due_minor - self.paid_minor

    @property
    def status(self) -> str:
        if self.voided:
            return "void"
        return "paid" if self.remaining_minor == 0 else "open"


@dataclass
class AuditedAttempt:
    attempt_id: str
    state: str = "processing"  # processing | unknown | errored | declined | succeeded
    decline_code: str | None = None


@dataclass
class AuditedPayment:
    payment_id: str
    idempotency_key: str
    amount_minor: int
    currency: str
    payment_method_id: str
    requested: tuple[tuple[str, int], ...]
    schedule: str
    created_at_ms: int
    attempts: list[AuditedAttempt]
    status: str = "processing"
    captures: int = 0
    allocations: dict[str, int] = field(default_factory=dict)
    unapplied_minor: int = 0
    refunds: dict[str, int] = field(default_factory=dict)
    refunded_minor: int = 0
    refunded_from_credit_minor: int = 0
    disputed_minor: int = 0
    dispute_fee_minor: int = 0
    next_retry_at_ms: int | None = None
    series_started_at_ms: int = 0
    series_attempts: int = 1

    @property
    def current(self) -> AuditedAttempt:
        return self.attempts[-1]

    def attempt(self, attempt_id: str) -> AuditedAttempt | None:
        for attempt in reversed(self.attempts):
            if attempt.attempt_id == attempt_id:
                return attempt
        return None


def _key_is_valid(key: str) -> bool:
    return 1 <= len(key) <= IDEMPOTENCY_KEY_LENGTH_MAX and all(" " <= c <= "~" for c in key)


class AccountAuditor:
    """Expected money of one account, rebuilt from the commands and their results."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.currency: str | None = None
        self.invoices: dict[str, AuditedInvoice] = {}
        self.payments: dict[str, AuditedPayment] = {}
        self.payment_by_key: dict[str, str] = {}
        self.payment_by_refund: dict[str, str] = {}
        self.credit_minor = 0
        # What refunds cost beyond the credit they took back (the ledger's refunds account).
        self.refund_expense_minor = 0
        # What disputes took back that nobody owes again, and their fees.
        self.dispute_loss_minor = 0
        self.dispute_fees_minor = 0

    # -- one step ---------------------------------------------------------------------------

    def audit(self, command: Command, now_ms: int, outcome: Outcome, state: Any) -> None:
        """Check the engine's answer to ``command`` and its state after; follow it."""
        expected = self._expect(command, now_ms)
        result = outcome.result
        _check(
            result in expected,
            f"expected {sorted(expected)}, engine answered {result} ({outcome.rejection})",
        )
        if isinstance(command, CreatePayment) and result is Result.exists:
            original_id = self.payment_by_key[command.idempotency_key]
            _check(
                outcome.payment_id == original_id,
                f"a replayed key answered {outcome.payment_id}, not {original_id}",
            )
        statuses_before = {p.payment_id: p.status for p in self.payments.values()}
        if result is Result.ok:
            self._apply(command, now_ms, state)
            for payment in self.payments.values():
                if payment.status != "retry_scheduled":
                    payment.next_retry_at_ms = None  # only a scheduled retry has a time
        elif isinstance(command, StartRetry) and result is Result.exists:
            payment = self.payments[command.payment_id]
            _check(payment.status == "processing", "a retry replay of a payment not processing")
            _check(
                payment.current.attempt_id == command.attempt_id,
                "a retry replay for an attempt that is not current",
            )
        for payment_id, before in statuses_before.items():
            after = self.payments[payment_id].status
            _check(
                after in ALLOWED_NEXT[before],
                f"payment {payment_id} moved {before} -> {after}, which is not allowed",
            )
        self.compare(state)

    def _expect(self, command: Command, now_ms: int) -> frozenset[Result]:
        if isinstance(command, OpenAccount):
            if command.currency not in VALID_CURRENCIES:
                return REJECTED
            if self.currency is not None:
                return EXISTS if command.currency == self.currency else REJECTED
            return OK
        if self.currency is None:
            return REJECTED
        if isinstance(command, IssueInvoice):
            return self._expect_issue_invoice(command)
        if isinstance(command, VoidInvoice):
            invoice = self.invoices.get(command.invoice_id)
            if invoice is None:
                return REJECTED
            if invoice.voided:
                return EXISTS
            return OK if invoice.status == "open" else REJECTED
        if isinstance(command, CreatePayment):
            return self._expect_create_payment(command)
        if isinstance(command, RecordOutcome):
            return self._expect_record_outcome(command)
        if isinstance(command, StartRetry):
            return self._expect_start_retry(command, now_ms)
        if isinstance(command, ReplacePaymentMethod):
            return self._expect_replace_payment_method(command)
        if isinstance(command, CancelPayment):
            payment = self.payments.get(command.payment_id)
            if payment is None:
                return REJECTED
            if payment.status == "canceled":
                return EXISTS
            # Cancel only once no attempt can still capture: the processor said no.
            cancelable = payment.status in ("retry_scheduled", "requires_payment_method")
            return OK if cancelable and payment.current.state == "declined" else REJECTED
        if isinstance(command, RefundPayment):
            return self._expect_refund(command)
        assert isinstance(command, DisputePayment), command
        payment = self.payments.get(command.payment_id)
        if payment is None:
            return REJECTED
        if payment.status == "disputed":
            return EXISTS
        return OK if payment.status in ("succeeded", "partially_refunded") else REJECTED

    def _expect_issue_invoice(self, command: IssueInvoice) -> frozenset[Result]:
        period = command.service_period
        if command.amount_minor <= 0 or command.currency not in VALID_CURRENCIES:
            return REJECTED
        if period is not None and period.end < period.start:
            return REJECTED
        existing = self.invoices.get(command.invoice_id)
        if existing is not None:
            same = (
                command.currency == self.currency
                and command.amount_minor == existing.amount_due_minor
                and command.due_date == existing.due_date
                and command.number == existing.number
                and command.service_period == existing.service_period
            )
            return EXISTS if same else REJECTED
        return OK if command.currency == self.currency else REJECTED

    def _expect_create_payment(self, command: CreatePayment) -> frozenset[Result]:
        requested = [(a.invoice_id, a.amount_minor) for a in command.allocations]
        if (
            command.amount_minor <= 0
            or command.currency not in VALID_CURRENCIES
            or not _key_is_valid(command.idempotency_key)
            or any(amount_minor <= 0 for _, amount_minor in requested)
            or len({invoice_id for invoice_id, _ in requested}) != len(requested)
            or sum(amount_minor for _, amount_minor in requested) > command.amount_minor
        ):
            return REJECTED
        original_id = self.payment_by_key.get(command.idempotency_key)
        if original_id is not None:
            original = self.payments[original_id]
            same = (
                original.currency == command.currency
                and original.amount_minor == command.amount_minor
                and original.payment_method_id == command.payment_method.id
                and original.requested == tuple(requested)
            )
            return EXISTS if same else REJECTED
        if command.payment_id in self.payments or command.currency != self.currency:
            return REJECTED
        for invoice_id, amount_minor in requested:
            invoice = self.invoices.get(invoice_id)
            if invoice is None or invoice.status != "open":
                return REJECTED
            if amount_minor > invoice.remaining_minor:
                return REJECTED
        return OK

    def _expect_record_outcome(self, command: RecordOutcome) -> frozenset[Result]:
        if command.currency is not None and command.currency not in VALID_CURRENCIES:
            return REJECTED
        payment = self.payments.get(command.payment_id)
        if payment is None:
            return REJECTED
        attempt = payment.attempt(command.attempt_id)
        if attempt is None:
            return REJECTED
        kind = command.outcome
        # An outcome that tells nothing new (a duplicate, or a vaguer late echo) is a replay;
        # one that contradicts a final answer is refused.
        if attempt.state == "succeeded":
            return REJECTED if kind is OutcomeKind.declined else EXISTS
        if attempt.state == "declined":
            if kind is OutcomeKind.succeeded:
                return REJECTED
            if kind is OutcomeKind.declined and command.decline_code != attempt.decline_code:
                return REJECTED
            return EXISTS
        if attempt.state == "errored" and kind in (OutcomeKind.errored, OutcomeKind.unknown):
            return EXISTS
        if attempt.state == "unknown" and kind is OutcomeKind.unknown:
            return EXISTS
        if command.currency is not None and command.currency != payment.currency:
            return REJECTED
        if command.amount_minor is not None and command.amount_minor != payment.amount_minor:
            return REJECTED
        if attempt is not payment.current:
            return REJECTED
        if payment.status == "failed" and attempt.state == "errored":
            # Technical retries ran out, but the attempt went out under its idempotency
            # key: a capture reported now is money taken, and must be recorded.
            return OK if kind is OutcomeKind.succeeded else REJECTED
        return OK if payment.status in ("processing", "retry_scheduled") else REJECTED

    def _expect_start_retry(self, command: StartRetry, now_ms: int) -> frozenset[Result]:
        payment = self.payments.get(command.payment_id)
        if payment is None:
            return REJECTED
        if payment.status == "processing" and payment.current.attempt_id == command.attempt_id:
            return EXISTS  # the timer fired twice
        if payment.status != "retry_scheduled":
            return REJECTED
        assert payment.next_retry_at_ms is not None
        if now_ms < payment.next_retry_at_ms:
            return REJECTED
        # Due: whether it starts, waits for the networks' caps or gives up is the engine's
        # call, checked in ``_apply_start_retry``.
        return ANY

    def _expect_replace_payment_method(self, command: ReplacePaymentMethod) -> frozenset[Result]:
        payment = self.payments.get(command.payment_id)
        if payment is None:
            return REJECTED
        if payment.current.attempt_id == command.attempt_id:
            same = payment.payment_method_id == command.payment_method.id
            return EXISTS if same else REJECTED
        if payment.attempt(command.attempt_id) is not None:
            # An attempt id the payment already used: a late replay, never a new attempt.
            return NOT_OK
        return OK if payment.status == "requires_payment_method" else REJECTED

    def _expect_refund(self, command: RefundPayment) -> frozenset[Result]:
        if command.amount_minor <= 0:
            return REJECTED
        refunded_payment_id = self.payment_by_refund.get(command.refund_id)
        if refunded_payment_id is not None:
            same = (
                refunded_payment_id == command.payment_id
                and self.payments[refunded_payment_id].refunds[command.refund_id]
                == command.amount_minor
            )
            return EXISTS if same else REJECTED
        payment = self.payments.get(command.payment_id)
        if payment is None or payment.status not in ("succeeded", "partially_refunded"):
            return REJECTED
        refundable_minor = payment.amount_minor - payment.refunded_minor
        return OK if command.amount_minor <= refundable_minor else REJECTED

    # -- following an accepted command -------------------------------------------------

    def _apply(self, command: Command, now_ms: int, state: Any) -> None:
        if isinstance(command, OpenAccount):
            self.currency = command.currency
        elif isinstance(command, IssueInvoice):
            invoice = AuditedInvoice(
                invoice_id=command.invoice_id, number=command.number,
                amount_due_minor=command.amount_minor, due_date=command.due_date,
                service_period=command.service_period,
            )  # fmt: skip
            self.invoices[invoice.invoice_id] = invoice
            applied_minor = min(self.credit_minor, invoice.amount_due_minor)
            self.credit_minor -= applied_minor
            invoice.paid_minor += applied_minor
        elif isinstance(command, VoidInvoice):
            invoice = self.invoices[command.invoice_id]
            invoice.voided = True
            self.credit_minor += invoice.paid_minor
            self._apply_credit_oldest_first()
        elif isinstance(command, CreatePayment):
            self.payments[command.payment_id] = AuditedPayment(
                payment_id=command.payment_id, idempotency_key=command.idempotency_key,
                amount_minor=command.amount_minor, currency=command.currency,
                payment_method_id=command.payment_method.id,
                requested=tuple((a.invoice_id, a.amount_minor) for a in command.allocations),
                schedule=str(command.schedule), created_at_ms=now_ms,
                attempts=[AuditedAttempt(attempt_id=command.attempt_id)],
                series_started_at_ms=now_ms,
            )  # fmt: skip
            self.payment_by_key[command.idempotency_key] = command.payment_id
        elif isinstance(command, RecordOutcome):
            self._apply_record_outcome(command, now_ms, state)
        elif isinstance(command, StartRetry):
            self._apply_start_retry(command, now_ms, state)
        elif isinstance(command, ReplacePaymentMethod):
            payment = self.payments[command.payment_id]
            payment.status = "processing"
            payment.payment_method_id = command.payment_method.id
            payment.attempts.append(AuditedAttempt(attempt_id=command.attempt_id))
            payment.series_started_at_ms = now_ms
            payment.series_attempts = 1
        elif isinstance(command, CancelPayment):
            self.payments[command.payment_id].status = "canceled"
        elif isinstance(command, RefundPayment):
            self._apply_refund(command)
        else:
            assert isinstance(command, DisputePayment), command
            self._dispute(self.payments[command.payment_id], command.fee_minor)

    def _dispute(
        self, payment: AuditedPayment, fee_minor: int
    ) -> tuple[int, int, list[tuple[str, int]], list[tuple[str, int]]]:
        """Follow a dispute: (amount, part from credit, reopened, credit applied after)."""
        amount_minor = payment.amount_minor - payment.refunded_minor
        own_credit_left_minor = payment.unapplied_minor - payment.refunded_from_credit_minor
        from_credit_minor = min(amount_minor, self.credit_minor, own_credit_left_minor)
        self.credit_minor -= from_credit_minor
        rest_minor = amount_minor - from_credit_minor
        reopened: list[tuple[str, int]] = []
        paid = sorted((self.invoices[i] for i in payment.allocations),
                      key=lambda i: (i.due_date, i.number, i.invoice_id), reverse=True)  # fmt: skip
        for invoice in paid:
            if invoice.voided:
                continue
            take_minor = min(payment.allocations[invoice.invoice_id], rest_minor,
                             invoice.paid_minor)  # fmt: skip
            if take_minor > 0:
                invoice.paid_minor -= take_minor
                reopened.append((invoice.invoice_id, take_minor))
                rest_minor -= take_minor
        self.dispute_loss_minor += rest_minor
        self.dispute_fees_minor += fee_minor
        payment.disputed_minor = amount_minor
        payment.dispute_fee_minor = fee_minor
        payment.status = "disputed"
        credits: list[tuple[str, int]] = []
        for invoice in self._open_oldest_first():
            take_minor = min(invoice.remaining_minor, self.credit_minor)
            if take_minor > 0:
                invoice.paid_minor += take_minor
                self.credit_minor -= take_minor
                credits.append((invoice.invoice_id, take_minor))
        return amount_minor, from_credit_minor, reopened, credits

    def _engine_payment(self, state: Any, payment_id: str) -> Any:
        engine_payment = state.payments.get(payment_id)
        _check(engine_payment is not None, f"the engine lost payment {payment_id}")
        return engine_payment

    def _apply_record_outcome(self, command: RecordOutcome, now_ms: int, state: Any) -> None:
        payment = self.payments[command.payment_id]
        attempt = payment.current
        engine_payment = self._engine_payment(state, payment.payment_id)
        engine_status = str(engine_payment.status)
        if command.outcome is OutcomeKind.succeeded:
            _check(payment.captures == 0, f"payment {payment.payment_id} captured twice")
            attempt.state = "succeeded"
            payment.captures += 1
            payment.status = "succeeded"
            payment.next_retry_at_ms = None
            self._capture(payment)
            return
        if command.outcome is OutcomeKind.unknown:
            # Resolved by status inquiry, never by a new charge: the payment keeps processing.
            attempt.state = "unknown"
            return
        if command.outcome is OutcomeKind.declined:
            attempt.state = "declined"
            attempt.decline_code = command.decline_code
            if decline_is_hard(command.decline_code, command.visa_category, command.advice_code):
                payment.status = "requires_payment_method"
                payment.next_retry_at_ms = None
                return
            allowed = ("retry_scheduled", "failed")
        else:
            attempt.state = "errored"
            allowed = ("retry_scheduled", "failed")
        _check(
            engine_status in allowed,
            f"a {command.outcome} outcome left the payment {engine_status}, not {allowed}",
        )
        payment.status = engine_status
        payment.next_retry_at_ms = engine_payment.next_retry_at_ms
        if engine_status == "retry_scheduled":
            self._check_retry_time(payment, now_ms)
            if command.outcome is OutcomeKind.declined and command.advice_code in ADVICE_CODES_WAIT:
                assert payment.next_retry_at_ms is not None
                _check(
                    payment.next_retry_at_ms >= now_ms + ADVICE_WAIT_MS_MIN,
                    f"advice code {command.advice_code} not honoured",
                )
        else:
            payment.next_retry_at_ms = None

    def _check_retry_time(self, payment: AuditedPayment, now_ms: int) -> None:
        _check(payment.next_retry_at_ms is not None, "a scheduled retry without a time")
        assert payment.next_retry_at_ms is not None
        _check(payment.next_retry_at_ms > now_ms, "a retry scheduled in the past")
        if payment.current.state == "declined":
            # A soft decline's retries stay within the policy's window; a technical error's
            # quick resend is not part of that series.
            _, window_ms = SERIES_CAPS[payment.schedule]
            _check(
                payment.next_retry_at_ms <= payment.series_started_at_ms + window_ms,
                "a retry scheduled after the policy's window",
            )

    def _apply_start_retry(self, command: StartRetry, now_ms: int, state: Any) -> None:
        payment = self.payments[command.payment_id]
        engine_status = str(self._engine_payment(state, payment.payment_id).status)
        _check(
            engine_status in ("processing", "retry_scheduled", "failed"),
            f"a retry left the payment {engine_status}",
        )
        payment.status = engine_status
        if engine_status == "retry_scheduled":  # deferred by the networks' caps
            payment.next_retry_at_ms = self._engine_payment(
                state, payment.payment_id
            ).next_retry_at_ms
            self._check_retry_time(payment, now_ms)
            return
        payment.next_retry_at_ms = None
        if engine_status == "failed":
            return
        current = payment.current
        if current.state == "errored":
            # A technical error is sent again as it was, under the same attempt.
            current.state = "processing"
            return
        _check(current.state == "declined", f"a retry after a {current.state} attempt")
        _check(
            payment.attempt(command.attempt_id) is None,
            f"a retry reused attempt id {command.attempt_id}",
        )
        payment.attempts.append(AuditedAttempt(attempt_id=command.attempt_id))
        payment.series_attempts += 1
        attempts_max, _ = SERIES_CAPS[payment.schedule]
        _check(
            payment.series_attempts <= attempts_max,
            f"attempt {payment.series_attempts} on one method exceeds the policy's cap",
        )

    def _apply_refund(self, command: RefundPayment) -> None:
        payment = self.payments[command.payment_id]
        own_credit_left_minor = payment.unapplied_minor - payment.refunded_from_credit_minor
        from_credit_minor = min(command.amount_minor, self.credit_minor, own_credit_left_minor)
        self.credit_minor -= from_credit_minor
        self.refund_expense_minor += command.amount_minor - from_credit_minor
        payment.refunded_from_credit_minor += from_credit_minor
        payment.refunded_minor += command.amount_minor
        payment.refunds[command.refund_id] = command.amount_minor
        self.payment_by_refund[command.refund_id] = payment.payment_id
        fully = payment.refunded_minor == payment.amount_minor
        payment.status = "refunded" if fully else "partially_refunded"

    def _open_oldest_first(self) -> list[AuditedInvoice]:
        open_invoices = [i for i in self.invoices.values() if i.status == "open"]
        return sorted(open_invoices, key=lambda i: (i.due_date, i.number, i.invoice_id))

    def _capture(self, payment: AuditedPayment) -> None:
        left_minor = payment.amount_minor
        for invoice_id, requested_minor in payment.requested:
            invoice = self.invoices[invoice_id]
            take_minor = min(requested_minor, invoice.remaining_minor, left_minor)
            if take_minor > 0:
                invoice.paid_minor += take_minor
                payment.allocations[invoice_id] = (
                    payment.allocations.get(invoice_id, 0) + take_minor
                )
                left_minor -= take_minor
        for invoice in self._open_oldest_first():
            take_minor = min(invoice.remaining_minor, left_minor)
            if take_minor > 0:
                invoice.paid_minor += take_minor
                payment.allocations[invoice.invoice_id] = (
                    payment.allocations.get(invoice.invoice_id, 0) + take_minor
                )
                left_minor -= take_minor
        payment.unapplied_minor = left_minor
        self.credit_minor += left_minor

    def _apply_credit_oldest_first(self) -> None:
        for invoice in self._open_oldest_first():
            take_minor = min(invoice.remaining_minor, self.credit_minor)
            invoice.paid_minor += take_minor
            self.credit_minor -= take_minor

    # -- comparison ------------------------------------------------------------------------

    def expected_ledger(self) -> dict[str, int]:
        """Signed, debit-positive balances, computed from the model alone."""
        live = [i for i in self.invoices.values() if not i.voided]
        captured = [p for p in self.payments.values() if p.captures]
        balances = {
            "accounts_receivable": sum(i.remaining_minor for i in live),
            "processor_clearing": sum(
                p.amount_minor - p.refunded_minor - p.disputed_minor - p.dispute_fee_minor
                for p in captured
            ),
            "disputes": self.dispute_loss_minor,
            "fees": self.dispute_fees_minor,
            "customer_credit": -self.credit_minor,
            # Every invoice is deferred until recognition runs, which this workload never
            # asks for (recognition is audited by the revenue tests).
            "deferred_revenue": -sum(i.amount_due_minor for i in live),
            "refunds": self.refund_expense_minor,
        }
        assert sum(balances.values()) == 0, f"the auditor's own ledger is unbalanced: {balances}"
        return balances

    def compare(self, state: Any) -> None:
        """Raise ``AuditError`` where the engine's state differs from the model."""
        if self.currency is None:
            _check(state is None, "the engine has an account the auditor never saw opened")
            return
        _check(state is not None, "the engine lost the account")
        _check(state.currency == self.currency, "currency differs")
        self._compare_invoices(state)
        _check(
            state.credit_minor == self.credit_minor,
            f"credit: engine {state.credit_minor}, auditor {self.credit_minor}",
        )
        if self.credit_minor > 0:
            _check(
                all(i.status != "open" for i in self.invoices.values()),
                "credit stands beside an open invoice",
            )
        self._compare_payments(state)
        expected = self.expected_ledger()
        for name in set(expected) | {str(k) for k in state.ledger}:
            engine_minor = state.ledger.get(name, 0)
            _check(
                engine_minor == expected.get(name, 0),
                f"ledger {name}: engine {engine_minor}, auditor {expected.get(name, 0)}",
            )
        _check(sum(state.ledger.values()) == 0, f"the ledger does not sum to zero: {state.ledger}")

    def _compare_invoices(self, state: Any) -> None:
        _check(
            set(state.invoices) == set(self.invoices),
            f"invoices: engine {sorted(state.invoices)}, auditor {sorted(self.invoices)}",
        )
        for invoice in self.invoices.values():
            engine_invoice = state.invoices[invoice.invoice_id]
            seen = (engine_invoice.amount_due_minor, engine_invoice.amount_paid_minor,
                    engine_invoice.amount_remaining_minor, str(engine_invoice.status))  # fmt: skip
            expected = (invoice.amount_due_minor, invoice.paid_minor, invoice.remaining_minor,
                        invoice.status)  # fmt: skip
            _check(
                seen == expected,
                f"invoice {invoice.invoice_id} (due, paid, remaining, status): "
                f"engine {seen}, auditor {expected}",
            )

    def _compare_payments(self, state: Any) -> None:
        _check(
            set(state.payments) == set(self.payments),
            f"payments: engine {sorted(state.payments)}, auditor {sorted(self.payments)}",
        )
        for payment in self.payments.values():
            engine_payment = state.payments[payment.payment_id]
            where = f"payment {payment.payment_id}"
            _check(engine_payment.amount_minor == payment.amount_minor, f"{where}: amount")
            _check(
                str(engine_payment.status) == payment.status,
                f"{where}: status engine {engine_payment.status}, auditor {payment.status}",
            )
            captured = str(engine_payment.status) in CAPTURED_STATUSES
            _check(captured == bool(payment.captures), f"{where}: captured differs")
            succeeded_attempts = sum(str(a.status) == "succeeded" for a in engine_payment.attempts)
            _check(
                succeeded_attempts == payment.captures,
                f"{where}: {succeeded_attempts} attempts succeeded, expected {payment.captures}",
            )
            engine_attempts = [(a.attempt_id, str(a.status)) for a in engine_payment.attempts]
            expected_attempts = [(a.attempt_id, a.state) for a in payment.attempts]
            _check(
                engine_attempts == expected_attempts,
                f"{where}: attempts engine {engine_attempts}, auditor {expected_attempts}",
            )
            engine_allocations: dict[str, int] = {}
            for allocation in engine_payment.allocations:
                engine_allocations[allocation.invoice_id] = (
                    engine_allocations.get(allocation.invoice_id, 0) + allocation.amount_minor
                )
            _check(
                engine_allocations == payment.allocations,
                f"{where}: allocations engine {engine_allocations}, auditor {payment.allocations}",
            )
            _check(
                engine_payment.amount_unapplied_minor == payment.unapplied_minor,
                f"{where}: unapplied engine {engine_payment.amount_unapplied_minor}, "
                f"auditor {payment.unapplied_minor}",
            )
            _check(
                engine_payment.amount_refunded_minor == payment.refunded_minor,
                f"{where}: refunded engine {engine_payment.amount_refunded_minor}, "
                f"auditor {payment.refunded_minor}",
            )
            _check(dict(engine_payment.refunds) == payment.refunds, f"{where}: refunds differ")
            _check(
                (engine_payment.next_retry_at_ms is None) == (payment.next_retry_at_ms is None),
                f"{where}: a retry time stands without a scheduled retry, or is missing",
            )


class JournalAuditor(AccountAuditor):
    """The model above, following an account's durable journal event by event.

    Nothing an event says is taken on trust where the rules decide it: an allocation is
    recomputed and compared, so is every credit application a new or voided invoice calls
    for and the part of a refund taken from credit; a status moves only along
    ``ALLOWED_NEXT``; a payment is created once per idempotency key and captured once;
    retries stay within the policy's caps and times. Where the engine chooses (a soft
    decline retried or given up, when), the event's choice is checked, then followed."""

    def __init__(self, account_id: str) -> None:
        super().__init__(account_id)
        self.version = 0
        # Credit applications the rules call for, not yet seen in the journal.
        self._credit_due: deque[tuple[str, int]] = deque()
        self._answered: set[str] = set()
        # payment id -> (attempt id, charge id) of its capture
        self.captured: dict[str, tuple[str, str | None]] = {}

    def follow(self, version: int, event: Event) -> None:
        _check(version == self.version + 1, f"journal version {version} after {self.version}")
        self.version = version
        where = f"v{version} {type(event).__name__}"
        if isinstance(event, CreditApplied):
            _check(bool(self._credit_due), f"{where}: credit to {event.invoice_id} uncalled for")
            expected = self._credit_due.popleft()
            _check(
                expected == (event.invoice_id, event.amount_minor),
                f"{where}: credit {(event.invoice_id, event.amount_minor)}, rules {expected}",
            )
            return
        _check(not self._credit_due, f"{where}: credit {list(self._credit_due)} never applied")
        if isinstance(event, AccountOpened):
            _check(self.currency is None, f"{where}: opened twice")
            _check(event.currency in VALID_CURRENCIES, f"{where}: currency {event.currency}")
            self.currency = event.currency
            return
        _check(self.currency is not None, f"{where}: before the account was opened")
        payment_id = getattr(event, "payment_id", None)
        before = self.payments[payment_id].status if payment_id in self.payments else None
        try:
            self._follow(event)
        except AuditError as error:
            raise AuditError(f"{where}: {error}") from None
        if before is not None:
            payment = self.payments[payment_id]
            _check(
                payment.status in ALLOWED_NEXT[before],
                f"{where}: payment {payment_id} moved {before} -> {payment.status}",
            )
            if payment.status != "retry_scheduled":
                payment.next_retry_at_ms = None

    def compare(self, state: Any) -> None:
        _check(not self._credit_due, f"credit {list(self._credit_due)} never applied")
        super().compare(state)

    def _payment(self, payment_id: str) -> AuditedPayment:
        payment = self.payments.get(payment_id)
        _check(payment is not None, f"payment {payment_id} was never created")
        assert payment is not None
        return payment

    def _current(self, payment: AuditedPayment, attempt_id: str, states: frozenset[str]) -> None:
        current = payment.current
        _check(current.attempt_id == attempt_id, f"attempt {attempt_id} is not the current one")
        _check(current.state in states, f"attempt {attempt_id} is {current.state}")

    def _follow(self, event: Event) -> None:
        if isinstance(event, InvoiceIssued):
            _check(event.invoice_id not in self.invoices, "issued twice")
            _check(event.amount_minor > 0, "an invoice for nothing")
            invoice = AuditedInvoice(
                invoice_id=event.invoice_id, number=event.number,
                amount_due_minor=event.amount_minor, due_date=event.due_date,
                service_period=event.service_period,
            )  # fmt: skip
            self.invoices[invoice.invoice_id] = invoice
            applied_minor = min(self.credit_minor, invoice.amount_due_minor)
            if applied_minor > 0:
                self.credit_minor -= applied_minor
                invoice.paid_minor += applied_minor
                self._credit_due.append((invoice.invoice_id, applied_minor))
        elif isinstance(event, InvoiceVoided):
            invoice = self.invoices.get(event.invoice_id)
            _check(invoice is not None and invoice.status == "open", "a void of no open invoice")
            assert invoice is not None
            seen = (event.amount_paid_minor, event.amount_remaining_minor)
            _check(seen == (invoice.paid_minor, invoice.remaining_minor),
                   f"void (paid, remaining) {seen}, rules "
                   f"{(invoice.paid_minor, invoice.remaining_minor)}")  # fmt: skip
            invoice.voided = True
            self.credit_minor += invoice.paid_minor
            for other in self._open_oldest_first():
                take_minor = min(other.remaining_minor, self.credit_minor)
                if take_minor > 0:
                    other.paid_minor += take_minor
                    self.credit_minor -= take_minor
                    self._credit_due.append((other.invoice_id, take_minor))
        elif isinstance(event, PaymentCreated):
            self._follow_created(event)
        elif isinstance(event, RequestAnswered):
            self._payment(event.payment_id)
            _check(event.payment_id not in self._answered, "its request answered twice")
            self._answered.add(event.payment_id)
        elif isinstance(event, AttemptSucceeded):
            self._follow_succeeded(event)
        elif isinstance(event, AttemptDeclined):
            self._follow_declined(event)
        elif isinstance(event, AttemptErrored):
            payment = self._payment(event.payment_id)
            self._current(payment, event.attempt_id, frozenset({"processing", "unknown"}))
            payment.current.state = "errored"
            _check(str(event.status) in ("retry_scheduled", "failed"), f"errored: {event.status}")
            payment.status = str(event.status)
            payment.next_retry_at_ms = event.next_retry_at_ms
            if payment.status == "retry_scheduled":
                self._check_retry_time(payment, event.at_ms)
        elif isinstance(event, AttemptOutcomeUnknown):
            payment = self._payment(event.payment_id)
            self._current(payment, event.attempt_id, frozenset({"processing"}))
            _check(payment.status == "processing", f"unknown while {payment.status}")
            payment.current.state = "unknown"
        elif isinstance(event, RetryStarted):
            self._follow_retry_started(event)
        elif isinstance(event, RetryDeferred):
            payment = self._payment(event.payment_id)
            _check(payment.status == "retry_scheduled", f"deferred while {payment.status}")
            payment.next_retry_at_ms = event.next_retry_at_ms
            self._check_retry_time(payment, event.at_ms)
        elif isinstance(event, RetriesExhausted):
            payment = self._payment(event.payment_id)
            _check(payment.status == "retry_scheduled", f"exhausted while {payment.status}")
            payment.status = "failed"
        elif isinstance(event, PaymentMethodReplaced):
            payment = self._payment(event.payment_id)
            _check(payment.attempt(event.attempt_id) is None, "a replacement reused an attempt id")
            payment.status = "processing"
            payment.payment_method_id = event.payment_method.id
            payment.attempts.append(AuditedAttempt(attempt_id=event.attempt_id))
            payment.series_started_at_ms = event.at_ms
            payment.series_attempts = 1
        elif isinstance(event, PaymentCanceled):
            payment = self._payment(event.payment_id)
            _check(payment.current.state == "declined", f"canceled with a {payment.current.state} "
                   "attempt, which may still capture")  # fmt: skip
            payment.status = "canceled"
        elif isinstance(event, PaymentRefunded):
            self._follow_refunded(event)
        elif isinstance(event, PaymentDisputed):
            payment = self._payment(event.payment_id)
            _check(payment.status in ("succeeded", "partially_refunded"),
                   f"disputed while {payment.status}")  # fmt: skip
            amount_minor, from_credit_minor, reopened, credits = self._dispute(
                payment, event.fee_minor
            )
            seen = (event.amount_minor, event.from_credit_minor,
                    [(a.invoice_id, a.amount_minor) for a in event.reopened])  # fmt: skip
            expected = (amount_minor, from_credit_minor, reopened)
            _check(seen == expected, f"dispute (amount, from credit, reopened) {seen}, "
                   f"rules {expected}")  # fmt: skip
            self._credit_due.extend(credits)
        elif isinstance(event, PaymentMethodRemoved):
            pass
        else:
            _check(False, "an event outside this model")

    def _follow_created(self, event: PaymentCreated) -> None:
        _check(event.payment_id not in self.payments, "created twice")
        _check(
            event.idempotency_key not in self.payment_by_key,
            f"a second payment for key {event.idempotency_key!r} "
            f"(first {self.payment_by_key.get(event.idempotency_key)})",
        )
        _check(event.currency == self.currency, f"currency {event.currency}")
        _check(event.amount_minor > 0, "a payment of nothing")
        requested = tuple((a.invoice_id, a.amount_minor) for a in event.allocations)
        for invoice_id, amount_minor in requested:
            invoice = self.invoices.get(invoice_id)
            _check(invoice is not None and invoice.status == "open", f"allocated to {invoice_id}")
            assert invoice is not None
            _check(0 < amount_minor <= invoice.remaining_minor, f"{amount_minor} to {invoice_id}")
        _check(sum(a for _, a in requested) <= event.amount_minor, "allocations over the amount")
        self.payments[event.payment_id] = AuditedPayment(
            payment_id=event.payment_id, idempotency_key=event.idempotency_key,
            amount_minor=event.amount_minor, currency=event.currency,
            payment_method_id=event.payment_method.id, requested=requested,
            schedule=str(event.schedule), created_at_ms=event.at_ms,
            attempts=[AuditedAttempt(attempt_id=event.attempt_id)],
            series_started_at_ms=event.at_ms,
        )  # fmt: skip
        self.payment_by_key[event.idempotency_key] = event.payment_id

    def _follow_succeeded(self, event: AttemptSucceeded) -> None:
        payment = self._payment(event.payment_id)
        _check(payment.captures == 0, f"payment {payment.payment_id} captured twice")
        self._current(payment, event.attempt_id, OPEN_ATTEMPT_STATES)
        self._capture(payment)
        allocations: dict[str, int] = {}
        for allocation in event.allocations:
            allocations[allocation.invoice_id] = (
                allocations.get(allocation.invoice_id, 0) + allocation.amount_minor
            )
        _check(
            (allocations, event.unapplied_minor) == (payment.allocations, payment.unapplied_minor),
            f"allocations {allocations} + {event.unapplied_minor} unapplied; rules "
            f"{payment.allocations} + {payment.unapplied_minor}",
        )
        payment.current.state = "succeeded"
        payment.captures += 1
        payment.status = "succeeded"
        self.captured[payment.payment_id] = (event.attempt_id, event.charge_id)

    def _follow_declined(self, event: AttemptDeclined) -> None:
        payment = self._payment(event.payment_id)
        self._current(payment, event.attempt_id, OPEN_ATTEMPT_STATES)
        payment.current.state = "declined"
        payment.current.decline_code = event.decline_code
        status = str(event.status)
        if decline_is_hard(event.decline_code, event.visa_category, event.advice_code):
            _check(status == "requires_payment_method", f"a hard decline left it {status}")
        else:
            _check(status in ("retry_scheduled", "failed"), f"a soft decline left it {status}")
        payment.status = status
        payment.next_retry_at_ms = event.next_retry_at_ms
        if status == "retry_scheduled":
            self._check_retry_time(payment, event.at_ms)
            if event.advice_code in ADVICE_CODES_WAIT:
                assert payment.next_retry_at_ms is not None
                _check(payment.next_retry_at_ms >= event.at_ms + ADVICE_WAIT_MS_MIN,
                       f"advice code {event.advice_code} not honoured")  # fmt: skip

    def _follow_retry_started(self, event: RetryStarted) -> None:
        payment = self._payment(event.payment_id)
        _check(payment.status == "retry_scheduled", f"a retry while {payment.status}")
        due_ms = payment.next_retry_at_ms
        _check(due_ms is not None and event.at_ms >= due_ms, f"a retry before {due_ms}")
        current = payment.current
        if event.resend:
            self._current(payment, event.attempt_id, frozenset({"errored"}))
            current.state = "processing"
        else:
            _check(current.state == "declined", f"a new attempt after a {current.state} one")
            reused = payment.attempt(event.attempt_id) is not None
            _check(not reused, f"attempt id {event.attempt_id} reused")
            payment.attempts.append(AuditedAttempt(attempt_id=event.attempt_id))
            payment.series_attempts += 1
            attempts_max, _ = SERIES_CAPS[payment.schedule]
            _check(payment.series_attempts <= attempts_max,
                   f"attempt {payment.series_attempts} exceeds the policy's cap")  # fmt: skip
        payment.status = "processing"

    def _follow_refunded(self, event: PaymentRefunded) -> None:
        payment = self._payment(event.payment_id)
        _check(payment.status in ("succeeded", "partially_refunded"), f"refunded {payment.status}")
        _check(event.refund_id not in self.payment_by_refund, f"refund {event.refund_id} twice")
        refundable_minor = payment.amount_minor - payment.refunded_minor
        _check(0 < event.amount_minor <= refundable_minor, f"refund of {event.amount_minor}")
        own_credit_minor = payment.unapplied_minor - payment.refunded_from_credit_minor
        from_credit_minor = min(event.amount_minor, self.credit_minor, own_credit_minor)
        _check(
            event.from_credit_minor == from_credit_minor,
            f"{event.from_credit_minor} taken from credit, rules {from_credit_minor}",
        )
        self._apply_refund(RefundPayment(
            account_id=self.account_id, payment_id=payment.payment_id,
            refund_id=event.refund_id, amount_minor=event.amount_minor,
        ))  # fmt: skip
        _check(payment.status == str(event.status), f"refund left it {event.status}")
