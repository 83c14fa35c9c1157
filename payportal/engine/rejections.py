"""Rejections: every expected failure of a command, as one vocabulary.

The model (TigerBeetle's result codes): a command is checked against these rules in
the order they are declared here, and the first rule it breaks is its answer. So the
order *is* the precedence: first the command's own fields, then identity and
idempotency (the same id with different fields), then references to things that must
exist, then the state the account is in. Bugs are not rejections; they are assertions.
"""

from __future__ import annotations

from enum import StrEnum, auto

__all__ = ["Rejection"]


class Rejection(StrEnum):
    # -- the command's own fields -------------------------------------------------------
    amount_must_be_positive = auto()
    currency_must_be_valid = auto()
    idempotency_key_must_be_valid = auto()
    service_period_must_be_ordered = auto()
    allocation_amount_must_be_positive = auto()
    allocation_invoice_must_be_unique = auto()
    allocations_must_not_exceed_amount = auto()
    fee_must_be_within_amount = auto()
    description_must_be_valid = auto()
    # -- identity and idempotency: the same id seen before with other fields ------------
    account_not_found = auto()
    exists_with_different_currency = auto()
    exists_with_different_amount = auto()
    exists_with_different_due_date = auto()
    exists_with_different_number = auto()
    exists_with_different_service_period = auto()
    exists_with_different_payment_method = auto()
    exists_with_different_allocations = auto()
    exists_with_different_initiator = auto()
    exists_with_different_schedule = auto()
    exists_with_different_request = auto()
    exists_with_different_description = auto()
    exists_with_different_idempotency_key = auto()
    exists_with_different_payment = auto()
    exists_with_different_outcome = auto()
    exists_with_different_payout = auto()
    exists_with_different_fee = auto()
    # -- references ---------------------------------------------------------------------
    currency_must_match_account = auto()
    invoice_not_found = auto()
    payment_method_not_found = auto()
    payment_not_found = auto()
    attempt_not_found = auto()
    charge_must_match_payment = auto()
    # -- the state the account is in ----------------------------------------------------
    invoice_must_be_open = auto()
    allocation_must_not_exceed_invoice_remaining = auto()
    amount_must_match_payment = auto()
    attempt_must_be_current = auto()
    attempt_outcome_must_be_known = auto()
    payment_status_must_allow_transition = auto()
    retry_must_be_due = auto()
    refund_must_not_exceed_refundable = auto()
    recognition_date_must_be_past = auto()

    @property
    def param(self) -> str | None:
        """The request field a client should fix, for the HTTP error's ``param``."""
        return _PARAMS.get(self)


_PARAMS: dict[Rejection, str] = {
    Rejection.amount_must_be_positive: "amount",
    Rejection.currency_must_be_valid: "currency",
    Rejection.idempotency_key_must_be_valid: "idempotency_key",
    Rejection.service_period_must_be_ordered: "service_period",
    Rejection.allocation_amount_must_be_positive: "allocations",
    Rejection.allocation_invoice_must_be_unique: "allocations",
    Rejection.allocations_must_not_exceed_amount: "allocations",
    Rejection.exists_with_different_currency: "currency",
    Rejection.exists_with_different_amount: "amount",
    Rejection.exists_with_different_due_date: "due_date",
    Rejection.exists_with_different_number: "number",
    Rejection.exists_with_different_service_period: "service_period",
    Rejection.description_must_be_valid: "description",
    Rejection.exists_with_different_description: "description",
    Rejection.exists_with_different_payment_method: "payment_method",
    Rejection.exists_with_different_allocations: "allocations",
    Rejection.exists_with_different_initiator: "initiator",
    Rejection.exists_with_different_schedule: "schedule",
    Rejection.currency_must_match_account: "currency",
    Rejection.invoice_not_found: "invoice",
    Rejection.payment_method_not_found: "payment_method",
    Rejection.invoice_must_be_open: "invoice",
    Rejection.allocation_must_not_exceed_invoice_remaining: "allocations",
    Rejection.amount_must_match_payment: "amount",
    Rejection.refund_must_not_exceed_refundable: "amount",
    Rejection.fee_must_be_within_amount: "fee",
    Rejection.exists_with_different_payout: "payout",
    Rejection.exists_with_different_fee: "fee",
    Rejection.charge_must_match_payment: "charge",
    Rejection.recognition_date_must_be_past: "through",
}
