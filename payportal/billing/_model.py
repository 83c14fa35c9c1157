"""Billing's vocabulary: plans, subscriptions and the invoices billing issues, as msgspec
Structs that the API answers with directly, and the subscription status machine.

Everything about how a subscription's status may change lives in ``TRANSITIONS``: a
(status, event) pair missing from it is illegal and answered with a rejection, never a
silent no-op. A canceled subscription keeps its status whatever its last invoices'
payments do later.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Final

import msgspec

from payportal.engine.billing_schedule import Interval

__all__ = [
    "TRANSITIONS",
    "BillingInvoice",
    "InvoiceKind",
    "InvoiceOutcome",
    "InvoiceState",
    "Period",
    "Plan",
    "Subscription",
    "SubscriptionEvent",
    "SubscriptionStatus",
    "subscription_next",
]


class SubscriptionStatus(StrEnum):
    active = "active"
    past_due = "past_due"
    canceled = "canceled"


class SubscriptionEvent(StrEnum):
    # A period's payment ended without the money: failed, a hard decline, retries spent.
    payment_failed = "payment_failed"
    # A period's invoice was paid (by the autopay charge, by the payer, by credit).
    payment_succeeded = "payment_succeeded"
    canceled = "canceled"


S = SubscriptionStatus
E = SubscriptionEvent

TRANSITIONS: Final[dict[SubscriptionStatus, dict[SubscriptionEvent, SubscriptionStatus]]] = {
    S.active: {E.payment_failed: S.past_due, E.payment_succeeded: S.active, E.canceled: S.canceled},
    S.past_due: {E.payment_failed: S.past_due, E.payment_succeeded: S.active,
                 E.canceled: S.canceled},
    S.canceled: {E.payment_failed: S.canceled, E.payment_succeeded: S.canceled},
}  # fmt: skip


def subscription_next(
    status: SubscriptionStatus, event: SubscriptionEvent
) -> SubscriptionStatus | None:
    """The status after ``event``, or None when the transition is illegal."""
    return TRANSITIONS[status].get(event)


class InvoiceKind(StrEnum):
    period = "period"  # one subscription period, claimed by the billing run
    proration = "proration"  # an upgrade's prorated difference for the rest of a period
    item = "item"  # a one-off purchase


class InvoiceState(StrEnum):
    """Where a billing invoice is on its way; each step is a compare-and-set on this."""

    claimed = "claimed"
    invoiced = "invoiced"
    charging = "charging"
    settled = "settled"


class InvoiceOutcome(StrEnum):
    paid = "paid"
    # The autopay charge ended without the money (the subscription is past due).
    unpaid = "unpaid"
    # Issued without autopay: the payer pays it like any invoice.
    invoiced = "invoiced"
    # Credit covered the whole amount: nothing to invoice or charge.
    nothing_due = "nothing_due"
    # The engine refused the invoice (the account is gone, a currency changed).
    rejected = "rejected"


class Period(msgspec.Struct, frozen=True, kw_only=True):
    start: dt.date
    end: dt.date  # inclusive


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "plan"
    name: str
    amount: int
    currency: str
    interval: Interval


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "subscription"
    account: str
    plan: Plan
    payment_method: str | None
    autopay: bool
    status: SubscriptionStatus
    anchor_day: int
    # Yearly plans only: the month the anchor day falls in.
    anchor_month: int
    started_on: dt.date
    cancel_at_period_end: bool
    current_period: Period | None
    # The first day of the next period not yet billed; None once the subscription ends.
    next_period_start: dt.date | None
    ended_on: dt.date | None
    # A downgrade's credit, taken off the next invoices.
    credit: int


class BillingInvoice(msgspec.Struct, frozen=True, kw_only=True):
    """An invoice billing issued or will issue, with where its charge stands."""

    id: str
    object: str = "billing_invoice"
    kind: InvoiceKind
    account: str
    subscription: str | None
    service_period: Period | None
    number: str
    description: str | None
    amount: int
    currency: str
    due_date: dt.date
    state: InvoiceState
    outcome: InvoiceOutcome | None
    payment: str | None
