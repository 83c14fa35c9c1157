"""A dispute posts what it takes back and its fee, reopens what the payer owes, and is
applied once; a withheld dispute brings clearing back to zero (docs/design.md)."""

from __future__ import annotations

import datetime as dt
import random

from payportal.engine import (
    AccountState,
    Command,
    CreatePayment,
    DisputePayment,
    InvoiceStatus,
    IssueInvoice,
    LedgerAccount,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
    Result,
    ReversalKind,
    SettleCharge,
    SettleReversal,
    check_invariants,
    execute,
)

A = "acct_1"
VISA = PaymentMethodRef(id="pm", brand="visa")


def _run(state: AccountState | None, command: Command) -> tuple[AccountState | None, Result]:
    state, decision, _ = execute(state, command, 1_700_000_000_000, random.Random(0))
    if state is not None:
        check_invariants(state)
    return state, decision.outcome.result


def _paid_account(amount_minor: int) -> AccountState:
    state, _ = _run(None, OpenAccount(account_id=A, currency="USD"))
    state, _ = _run(state, IssueInvoice(account_id=A, invoice_id="inv_1", number="1",
                                        amount_minor=6_000, currency="USD",
                                        due_date=dt.date(2026, 1, 31)))  # fmt: skip
    state, _ = _run(state, CreatePayment(account_id=A, payment_id="pay_1", attempt_id="att_1",
                                         idempotency_key="k1", amount_minor=amount_minor,
                                         currency="USD", payment_method=VISA))  # fmt: skip
    captured = RecordOutcome(account_id=A, payment_id="pay_1", attempt_id="att_1",
                             outcome=OutcomeKind.succeeded, charge_id="ch_1")  # fmt: skip
    state, _ = _run(state, captured)
    assert state is not None
    return state


def test_a_dispute_reopens_the_invoice_takes_back_credit_and_posts_its_fee_once() -> None:
    state = _paid_account(10_000)  # 6,000 to the invoice, 4,000 credit
    state, result = _run(state, SettleCharge(account_id=A, payment_id="pay_1", charge_id="ch_1",
                                             payout_id="po_1", amount_minor=10_000,
                                             fee_minor=320, currency="USD"))  # fmt: skip
    assert result is Result.ok
    dispute = DisputePayment(account_id=A, payment_id="pay_1", dispute_id="dp_1",
                             fee_minor=1_500)  # fmt: skip
    state, result = _run(state, dispute)
    assert result is Result.ok
    assert state is not None
    ledger = dict(state.ledger)
    assert state.invoices["inv_1"].status is InvoiceStatus.open
    assert state.outstanding_minor == 6_000
    assert state.credit_minor == 0
    assert ledger[LedgerAccount.processor_clearing] == -11_500
    assert ledger[LedgerAccount.fees] == 320 + 1_500
    assert ledger.get(LedgerAccount.disputes, 0) == 0
    state, result = _run(state, dispute)
    assert result is Result.exists
    assert state is not None
    assert dict(state.ledger) == ledger
    withheld = SettleReversal(account_id=A, payment_id="pay_1", kind=ReversalKind.dispute,
                              reversal_id="dp_1", payout_id="po_2", amount_minor=10_000,
                              fee_minor=1_500, currency="USD")  # fmt: skip
    state, result = _run(state, withheld)
    assert result is Result.ok
    assert state is not None
    assert state.ledger.get(LedgerAccount.processor_clearing, 0) == 0
    assert state.ledger[LedgerAccount.cash] == 10_000 - 320 - 11_500
    state, result = _run(state, withheld)
    assert result is Result.exists


def test_a_dispute_without_a_fee_takes_the_reports_fee_and_a_wrong_fee_is_refused() -> None:
    state = _paid_account(6_000)
    state, _ = _run(state, DisputePayment(account_id=A, payment_id="pay_1", dispute_id="dp_1"))
    fields = dict(account_id=A, payment_id="pay_1", kind=ReversalKind.dispute,
                  reversal_id="dp_1", payout_id="po_2", amount_minor=6_000,
                  currency="USD")  # fmt: skip
    state, result = _run(state, SettleReversal(**fields, fee_minor=1_500))  # type: ignore[arg-type]
    assert result is Result.ok
    assert state is not None
    assert state.ledger[LedgerAccount.fees] == 1_500
    assert state.payments["pay_1"].dispute_fee_minor == 1_500
    state2 = _paid_account(6_000)
    state2, _ = _run(state2, DisputePayment(account_id=A, payment_id="pay_1", fee_minor=1_000))
    _, result = _run(state2, SettleReversal(**fields, fee_minor=1_500))  # type: ignore[arg-type]
    assert result is Result.rejected
