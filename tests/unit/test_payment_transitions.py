"""The payment and attempt status tables, row by row, and every command in every status.

Method: the expected rows are written out here by hand (never read back from the table, so
the test can fail); each is checked against ``payment_next`` / ``attempt_next``, every pair
missing from them must have no next status, and then the real engine (``execute``) drives a
payment into each status and answers every command there: a legal one moves it to the
status the table names, an illegal one is rejected and leaves the state byte-for-byte
unchanged (msgpack before and after).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import msgspec
import pytest

from payportal.engine import (
    PAYMENT_TRANSITIONS,
    AttemptStatus,
    CancelPayment,
    ConfirmPayment,
    DisputePayment,
    OutcomeKind,
    PaymentEvent,
    PaymentStatus,
    RecordOutcome,
    RefundPayment,
    Rejection,
    ReplacePaymentMethod,
    Result,
    StartRetry,
)
from payportal.engine.messages import Command
from payportal.engine.payment_state import (
    ATTEMPT_TRANSITIONS,
    AttemptEvent,
    attempt_next,
    payment_next,
)

from .engine_builders import MASTERCARD, Ledgerbook

AUTHENTICATION_REQUIRED = "authentication_required"

S = PaymentStatus
E = PaymentEvent
A = AttemptStatus
AE = AttemptEvent

# -- the tables, written out row by row ---------------------------------------------------

PAYMENT_ROWS: list[tuple[PaymentStatus, PaymentEvent, PaymentStatus]] = [
    (S.processing, E.attempt_succeeded, S.succeeded),
    (S.processing, E.attempt_declined_hard, S.requires_payment_method),
    (S.processing, E.attempt_declined_retryable, S.retry_scheduled),
    (S.processing, E.attempt_errored_retryable, S.retry_scheduled),
    (S.processing, E.attempt_failed_final, S.failed),
    (S.processing, E.attempt_outcome_unknown, S.processing),
    (S.processing, E.attempt_requires_action, S.requires_action),
    (S.processing, E.attempt_declined_authentication, S.requires_action),
    (S.requires_action, E.attempt_succeeded, S.succeeded),
    (S.requires_action, E.attempt_declined_hard, S.requires_payment_method),
    (S.requires_action, E.attempt_declined_retryable, S.retry_scheduled),
    (S.requires_action, E.attempt_declined_authentication, S.requires_action),
    (S.requires_action, E.attempt_failed_final, S.failed),
    (S.requires_action, E.payment_confirmed, S.processing),
    (S.requires_action, E.payment_method_replaced, S.processing),
    (S.requires_action, E.canceled, S.canceled),
    (S.retry_scheduled, E.attempt_requires_action, S.requires_action),
    (S.retry_scheduled, E.attempt_declined_authentication, S.requires_action),
    (S.retry_scheduled, E.attempt_succeeded, S.succeeded),
    (S.retry_scheduled, E.attempt_declined_hard, S.requires_payment_method),
    (S.retry_scheduled, E.attempt_declined_retryable, S.retry_scheduled),
    (S.retry_scheduled, E.attempt_failed_final, S.failed),
    (S.retry_scheduled, E.retries_exhausted, S.failed),
    (S.retry_scheduled, E.retry_started, S.processing),
    (S.retry_scheduled, E.retry_deferred, S.retry_scheduled),
    (S.retry_scheduled, E.canceled, S.canceled),
    (S.requires_payment_method, E.payment_method_replaced, S.processing),
    (S.requires_payment_method, E.canceled, S.canceled),
    (S.succeeded, E.refunded_partially, S.partially_refunded),
    (S.succeeded, E.refunded_fully, S.refunded),
    (S.succeeded, E.disputed, S.disputed),
    (S.partially_refunded, E.refunded_partially, S.partially_refunded),
    (S.partially_refunded, E.refunded_fully, S.refunded),
    (S.partially_refunded, E.disputed, S.disputed),
    # An errored attempt's capture may still be reported after technical retries ran out.
    (S.failed, E.attempt_succeeded, S.succeeded),
    # canceled, refunded and disputed: no row, nothing may follow them.
]

ATTEMPT_ROWS: list[tuple[AttemptStatus, AttemptEvent, AttemptStatus]] = [
    (A.processing, AE.succeeded, A.succeeded),
    (A.processing, AE.declined, A.declined),
    (A.processing, AE.errored, A.errored),
    (A.processing, AE.unknown, A.unknown),
    (A.processing, AE.requires_action, A.requires_action),
    (A.unknown, AE.requires_action, A.requires_action),
    (A.errored, AE.requires_action, A.requires_action),
    (A.requires_action, AE.succeeded, A.succeeded),
    (A.requires_action, AE.declined, A.declined),
    (A.unknown, AE.succeeded, A.succeeded),
    (A.unknown, AE.declined, A.declined),
    (A.unknown, AE.errored, A.errored),
    (A.errored, AE.succeeded, A.succeeded),
    (A.errored, AE.declined, A.declined),
    (A.errored, AE.resent, A.processing),
    # succeeded and declined: final.
]

PAYMENT_PAIRS_MISSING = sorted(
    set(itertools.product(S, E)) - {(status, event) for status, event, _ in PAYMENT_ROWS}
)
ATTEMPT_PAIRS_MISSING = sorted(
    set(itertools.product(A, AE)) - {(status, event) for status, event, _ in ATTEMPT_ROWS}
)


def _row_id(row: tuple[object, ...]) -> str:
    return "-".join(str(x) for x in row)


@pytest.mark.parametrize("row", PAYMENT_ROWS, ids=_row_id)
def test_payment_row_names_the_next_status(
    row: tuple[PaymentStatus, PaymentEvent, PaymentStatus],
) -> None:
    status, event, expected = row
    assert payment_next(status, event) is expected


@pytest.mark.parametrize("pair", PAYMENT_PAIRS_MISSING, ids=_row_id)
def test_payment_pair_missing_from_the_table_has_no_next_status(
    pair: tuple[PaymentStatus, PaymentEvent],
) -> None:
    assert payment_next(*pair) is None


def test_payment_table_holds_exactly_the_rows_written_here() -> None:
    table = {(s, e, n) for s, row in PAYMENT_TRANSITIONS.items() for e, n in row.items()}
    assert table == set(PAYMENT_ROWS)
    assert set(PAYMENT_TRANSITIONS) == set(S)  # every status has a row, even an empty one


@pytest.mark.parametrize("row", ATTEMPT_ROWS, ids=_row_id)
def test_attempt_row_names_the_next_status(
    row: tuple[AttemptStatus, AttemptEvent, AttemptStatus],
) -> None:
    status, event, expected = row
    assert attempt_next(status, event) is expected


@pytest.mark.parametrize("pair", ATTEMPT_PAIRS_MISSING, ids=_row_id)
def test_attempt_pair_missing_from_the_table_has_no_next_status(
    pair: tuple[AttemptStatus, AttemptEvent],
) -> None:
    assert attempt_next(*pair) is None


def test_attempt_table_holds_exactly_the_rows_written_here() -> None:
    table = {(s, e, n) for s, row in ATTEMPT_TRANSITIONS.items() for e, n in row.items()}
    assert table == set(ATTEMPT_ROWS)
    assert set(ATTEMPT_TRANSITIONS) == set(A)


def test_no_final_payment_status_has_a_way_out() -> None:
    for status in (S.canceled, S.refunded, S.disputed):
        assert all(payment_next(status, event) is None for event in E), status


def test_a_failed_payment_can_only_record_a_late_capture() -> None:
    ways_out = {event for event in E if payment_next(S.failed, event) is not None}
    assert ways_out == {E.attempt_succeeded}


# -- driving a real payment into each status ----------------------------------------------

AMOUNT_MINOR = 1_000
REFUND_PART_MINOR = 300


def _created(book: Ledgerbook) -> str:
    book.invoice(AMOUNT_MINOR)
    decision = book.create_payment(AMOUNT_MINOR)
    assert decision.outcome.result is Result.ok, decision
    assert decision.outcome.payment_id is not None
    return decision.outcome.payment_id


def _must_be_ok(book: Ledgerbook, command: Command) -> None:
    decision = book.run(command)
    assert decision.outcome.result is Result.ok, decision


def _record(book: Ledgerbook, payment_id: str, outcome: OutcomeKind, code: str | None) -> None:
    decision = book.outcome(payment_id, outcome, decline_code=code)
    assert decision.outcome.result is Result.ok, decision


def _retry_when_due(book: Ledgerbook, payment_id: str, attempt_id: str) -> None:
    payment = book.account.payments[payment_id]
    assert payment.next_retry_at_ms is not None
    book.now_ms = payment.next_retry_at_ms
    start = StartRetry(account_id=book.account_id, payment_id=payment_id, attempt_id=attempt_id)
    _must_be_ok(book, start)


def _to_processing(book: Ledgerbook) -> str:
    return _created(book)


def _to_processing_with_unknown_attempt(book: Ledgerbook) -> str:
    payment_id = _created(book)
    _record(book, payment_id, OutcomeKind.unknown, None)
    return payment_id


def _to_retry_scheduled_after_decline(book: Ledgerbook) -> str:
    payment_id = _created(book)
    _record(book, payment_id, OutcomeKind.declined, "insufficient_funds")
    return payment_id


def _to_retry_scheduled_after_error(book: Ledgerbook) -> str:
    payment_id = _created(book)
    _record(book, payment_id, OutcomeKind.errored, "processing_error")
    return payment_id


def _to_requires_payment_method(book: Ledgerbook) -> str:
    payment_id = _created(book)
    _record(book, payment_id, OutcomeKind.declined, "do_not_honor")
    return payment_id


def _to_requires_action_challenge(book: Ledgerbook) -> str:
    payment_id = _created(book)
    _record(book, payment_id, OutcomeKind.requires_action, None)
    return payment_id


def _to_requires_action_declined(book: Ledgerbook) -> str:
    payment_id = _created(book)
    _record(book, payment_id, OutcomeKind.declined, AUTHENTICATION_REQUIRED)
    return payment_id


def _to_succeeded(book: Ledgerbook) -> str:
    payment_id = _created(book)
    _record(book, payment_id, OutcomeKind.succeeded, None)
    return payment_id


def _to_failed_after_declines(book: Ledgerbook) -> str:
    payment_id = _created(book)
    for n in range(10):
        _record(book, payment_id, OutcomeKind.declined, "insufficient_funds")
        if book.account.payments[payment_id].status is S.failed:
            return payment_id
        _retry_when_due(book, payment_id, f"att_retry_{n}")
    raise AssertionError("soft declines never ended the payment")


def _to_failed_after_errors(book: Ledgerbook) -> str:
    payment_id = _created(book)
    for n in range(10):
        _record(book, payment_id, OutcomeKind.errored, "processing_error")
        if book.account.payments[payment_id].status is S.failed:
            return payment_id
        _retry_when_due(book, payment_id, f"att_resend_{n}")
    raise AssertionError("technical errors never ended the payment")


def _to_canceled(book: Ledgerbook) -> str:
    payment_id = _to_retry_scheduled_after_decline(book)
    _must_be_ok(book, CancelPayment(account_id=book.account_id, payment_id=payment_id))
    return payment_id


def _to_partially_refunded(book: Ledgerbook) -> str:
    payment_id = _to_succeeded(book)
    refund = RefundPayment(account_id=book.account_id, payment_id=payment_id,
                           refund_id="re_drive", amount_minor=REFUND_PART_MINOR)  # fmt: skip
    _must_be_ok(book, refund)
    return payment_id


def _to_refunded(book: Ledgerbook) -> str:
    payment_id = _to_succeeded(book)
    refund = RefundPayment(account_id=book.account_id, payment_id=payment_id,
                           refund_id="re_drive", amount_minor=AMOUNT_MINOR)  # fmt: skip
    _must_be_ok(book, refund)
    return payment_id


def _to_disputed(book: Ledgerbook) -> str:
    payment_id = _to_succeeded(book)
    _must_be_ok(book, DisputePayment(account_id=book.account_id, payment_id=payment_id))
    return payment_id


# Where each driver leaves the payment (several reach one status by different paths).
DRIVERS: dict[str, tuple[Callable[[Ledgerbook], str], PaymentStatus]] = {
    "processing": (_to_processing, S.processing),
    "processing_unknown": (_to_processing_with_unknown_attempt, S.processing),
    "retry_scheduled_declined": (_to_retry_scheduled_after_decline, S.retry_scheduled),
    "retry_scheduled_errored": (_to_retry_scheduled_after_error, S.retry_scheduled),
    "requires_payment_method": (_to_requires_payment_method, S.requires_payment_method),
    "requires_action_challenge": (_to_requires_action_challenge, S.requires_action),
    "requires_action_declined": (_to_requires_action_declined, S.requires_action),
    "succeeded": (_to_succeeded, S.succeeded),
    "failed_declined": (_to_failed_after_declines, S.failed),
    "failed_errored": (_to_failed_after_errors, S.failed),
    "canceled": (_to_canceled, S.canceled),
    "partially_refunded": (_to_partially_refunded, S.partially_refunded),
    "refunded": (_to_refunded, S.refunded),
    "disputed": (_to_disputed, S.disputed),
}


# -- the commands, each built against the payment as it stands -----------------------------


def _outcome(outcome: OutcomeKind, code: str | None) -> Callable[[Ledgerbook, str], Command]:
    def build(book: Ledgerbook, payment_id: str) -> Command:
        attempt_id = book.account.payments[payment_id].current_attempt.attempt_id
        charge_id = "ch_1" if outcome is OutcomeKind.succeeded else None
        return RecordOutcome(account_id=book.account_id, payment_id=payment_id,
                             attempt_id=attempt_id, outcome=outcome, decline_code=code,
                             charge_id=charge_id)  # fmt: skip

    return build


def _start_retry_when_due(book: Ledgerbook, payment_id: str) -> Command:
    # The clock moves to the retry's due time, if one is set: a clock is not state.
    due_ms = book.account.payments[payment_id].next_retry_at_ms
    book.now_ms = max(book.now_ms, due_ms or 0)
    return StartRetry(account_id=book.account_id, payment_id=payment_id, attempt_id="att_next")


def _replace_method(book: Ledgerbook, payment_id: str) -> Command:
    return ReplacePaymentMethod(account_id=book.account_id, payment_id=payment_id,
                                attempt_id="att_next", payment_method=MASTERCARD)  # fmt: skip


def _cancel(book: Ledgerbook, payment_id: str) -> Command:
    return CancelPayment(account_id=book.account_id, payment_id=payment_id)


def _refund_part(book: Ledgerbook, payment_id: str) -> Command:
    return RefundPayment(account_id=book.account_id, payment_id=payment_id,
                         refund_id="re_next", amount_minor=100)  # fmt: skip


def _refund_rest(book: Ledgerbook, payment_id: str) -> Command:
    payment = book.account.payments[payment_id]
    refundable_minor = payment.amount_minor - payment.amount_refunded_minor
    return RefundPayment(account_id=book.account_id, payment_id=payment_id, refund_id="re_next",
                         amount_minor=refundable_minor or payment.amount_minor)  # fmt: skip


def _confirm(book: Ledgerbook, payment_id: str) -> Command:
    return ConfirmPayment(account_id=book.account_id, payment_id=payment_id,
                          attempt_id="att_next")  # fmt: skip


def _dispute(book: Ledgerbook, payment_id: str) -> Command:
    return DisputePayment(account_id=book.account_id, payment_id=payment_id)


COMMANDS: dict[str, Callable[[Ledgerbook, str], Command]] = {
    "succeed": _outcome(OutcomeKind.succeeded, None),
    "decline_hard": _outcome(OutcomeKind.declined, "do_not_honor"),
    "decline_soft": _outcome(OutcomeKind.declined, "insufficient_funds"),
    "error": _outcome(OutcomeKind.errored, "processing_error"),
    "unknown": _outcome(OutcomeKind.unknown, None),
    "requires_action": _outcome(OutcomeKind.requires_action, None),
    "decline_auth": _outcome(OutcomeKind.declined, AUTHENTICATION_REQUIRED),
    "confirm": _confirm,
    "start_retry": _start_retry_when_due,
    "replace_method": _replace_method,
    "cancel": _cancel,
    "refund_part": _refund_part,
    "refund_rest": _refund_rest,
    "dispute": _dispute,
}

# -- every command in every status: the expected answer ------------------------------------
# A PaymentStatus: accepted, and the payment is then in that status. ``EXISTS``: a replay
# that changes nothing. A Rejection: refused, and nothing changes.
EXISTS = Result.exists
NO = Rejection.payment_status_must_allow_transition
OTHER_OUTCOME = Rejection.exists_with_different_outcome  # the attempt itself is already final
Expected = PaymentStatus | Result | Rejection

ANSWERS: dict[str, dict[str, Expected]] = {
    "processing": {
        "succeed": S.succeeded, "decline_hard": S.requires_payment_method,
        "decline_soft": S.retry_scheduled, "error": S.retry_scheduled, "unknown": S.processing,
        "start_retry": NO, "replace_method": NO, "cancel": NO,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": S.requires_action, "decline_auth": S.requires_action, "confirm": NO,
    },
    "processing_unknown": {
        "succeed": S.succeeded, "decline_hard": S.requires_payment_method,
        "decline_soft": S.retry_scheduled, "error": S.retry_scheduled, "unknown": EXISTS,
        "start_retry": NO, "replace_method": NO, "cancel": NO,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": S.requires_action, "decline_auth": S.requires_action, "confirm": NO,
    },
    "retry_scheduled_declined": {
        "succeed": OTHER_OUTCOME, "decline_hard": OTHER_OUTCOME,
        "decline_soft": EXISTS, "error": EXISTS, "unknown": EXISTS,
        "start_retry": S.processing, "replace_method": NO, "cancel": S.canceled,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": EXISTS, "decline_auth": OTHER_OUTCOME, "confirm": NO,
    },
    "retry_scheduled_errored": {
        # The errored attempt is sent again under its key, so its late answer still counts.
        "succeed": S.succeeded, "decline_hard": S.requires_payment_method,
        "decline_soft": S.retry_scheduled, "error": EXISTS, "unknown": EXISTS,
        "start_retry": S.processing, "replace_method": NO,
        "cancel": Rejection.attempt_outcome_must_be_known,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": S.requires_action, "decline_auth": S.requires_action, "confirm": NO,
    },
    "requires_payment_method": {
        "succeed": OTHER_OUTCOME, "decline_hard": EXISTS,
        "decline_soft": OTHER_OUTCOME, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": S.processing, "cancel": S.canceled,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": EXISTS, "decline_auth": OTHER_OUTCOME, "confirm": NO,
    },
    # The processor holds a challenge: only its outcome moves the payment, and nothing
    # starts a second attempt beside it (it could still capture).
    "requires_action_challenge": {
        "succeed": S.succeeded, "decline_hard": S.requires_payment_method,
        "decline_soft": S.retry_scheduled, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": Rejection.attempt_outcome_must_be_known,
        "cancel": Rejection.attempt_outcome_must_be_known,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": EXISTS, "decline_auth": S.requires_action,
        "confirm": Rejection.attempt_outcome_must_be_known,
    },
    # Declined for authentication without the payer: the attempt is over; the payer
    # confirms on session, chooses another method, or the payment is canceled.
    "requires_action_declined": {
        "succeed": OTHER_OUTCOME, "decline_hard": OTHER_OUTCOME,
        "decline_soft": OTHER_OUTCOME, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": S.processing, "cancel": S.canceled,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": EXISTS, "decline_auth": EXISTS, "confirm": S.processing,
    },
    "succeeded": {
        "succeed": EXISTS, "decline_hard": OTHER_OUTCOME,
        "decline_soft": OTHER_OUTCOME, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": NO, "cancel": NO,
        "refund_part": S.partially_refunded, "refund_rest": S.refunded, "dispute": S.disputed,
        "requires_action": EXISTS, "decline_auth": OTHER_OUTCOME, "confirm": NO,
    },
    "failed_declined": {
        "succeed": OTHER_OUTCOME, "decline_hard": OTHER_OUTCOME,
        "decline_soft": EXISTS, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": NO, "cancel": NO,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": EXISTS, "decline_auth": OTHER_OUTCOME, "confirm": NO,
    },
    "failed_errored": {
        # The errored attempt was sent under its key and may have captured: a reported
        # capture is recorded; a late decline changes nothing a failed payment needs.
        "succeed": S.succeeded, "decline_hard": NO,
        "decline_soft": NO, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": NO, "cancel": NO,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": NO, "decline_auth": NO, "confirm": NO,
    },
    "canceled": {
        "succeed": OTHER_OUTCOME, "decline_hard": OTHER_OUTCOME,
        "decline_soft": EXISTS, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": NO, "cancel": EXISTS,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": EXISTS, "decline_auth": OTHER_OUTCOME, "confirm": NO,
    },
    "partially_refunded": {
        "succeed": EXISTS, "decline_hard": OTHER_OUTCOME,
        "decline_soft": OTHER_OUTCOME, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": NO, "cancel": NO,
        "refund_part": S.partially_refunded, "refund_rest": S.refunded, "dispute": S.disputed,
        "requires_action": EXISTS, "decline_auth": OTHER_OUTCOME, "confirm": NO,
    },
    "refunded": {
        "succeed": EXISTS, "decline_hard": OTHER_OUTCOME,
        "decline_soft": OTHER_OUTCOME, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": NO, "cancel": NO,
        "refund_part": NO, "refund_rest": NO, "dispute": NO,
        "requires_action": EXISTS, "decline_auth": OTHER_OUTCOME, "confirm": NO,
    },
    "disputed": {
        "succeed": EXISTS, "decline_hard": OTHER_OUTCOME,
        "decline_soft": OTHER_OUTCOME, "error": EXISTS, "unknown": EXISTS,
        "start_retry": NO, "replace_method": NO, "cancel": NO,
        "refund_part": NO, "refund_rest": NO, "dispute": EXISTS,
        "requires_action": EXISTS, "decline_auth": OTHER_OUTCOME, "confirm": NO,
    },
}  # fmt: skip

ANSWER_ROWS = [
    (where, command, expected)
    for where, row in ANSWERS.items()
    for command, expected in row.items()
]


def test_answers_cover_every_command_in_every_driven_status() -> None:
    assert set(ANSWERS) == set(DRIVERS)
    for where, row in ANSWERS.items():
        assert set(row) == set(COMMANDS), where
    assert {status for _, status in DRIVERS.values()} == set(S)


@pytest.mark.parametrize("where", list(DRIVERS))
def test_engine_drives_a_payment_into_each_status(where: str) -> None:
    drive, status = DRIVERS[where]
    book = Ledgerbook()
    payment_id = drive(book)
    assert book.account.payments[payment_id].status is status


@pytest.mark.parametrize(
    ("where", "command_name", "expected"),
    ANSWER_ROWS,
    ids=[f"{where}-{command}" for where, command, _ in ANSWER_ROWS],
)
def test_command_in_status_is_answered_as_the_table_says(
    where: str, command_name: str, expected: Expected
) -> None:
    drive, status_before = DRIVERS[where]
    book = Ledgerbook()
    payment_id = drive(book)
    command = COMMANDS[command_name](book, payment_id)
    encoded_before = msgspec.msgpack.encode(book.state)

    decision = book.run(command)

    status_after = book.account.payments[payment_id].status
    if isinstance(expected, PaymentStatus):
        assert decision.outcome.result is Result.ok, decision
        assert decision.events
        assert status_after is expected
        legal = {(s, n) for s, _, n in PAYMENT_ROWS}
        assert (status_before, status_after) in legal
        return
    # Refused or replayed: nothing at all changes.
    assert not decision.events
    assert msgspec.msgpack.encode(book.state) == encoded_before
    assert status_after is status_before
    if expected is EXISTS:
        assert decision.outcome.result is Result.exists, decision
        assert decision.outcome.rejection is None
    else:
        assert decision.outcome.result is Result.rejected, decision
        assert decision.outcome.rejection is expected, decision
    assert decision.outcome.payment_id == payment_id
