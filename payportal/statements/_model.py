"""A statement of account as data: balances, lines and totals, all in integer minor units.

The model: a statement covers whole UTC days ``period_start`` .. ``period_end`` (both
inclusive). Its ``opening`` balances are the account's ledger balances before the first
day, its ``closing`` balances those at the end of the last day, and its ``lines`` every
money event in between, in journal order. A customer balance has two sides that never
stand together for long (credit is applied to new invoices at once): ``outstanding``
(the receivable, what open invoices still owe) and ``credit`` (what the account holds);
``balance`` is their difference, positive when the payer owes.

Every line carries how it changed the outstanding amount and the credit; detail lines
(``detail=True``: how a payment was allocated, what went to credit) explain the line
above them and change nothing themselves, so summing the changes of all lines gives the
closing balances from the opening ones. Refunds move the balance only by the credit they
take back; the rest of a refund is returned to the card without re-opening an invoice.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

import msgspec

__all__ = [
    "Balances",
    "LineKind",
    "OpenInvoiceLine",
    "Statement",
    "StatementLine",
    "StatementTotals",
]


class LineKind(StrEnum):
    invoice = "invoice"  # an invoice was issued: a charge
    credit_applied = "credit_applied"  # account credit settled part of an invoice
    void = "void"  # an invoice was voided: its charge is taken back
    payment = "payment"  # a payment was captured
    allocation = "allocation"  # detail: the part of a payment applied to one invoice
    credit_created = "credit_created"  # detail: what a payment or a void left as credit
    refund = "refund"  # money returned to the payer's card
    adjustment = "adjustment"  # any other posting that moved the receivable or the credit


class Balances(msgspec.Struct, frozen=True, kw_only=True):
    outstanding_minor: int
    credit_minor: int
    # outstanding - credit: what the payer owes (negative: what the account holds).
    balance_minor: int

    def __post_init__(self) -> None:
        assert self.balance_minor == self.outstanding_minor - self.credit_minor, self


class StatementLine(msgspec.Struct, frozen=True, kw_only=True):
    version: int  # the journal version of the event that made the line
    posted_at_ms: int
    posted_on: dt.date  # UTC
    kind: LineKind
    reference: str  # what a person looks for: an invoice number, a payment or refund id
    description: str
    amount_minor: int  # the line's own amount, as the event states it (>= 0)
    outstanding_change_minor: int
    credit_change_minor: int
    balance_change_minor: int
    balance_minor: int  # the running balance after the line
    detail: bool = False
    invoice_id: str | None = None
    invoice_number: str | None = None
    payment_id: str | None = None
    refund_id: str | None = None

    def __post_init__(self) -> None:
        assert self.amount_minor >= 0, self
        assert self.balance_change_minor == (
            self.outstanding_change_minor - self.credit_change_minor
        ), self
        if self.detail:
            assert self.outstanding_change_minor == 0, self
            assert self.credit_change_minor == 0, self


class StatementTotals(msgspec.Struct, frozen=True, kw_only=True):
    """What happened in the period. With the opening balances these give the closing ones:

    closing.outstanding = opening.outstanding + invoiced - applied_to_invoices
                          - credit_applied - voided_outstanding + adjustments_outstanding
    closing.credit      = opening.credit + credit_created - credit_applied
                          - refunds_from_credit + adjustments_credit
    closing.balance     = opening.balance + invoiced - payments - voided
                          + refunds_from_credit + adjustments_balance
    """

    invoices_count: int
    invoiced_minor: int
    voids_count: int
    voided_minor: int  # the voided invoices' amounts due
    voided_outstanding_minor: int  # what they still owed (leaves the receivable)
    payments_count: int
    payments_minor: int
    applied_to_invoices_minor: int
    credit_created_minor: int  # unapplied payments and the paid part of voided invoices
    credit_applied_minor: int
    refunds_count: int
    refunds_minor: int
    refunds_from_credit_minor: int
    adjustments_outstanding_minor: int = 0
    adjustments_credit_minor: int = 0

    @property
    def adjustments_balance_minor(self) -> int:
        return self.adjustments_outstanding_minor - self.adjustments_credit_minor


class OpenInvoiceLine(msgspec.Struct, frozen=True, kw_only=True):
    """An invoice with something left to pay at the end of the period."""

    invoice_id: str
    number: str
    due_date: dt.date
    amount_due_minor: int
    amount_remaining_minor: int


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    account_name: str
    account_email: str
    external_ref: str | None
    merchant_name: str
    currency: str
    period_start: dt.date
    period_end: dt.date
    # The statement's version: how many money events (the kinds of ``LineKind`` that are
    # not details) the account had up to the end of the period. Every posted payment or
    # refund is one, so each makes a new version; two statements of one account and
    # period with the same version say the same.
    version: int
    # The last journal version read: the statement reflects every event up to it.
    journal_version: int
    generated_at_ms: int
    opening: Balances
    closing: Balances
    totals: StatementTotals
    lines: tuple[StatementLine, ...]
    open_invoices: tuple[OpenInvoiceLine, ...]
    # The account's signed, debit-positive ledger balances (``engine.ledger``) before the
    # period and at its end, by ledger account: what the totals are checked against.
    ledger_opening: dict[str, int]
    ledger_closing: dict[str, int]
