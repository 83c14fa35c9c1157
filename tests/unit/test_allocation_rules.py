"""Allocation as the API contract states it, checked on a real account through the engine."""

from __future__ import annotations

from payportal.engine import (
    Allocation,
    InvoiceStatus,
    LedgerAccount,
    OutcomeKind,
    Rejection,
    Result,
    VoidInvoice,
    preview_allocation,
)

from .engine_builders import Ledgerbook


def test_partial_payment_is_applied_to_oldest_invoice_first() -> None:
    book = Ledgerbook()
    newer = book.invoice(5_000, due="2026-03-01")
    older = book.invoice(3_000, due="2026-01-01")
    payment_id = book.pay(4_000)
    payment = book.account.payments[payment_id]
    assert payment.allocations == (
        Allocation(invoice_id=older, amount_minor=3_000),
        Allocation(invoice_id=newer, amount_minor=1_000),
    )
    assert book.account.invoices[older].status is InvoiceStatus.paid
    assert book.account.invoices[newer].amount_remaining_minor == 4_000
    assert book.account.outstanding_minor == 4_000


def test_invoices_due_the_same_day_are_paid_in_number_order() -> None:
    book = Ledgerbook()
    second = book.invoice(1_000, due="2026-01-01", number="INV-0002")
    first = book.invoice(1_000, due="2026-01-01", number="INV-0001")
    payment_id = book.pay(1_500)
    assert book.account.payments[payment_id].allocations == (
        Allocation(invoice_id=first, amount_minor=1_000),
        Allocation(invoice_id=second, amount_minor=500),
    )


def test_explicit_allocations_come_before_oldest_first() -> None:
    book = Ledgerbook()
    older = book.invoice(2_000, due="2026-01-01")
    chosen = book.invoice(2_000, due="2026-06-01")
    payment_id = book.pay(2_500, allocations=(Allocation(invoice_id=chosen, amount_minor=2_000),))
    assert book.account.payments[payment_id].allocations == (
        Allocation(invoice_id=chosen, amount_minor=2_000),
        Allocation(invoice_id=older, amount_minor=500),
    )


def test_overpayment_becomes_credit_and_credit_pays_the_next_invoice() -> None:
    book = Ledgerbook()
    book.invoice(1_000)
    payment_id = book.pay(1_600)
    assert book.account.payments[payment_id].amount_unapplied_minor == 600
    assert book.account.credit_minor == 600
    assert book.account.ledger[LedgerAccount.customer_credit] == -600
    later = book.invoice(1_000)
    assert book.account.invoices[later].amount_paid_minor == 600
    assert book.account.credit_minor == 0
    assert book.account.outstanding_minor == 400


def test_preview_matches_the_split_the_payment_gets() -> None:
    book = Ledgerbook()
    book.invoice(1_200, due="2026-02-01")
    book.invoice(800, due="2026-01-01")
    preview = preview_allocation(book.account, 1_500)
    payment_id = book.pay(1_500)
    payment = book.account.payments[payment_id]
    assert preview.allocations == payment.allocations
    assert preview.unapplied_minor == payment.amount_unapplied_minor


def test_payment_applied_after_another_paid_the_same_invoice_goes_to_credit() -> None:
    book = Ledgerbook()
    invoice_id = book.invoice(1_000)
    first = book.create_payment(
        1_000, allocations=(Allocation(invoice_id=invoice_id, amount_minor=1_000),)
    )
    second = book.create_payment(
        1_000, allocations=(Allocation(invoice_id=invoice_id, amount_minor=1_000),)
    )
    assert first.outcome.payment_id
    assert second.outcome.payment_id
    book.outcome(first.outcome.payment_id, OutcomeKind.succeeded)
    book.outcome(second.outcome.payment_id, OutcomeKind.succeeded)
    assert book.account.payments[second.outcome.payment_id].allocations == ()
    assert book.account.credit_minor == 1_000


def test_explicit_allocation_above_the_invoice_remaining_is_rejected() -> None:
    book = Ledgerbook()
    invoice_id = book.invoice(1_000)
    decision = book.create_payment(
        2_000, allocations=(Allocation(invoice_id=invoice_id, amount_minor=1_001),)
    )
    assert decision.outcome.rejection is Rejection.allocation_must_not_exceed_invoice_remaining
    assert decision.outcome.rejection.param == "allocations"


def test_explicit_allocations_above_the_payment_amount_are_rejected() -> None:
    book = Ledgerbook()
    invoice_id = book.invoice(5_000)
    decision = book.create_payment(
        1_000, allocations=(Allocation(invoice_id=invoice_id, amount_minor=1_500),)
    )
    assert decision.outcome.rejection is Rejection.allocations_must_not_exceed_amount


def test_allocation_to_an_unknown_or_closed_invoice_is_rejected() -> None:
    book = Ledgerbook()
    unknown = book.create_payment(
        100, allocations=(Allocation(invoice_id="inv_x", amount_minor=100),)
    )
    assert unknown.outcome.rejection is Rejection.invoice_not_found
    paid = book.invoice(100)
    book.pay(100)
    closed = book.create_payment(100, allocations=(Allocation(invoice_id=paid, amount_minor=100),))
    assert closed.outcome.rejection is Rejection.invoice_must_be_open


def test_the_same_invoice_twice_in_allocations_is_rejected() -> None:
    book = Ledgerbook()
    invoice_id = book.invoice(1_000)
    twice = (Allocation(invoice_id=invoice_id, amount_minor=100),) * 2
    decision = book.create_payment(500, allocations=twice)
    assert decision.outcome.result is Result.rejected
    assert decision.outcome.rejection is Rejection.allocation_invoice_must_be_unique


def test_voided_invoice_returns_what_was_paid_to_credit_which_pays_other_invoices() -> None:
    book = Ledgerbook()
    to_void = book.invoice(1_000, due="2026-01-01")
    other = book.invoice(1_000, due="2026-02-01")
    book.pay(400)  # all of it to the oldest: the one to be voided
    decision = book.run(VoidInvoice(account_id=book.account_id, invoice_id=to_void))
    assert decision.outcome.result is Result.ok
    assert book.account.invoices[to_void].status is InvoiceStatus.void
    assert book.account.invoices[other].amount_paid_minor == 400
    assert book.account.credit_minor == 0
    assert book.account.outstanding_minor == 600
