"""Payments from creation to refund, one behaviour per test, through the engine's decide/evolve."""

from __future__ import annotations

import datetime as dt

import msgspec

from payportal.engine import (
    AccountOpened,
    AccountState,
    AttemptStatus,
    CancelPayment,
    CreatePayment,
    DeclineClass,
    DisputePayment,
    IssueInvoice,
    LedgerAccount,
    OutcomeKind,
    PaymentMethodRef,
    PaymentStatus,
    ReadAccount,
    RefundPayment,
    Rejection,
    ReplacePaymentMethod,
    Result,
    StartRetry,
    decide,
    evolve,
)

from .engine_builders import MASTERCARD, VISA, Ledgerbook


def _created(book: Ledgerbook, amount_minor: int = 1_000, **kw: object) -> str:
    decision = book.create_payment(amount_minor, **kw)  # type: ignore[arg-type]
    assert decision.outcome.result is Result.ok, decision
    assert decision.outcome.payment_id is not None
    return decision.outcome.payment_id


def test_new_payment_is_processing_with_one_attempt() -> None:
    book = Ledgerbook()
    payment = book.account.payments[_created(book)]
    assert payment.status is PaymentStatus.processing
    assert [a.status for a in payment.attempts] == [AttemptStatus.processing]
    assert book.account.ledger.get(LedgerAccount.processor_clearing, 0) == 0


def test_success_posts_clearing_against_receivables_and_records_processing_time() -> None:
    book = Ledgerbook()
    book.invoice(1_000)
    payment_id = _created(book)
    book.now_ms += 1_234
    book.outcome(payment_id, OutcomeKind.succeeded, charge_id="ch_1")
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.succeeded
    assert payment.processing_ms == 1_234
    assert payment.current_attempt.charge_id == "ch_1"
    assert book.account.ledger[LedgerAccount.processor_clearing] == 1_000
    assert book.account.ledger[LedgerAccount.accounts_receivable] == 0


def test_duplicate_success_is_answered_exists_and_applies_nothing_twice() -> None:
    book = Ledgerbook()
    book.invoice(5_000)
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.succeeded)
    again = book.outcome(payment_id, OutcomeKind.succeeded)
    assert again.outcome.result is Result.exists
    assert book.account.outstanding_minor == 4_000


def test_late_decline_after_success_never_moves_the_payment_backwards() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.succeeded)
    late = book.outcome(payment_id, OutcomeKind.declined, decline_code="insufficient_funds")
    assert late.outcome.rejection is Rejection.exists_with_different_outcome
    assert book.account.payments[payment_id].status is PaymentStatus.succeeded


def test_late_unknown_after_success_is_no_news() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.succeeded)
    assert book.outcome(payment_id, OutcomeKind.unknown).outcome.result is Result.exists


def test_hard_decline_asks_for_another_payment_method() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.declined, decline_code="do_not_honor")
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.requires_payment_method
    assert payment.current_attempt.decline_class is DeclineClass.hard
    assert payment.next_retry_at_ms is None


def test_new_payment_method_after_hard_decline_starts_a_new_attempt() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.declined, decline_code="expired_card")
    replace = ReplacePaymentMethod(
        account_id=book.account_id, payment_id=payment_id, attempt_id="att_new",
        payment_method=MASTERCARD,
    )  # fmt: skip
    assert book.run(replace).outcome.result is Result.ok
    assert book.run(replace).outcome.result is Result.exists
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.processing
    assert payment.payment_method == MASTERCARD
    assert len(payment.attempts) == 2


def test_soft_decline_schedules_a_retry_that_runs_when_due() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.declined, decline_code="insufficient_funds")
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.retry_scheduled
    assert payment.next_retry_at_ms is not None
    start = StartRetry(account_id=book.account_id, payment_id=payment_id, attempt_id="att_r1")
    assert book.run(start).outcome.rejection is Rejection.retry_must_be_due
    book.now_ms = payment.next_retry_at_ms
    assert book.run(start).outcome.result is Result.ok
    assert book.run(start).outcome.result is Result.exists  # the timer fired twice
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.processing
    assert [a.attempt_id for a in payment.attempts][-1] == "att_r1"


def test_one_off_soft_declines_stop_after_four_attempts() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    for n in range(1, 10):
        book.outcome(payment_id, OutcomeKind.declined, decline_code="insufficient_funds")
        payment = book.account.payments[payment_id]
        if payment.status is PaymentStatus.failed:
            break
        assert payment.next_retry_at_ms is not None
        book.now_ms = payment.next_retry_at_ms
        book.run(StartRetry(account_id=book.account_id, payment_id=payment_id, attempt_id=f"r{n}"))
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.failed
    assert len(payment.attempts) == 4


def test_technical_error_resends_the_same_attempt() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.errored, decline_code="processing_error")
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.retry_scheduled
    assert payment.next_retry_at_ms is not None
    first_attempt_id = payment.current_attempt.attempt_id
    book.now_ms = payment.next_retry_at_ms
    book.run(StartRetry(account_id=book.account_id, payment_id=payment_id, attempt_id="ignored"))
    payment = book.account.payments[payment_id]
    assert [a.attempt_id for a in payment.attempts] == [first_attempt_id]
    assert payment.current_attempt.sends == 2
    book.outcome(payment_id, OutcomeKind.succeeded)
    assert book.account.payments[payment_id].status is PaymentStatus.succeeded


def test_unknown_outcome_keeps_processing_until_an_inquiry_answers() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.unknown)
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.processing
    assert payment.current_attempt.status is AttemptStatus.unknown
    cancel = book.run(CancelPayment(account_id=book.account_id, payment_id=payment_id))
    assert cancel.outcome.rejection is Rejection.payment_status_must_allow_transition
    book.outcome(payment_id, OutcomeKind.succeeded)
    assert book.account.payments[payment_id].status is PaymentStatus.succeeded


def test_cancel_is_allowed_only_once_the_processor_said_no() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    book.outcome(payment_id, OutcomeKind.errored, decline_code="processing_error")
    cancel = CancelPayment(account_id=book.account_id, payment_id=payment_id)
    assert book.run(cancel).outcome.rejection is Rejection.attempt_outcome_must_be_known
    other = _created(book)
    book.outcome(other, OutcomeKind.declined, decline_code="insufficient_funds")
    cancel_other = CancelPayment(account_id=book.account_id, payment_id=other)
    assert book.run(cancel_other).outcome.result is Result.ok
    assert book.run(cancel_other).outcome.result is Result.exists
    assert book.account.payments[other].status is PaymentStatus.canceled


def test_succeeded_payment_cannot_be_canceled() -> None:
    book = Ledgerbook()
    payment_id = book.pay(500)
    cancel = book.run(CancelPayment(account_id=book.account_id, payment_id=payment_id))
    assert cancel.outcome.rejection is Rejection.payment_status_must_allow_transition


def test_refunds_are_partial_then_full_and_never_exceed_the_payment() -> None:
    book = Ledgerbook()
    book.invoice(1_000)
    payment_id = book.pay(1_000)
    refund = RefundPayment(
        account_id=book.account_id, payment_id=payment_id, refund_id="re_1", amount_minor=300
    )
    assert book.run(refund).outcome.result is Result.ok
    assert book.run(refund).outcome.result is Result.exists
    changed = msgspec.structs.replace(refund, amount_minor=301)
    assert book.run(changed).outcome.rejection is Rejection.exists_with_different_amount
    too_much = RefundPayment(
        account_id=book.account_id, payment_id=payment_id, refund_id="re_2", amount_minor=701
    )
    assert book.run(too_much).outcome.rejection is Rejection.refund_must_not_exceed_refundable
    assert book.account.payments[payment_id].status is PaymentStatus.partially_refunded
    rest = RefundPayment(
        account_id=book.account_id, payment_id=payment_id, refund_id="re_3", amount_minor=700
    )
    assert book.run(rest).outcome.result is Result.ok
    assert book.account.payments[payment_id].status is PaymentStatus.refunded
    assert book.account.ledger[LedgerAccount.refunds] == 1_000
    assert book.account.ledger.get(LedgerAccount.processor_clearing, 0) == 0


def test_refund_of_an_overpayment_takes_back_the_credit_first() -> None:
    book = Ledgerbook()
    book.invoice(1_000)
    payment_id = book.pay(1_500)
    assert book.account.credit_minor == 500
    refund = RefundPayment(
        account_id=book.account_id, payment_id=payment_id, refund_id="re_1", amount_minor=700
    )
    book.run(refund)
    assert book.account.credit_minor == 0
    assert book.account.ledger[LedgerAccount.refunds] == 200


def test_refund_before_success_is_rejected() -> None:
    book = Ledgerbook()
    payment_id = _created(book)
    refund = RefundPayment(
        account_id=book.account_id, payment_id=payment_id, refund_id="re_1", amount_minor=1
    )
    assert book.run(refund).outcome.rejection is Rejection.payment_status_must_allow_transition


def test_dispute_after_success_is_final() -> None:
    book = Ledgerbook()
    payment_id = book.pay(100)
    dispute = DisputePayment(account_id=book.account_id, payment_id=payment_id)
    assert book.run(dispute).outcome.result is Result.ok
    assert book.run(dispute).outcome.result is Result.exists
    refund = RefundPayment(
        account_id=book.account_id, payment_id=payment_id, refund_id="re_1", amount_minor=1
    )
    assert book.run(refund).outcome.rejection is Rejection.payment_status_must_allow_transition


def test_same_idempotency_key_and_fields_returns_the_original_payment() -> None:
    book = Ledgerbook()
    first = book.create_payment(1_000, key="order-7")
    again = book.create_payment(1_000, key="order-7")
    assert again.outcome.result is Result.exists
    assert again.outcome.payment_id == first.outcome.payment_id
    assert len(book.account.payments) == 1


def test_same_idempotency_key_with_a_different_field_is_rejected_naming_it() -> None:
    book = Ledgerbook()
    book.create_payment(1_000, key="order-7")
    amount = book.create_payment(1_001, key="order-7")
    assert amount.outcome.rejection is Rejection.exists_with_different_amount
    assert amount.outcome.rejection.param == "amount"
    method = book.create_payment(1_000, key="order-7", method=PaymentMethodRef(id="pm_other"))
    assert method.outcome.rejection is Rejection.exists_with_different_payment_method


def test_payment_field_rules_are_checked_in_precedence_order() -> None:
    book = Ledgerbook()
    both_wrong = CreatePayment(
        account_id=book.account_id, payment_id="pay_x", attempt_id="att_x", idempotency_key="",
        amount_minor=0, currency="XXX", payment_method=VISA,
    )  # fmt: skip
    assert book.run(both_wrong).outcome.rejection is Rejection.amount_must_be_positive
    fixed_amount = msgspec.structs.replace(both_wrong, amount_minor=5)
    assert book.run(fixed_amount).outcome.rejection is Rejection.currency_must_be_valid
    fixed_currency = msgspec.structs.replace(fixed_amount, currency="EUR")
    assert book.run(fixed_currency).outcome.rejection is Rejection.idempotency_key_must_be_valid
    fixed_key = msgspec.structs.replace(fixed_currency, idempotency_key="k")
    assert book.run(fixed_key).outcome.rejection is Rejection.currency_must_match_account


def test_commands_for_an_account_never_opened_are_rejected() -> None:
    book = Ledgerbook()
    stranger = IssueInvoice(
        account_id="acct_nobody", invoice_id="inv_1", number="1", amount_minor=10,
        currency="USD", due_date=dt.date(2026, 1, 1),
    )  # fmt: skip
    decision = decide(None, stranger, book.now_ms, book.rng)
    assert decision.outcome.rejection is Rejection.account_not_found


def test_journal_replay_rebuilds_the_exact_state() -> None:
    book = Ledgerbook()
    events: list[object] = []
    original_run = book.run

    def recording_run(command):  # type: ignore[no-untyped-def]
        decision = original_run(command)
        events.extend(decision.events)
        return decision

    book.run = recording_run  # type: ignore[method-assign]
    book.invoice(1_000, due="2026-01-01")
    book.invoice(2_000, due="2026-02-01")
    paid = book.pay(1_700)
    book.run(
        RefundPayment(account_id=book.account_id, payment_id=paid, refund_id="re", amount_minor=200)
    )
    soft = _created(book, 50)
    book.outcome(soft, OutcomeKind.declined, decline_code="insufficient_funds")
    replayed: AccountState | None
    replayed, _ = evolve(None, AccountOpened(at_ms=0, account_id=book.account_id, currency="USD"))
    for event in events:
        replayed, _ = evolve(replayed, event)
    assert msgspec.msgpack.encode(replayed) == msgspec.msgpack.encode(book.account)


def test_a_read_changes_nothing_and_names_what_it_read() -> None:
    book = Ledgerbook()
    invoice_id = book.invoice(700)
    payment_id = book.pay(200)
    read = book.run(ReadAccount(account_id=book.account_id, payment_id=payment_id,
                                invoice_id=invoice_id))  # fmt: skip
    assert read.outcome.result is Result.exists
    assert (read.outcome.payment_id, read.outcome.invoice_id) == (payment_id, invoice_id)
    missing = decide(None, ReadAccount(account_id="acct_nobody"), book.now_ms, book.rng)
    assert missing.outcome.rejection is Rejection.account_not_found
