"""Payment and attempt statuses, and every legal transition between them.

Everything about how a payment's status may change lives in the two tables below; no
other module assigns a status. A (status, event) pair missing from a table is an
illegal transition: the engine answers it with a rejection, never a silent no-op. The
terminal statuses map to the events that may still follow them (refunds and disputes
after success) and nothing else, so a late or duplicated outcome can never move a
payment backwards.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "ATTEMPT_TRANSITIONS",
    "PAYMENT_TERMINAL",
    "PAYMENT_TRANSITIONS",
    "AttemptEvent",
    "AttemptStatus",
    "PaymentEvent",
    "PaymentStatus",
    "attempt_next",
    "payment_next",
]


class PaymentStatus(StrEnum):
    processing = "processing"
    # The payer must authenticate (3-D Secure) before anything more happens.
    requires_action = "requires_action"
    retry_scheduled = "retry_scheduled"
    requires_payment_method = "requires_payment_method"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    partially_refunded = "partially_refunded"
    refunded = "refunded"
    disputed = "disputed"


class PaymentEvent(StrEnum):
    """What can happen to a payment; the names of the engine's payment events."""

    attempt_succeeded = "attempt_succeeded"
    attempt_declined_hard = "attempt_declined_hard"
    attempt_declined_retryable = "attempt_declined_retryable"
    attempt_errored_retryable = "attempt_errored_retryable"
    attempt_failed_final = "attempt_failed_final"
    attempt_outcome_unknown = "attempt_outcome_unknown"
    # The processor holds a challenge for the payer (the attempt stays open).
    attempt_requires_action = "attempt_requires_action"
    # Declined because the issuer wants the payer present (the attempt is over).
    attempt_declined_authentication = "attempt_declined_authentication"
    # The payer, present now, asks for the payment to be tried again with the same method.
    payment_confirmed = "payment_confirmed"
    retries_exhausted = "retries_exhausted"
    retry_started = "retry_started"
    retry_deferred = "retry_deferred"
    payment_method_replaced = "payment_method_replaced"
    canceled = "canceled"
    refunded_partially = "refunded_partially"
    refunded_fully = "refunded_fully"
    disputed = "disputed"


S = PaymentStatus
E = PaymentEvent

PAYMENT_TRANSITIONS: Final[dict[PaymentStatus, dict[PaymentEvent, PaymentStatus]]] = {
    S.processing: {
        E.attempt_succeeded: S.succeeded,
        E.attempt_declined_hard: S.requires_payment_method,
        E.attempt_declined_retryable: S.retry_scheduled,
        E.attempt_errored_retryable: S.retry_scheduled,
        E.attempt_failed_final: S.failed,
        # The attempt is unknown; the payment keeps processing until an inquiry answers.
        E.attempt_outcome_unknown: S.processing,
        E.attempt_requires_action: S.requires_action,
        E.attempt_declined_authentication: S.requires_action,
    },
    S.requires_action: {
        # The challenge's own outcome: authenticated and captured, or authenticated and
        # then declined (retried as any decline), or failed (the payer is asked for a
        # method, as after a hard decline).
        E.attempt_succeeded: S.succeeded,
        E.attempt_declined_hard: S.requires_payment_method,
        E.attempt_declined_retryable: S.retry_scheduled,
        E.attempt_declined_authentication: S.requires_action,
        E.attempt_failed_final: S.failed,
        # Only once the current attempt is over (the engine checks): never beside a
        # challenge that could still capture.
        E.payment_confirmed: S.processing,
        E.payment_method_replaced: S.processing,
        E.canceled: S.canceled,
    },
    S.retry_scheduled: {
        # A technical error is retried with the same attempt, so its late success counts.
        E.attempt_succeeded: S.succeeded,
        E.attempt_declined_hard: S.requires_payment_method,
        E.attempt_declined_retryable: S.retry_scheduled,
        E.attempt_failed_final: S.failed,
        # A late answer for an errored attempt sent again under its key.
        E.attempt_requires_action: S.requires_action,
        E.attempt_declined_authentication: S.requires_action,
        E.retries_exhausted: S.failed,
        E.retry_started: S.processing,
        E.retry_deferred: S.retry_scheduled,
        E.canceled: S.canceled,
    },
    S.requires_payment_method: {
        E.payment_method_replaced: S.processing,
        E.canceled: S.canceled,
    },
    S.succeeded: {
        E.refunded_partially: S.partially_refunded,
        E.refunded_fully: S.refunded,
        E.disputed: S.disputed,
    },
    S.partially_refunded: {
        E.refunded_partially: S.partially_refunded,
        E.refunded_fully: S.refunded,
        E.disputed: S.disputed,
    },
    # Technical retries ran out on an errored attempt, yet it was sent under its processor
    # idempotency key and may have captured: when that capture is reported, the money
    # was taken, and it is recorded. (A declined attempt never succeeds: see below.)
    S.failed: {E.attempt_succeeded: S.succeeded},
    S.canceled: {},
    S.refunded: {},
    S.disputed: {},
}

# Statuses at which processing is over and the payer or merchant has an answer; a
# payment's processing time is measured from creation to the first of these.
PAYMENT_TERMINAL: Final[frozenset[PaymentStatus]] = frozenset(
    {S.succeeded, S.failed, S.canceled, S.requires_payment_method, S.requires_action,
     S.partially_refunded, S.refunded, S.disputed}
)  # fmt: skip


class AttemptStatus(StrEnum):
    processing = "processing"
    succeeded = "succeeded"
    declined = "declined"
    # A technical error: the same attempt (same processor idempotency key) is sent again.
    errored = "errored"
    # No answer (timeout, dropped connection): resolved by status inquiry, never recharged.
    unknown = "unknown"
    # The processor waits for the payer's authentication; its outcome follows (a callback,
    # or an inquiry), never a new charge.
    requires_action = "requires_action"


class AttemptEvent(StrEnum):
    succeeded = "succeeded"
    declined = "declined"
    errored = "errored"
    unknown = "unknown"
    resent = "resent"
    requires_action = "requires_action"


A = AttemptStatus
AE = AttemptEvent

ATTEMPT_TRANSITIONS: Final[dict[AttemptStatus, dict[AttemptEvent, AttemptStatus]]] = {
    A.processing: {AE.succeeded: A.succeeded, AE.declined: A.declined,
                   AE.errored: A.errored, AE.unknown: A.unknown,
                   AE.requires_action: A.requires_action},
    A.unknown: {AE.succeeded: A.succeeded, AE.declined: A.declined, AE.errored: A.errored,
                AE.requires_action: A.requires_action},
    A.errored: {AE.succeeded: A.succeeded, AE.declined: A.declined, AE.resent: A.processing,
                AE.requires_action: A.requires_action},
    A.requires_action: {AE.succeeded: A.succeeded, AE.declined: A.declined},
    A.succeeded: {},
    A.declined: {},
}  # fmt: skip


def payment_next(status: PaymentStatus, event: PaymentEvent) -> PaymentStatus | None:
    """The status after ``event``, or None when the table has no such transition."""
    return PAYMENT_TRANSITIONS[status].get(event)


def attempt_next(status: AttemptStatus, event: AttemptEvent) -> AttemptStatus | None:
    return ATTEMPT_TRANSITIONS[status].get(event)
