"""3-D Secure in the engine: every path through ``requires_action``, and replay.

Each test drives one account command by command (``Ledgerbook`` checks the invariants
after every step) and then rebuilds the account from the events alone, as a shard does
from its journal after a restart, to show the new state survives it.
"""

from __future__ import annotations

import msgspec

from payportal.engine import (
    AccountState,
    AttemptStatus,
    CancelPayment,
    ConfirmPayment,
    DeclineClass,
    Event,
    Initiator,
    OutcomeKind,
    PaymentStatus,
    Rejection,
    Result,
    StartRetry,
    classify,
    evolve,
)
from payportal.engine.account import Decision
from payportal.engine.messages import Command

from .engine_builders import Ledgerbook

AMOUNT_MINOR = 4_200


class _Recorder(Ledgerbook):
    """A ``Ledgerbook`` that keeps every event, to replay them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        super().__init__()

    def run(self, command: Command) -> Decision:
        decision = super().run(command)
        self.events.extend(decision.events)
        return decision


def _replayed(book: _Recorder) -> AccountState:
    state: AccountState | None = None
    for event in book.events:
        state, _ = evolve(state, event)
    assert state is not None
    return state


def _payment(book: Ledgerbook, **kw: object) -> str:
    book.invoice(AMOUNT_MINOR)
    decision = book.create_payment(AMOUNT_MINOR, **kw)
    assert decision.outcome.result is Result.ok, decision
    assert decision.outcome.payment_id is not None
    return decision.outcome.payment_id


def test_authentication_required_is_its_own_class_never_soft() -> None:
    assert classify("authentication_required") is DeclineClass.authentication
    assert classify("1A") is DeclineClass.authentication
    # A network stop signal still wins.
    assert classify("authentication_required", visa_category=1) is DeclineClass.hard
    assert classify("payment_intent_authentication_failure") is DeclineClass.hard


def test_challenge_then_authenticated_and_captured() -> None:
    book = _Recorder()
    payment_id = _payment(book)
    decision = book.outcome(payment_id, OutcomeKind.requires_action, charge_id="ch_3ds")
    assert decision.outcome.result is Result.ok
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.requires_action
    assert payment.current_attempt.status is AttemptStatus.requires_action
    assert payment.current_attempt.charge_id == "ch_3ds"
    assert not payment.current_attempt.off_session
    # The challenge's echo, and a callback repeating it, change nothing.
    again = book.outcome(payment_id, OutcomeKind.requires_action, charge_id="ch_3ds")
    assert again.outcome.result is Result.exists

    done = book.outcome(payment_id, OutcomeKind.succeeded, charge_id="ch_3ds")
    assert done.outcome.result is Result.ok
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.succeeded
    assert payment.amount_applied_minor == AMOUNT_MINOR
    assert len(payment.attempts) == 1
    # A late "requires action" after the capture is stale, and nothing starts anew.
    late = book.outcome(payment_id, OutcomeKind.requires_action)
    assert late.outcome.result is Result.exists
    retry = book.run(StartRetry(account_id=book.account_id, payment_id=payment_id,
                                attempt_id="att_again"))  # fmt: skip
    assert retry.outcome.rejection is Rejection.payment_status_must_allow_transition
    assert _replayed(book) == book.account


def test_challenge_failed_asks_for_a_payment_method() -> None:
    book = _Recorder()
    payment_id = _payment(book)
    book.outcome(payment_id, OutcomeKind.requires_action)
    decision = book.outcome(payment_id, OutcomeKind.declined,
                            decline_code="payment_intent_authentication_failure")  # fmt: skip
    assert decision.outcome.result is Result.ok
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.requires_payment_method
    assert payment.current_attempt.decline_class is DeclineClass.hard
    assert payment.next_retry_at_ms is None
    assert _replayed(book) == book.account


def test_authenticated_then_declined_for_funds_is_retried_as_any_soft_decline() -> None:
    book = _Recorder()
    payment_id = _payment(book)
    book.outcome(payment_id, OutcomeKind.requires_action)
    book.outcome(payment_id, OutcomeKind.declined, decline_code="insufficient_funds",
                 visa_category=2)  # fmt: skip
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.retry_scheduled
    assert payment.next_retry_at_ms is not None
    book.now_ms = payment.next_retry_at_ms
    started = book.run(StartRetry(account_id=book.account_id, payment_id=payment_id,
                                  attempt_id="att_retry"))  # fmt: skip
    assert started.outcome.result is Result.ok
    retry = book.account.payments[payment_id].current_attempt
    # The retry runs without the payer: if it needs authentication, they are asked.
    assert retry.off_session
    book.outcome(payment_id, OutcomeKind.requires_action)
    assert book.account.payments[payment_id].status is PaymentStatus.requires_action
    assert _replayed(book) == book.account


def test_abandoned_challenge_expires_as_a_failed_authentication_and_may_be_canceled() -> None:
    book = _Recorder()
    payment_id = _payment(book)
    book.outcome(payment_id, OutcomeKind.requires_action)
    cancel = CancelPayment(account_id=book.account_id, payment_id=payment_id)
    # While the challenge is open it may still capture: no cancel, no second attempt.
    assert book.run(cancel).outcome.rejection is Rejection.attempt_outcome_must_be_known
    confirm = ConfirmPayment(account_id=book.account_id, payment_id=payment_id,
                             attempt_id="att_confirm")  # fmt: skip
    assert book.run(confirm).outcome.rejection is Rejection.attempt_outcome_must_be_known
    # The processor lets the challenge expire: its decline ends the attempt.
    book.outcome(payment_id, OutcomeKind.declined,
                 decline_code="payment_intent_authentication_failure")  # fmt: skip
    assert book.run(cancel).outcome.result is Result.ok
    assert book.account.payments[payment_id].status is PaymentStatus.canceled
    assert _replayed(book) == book.account


def test_off_session_authentication_decline_waits_for_the_payer_then_confirms() -> None:
    book = _Recorder()
    payment_id = _payment(book, initiator=Initiator.merchant)
    assert book.account.payments[payment_id].current_attempt.off_session
    book.outcome(payment_id, OutcomeKind.declined, decline_code="authentication_required")
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.requires_action
    assert payment.current_attempt.decline_class is DeclineClass.authentication
    # Never retried blindly: no retry is scheduled, and the timer cannot start one.
    assert payment.next_retry_at_ms is None
    book.now_ms += 7 * 24 * 3600 * 1000
    retry = book.run(StartRetry(account_id=book.account_id, payment_id=payment_id,
                                attempt_id="att_blind"))  # fmt: skip
    assert retry.outcome.rejection is Rejection.payment_status_must_allow_transition

    confirm = ConfirmPayment(account_id=book.account_id, payment_id=payment_id,
                             attempt_id="att_confirm")  # fmt: skip
    assert book.run(confirm).outcome.result is Result.ok
    assert book.run(confirm).outcome.result is Result.exists  # sent twice: one attempt
    payment = book.account.payments[payment_id]
    assert payment.status is PaymentStatus.processing
    assert [a.attempt_id for a in payment.attempts][-1] == "att_confirm"
    assert not payment.current_attempt.off_session
    book.outcome(payment_id, OutcomeKind.requires_action)
    book.outcome(payment_id, OutcomeKind.succeeded, charge_id="ch_ok")
    assert book.account.payments[payment_id].status is PaymentStatus.succeeded
    assert _replayed(book) == book.account


def test_state_after_requires_action_survives_a_checkpoint_round_trip() -> None:
    book = Ledgerbook()
    payment_id = _payment(book)
    book.outcome(payment_id, OutcomeKind.requires_action, charge_id="ch_3ds")
    raw = msgspec.msgpack.encode(book.account)
    restored = msgspec.msgpack.decode(raw, type=AccountState)
    assert restored == book.account
    assert restored.payments[payment_id].status is PaymentStatus.requires_action


def test_off_session_authentication_asks_the_payer_by_email_on_session_does_not() -> None:
    from payportal.mail.payments import decode_notice
    from payportal.persistence._rows import Row, project_outbox

    for initiator, emailed in ((Initiator.merchant, True), (Initiator.customer, False)):
        book = _Recorder()
        payment_id = _payment(book, initiator=initiator)
        decision = book.outcome(payment_id, OutcomeKind.declined,
                                decline_code="authentication_required")  # fmt: skip
        outbox: list[Row] = []
        for event in decision.events:
            project_outbox(outbox, book.account, book.account.version, event)  # type: ignore[arg-type]
        assert bool(outbox) is emailed, initiator
        if emailed:
            kind, _, payload, _ = outbox[0]
            assert kind == "payment_declined"
            notice = decode_notice(payload)
            assert notice.status == "requires_action"
            assert notice.decline_class == "authentication"
