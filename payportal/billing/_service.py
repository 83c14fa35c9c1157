"""What the API asks of billing: plans, subscriptions, cancellation, plan changes with
proration, and one-off purchases. Each is one short transaction over billing's rows; what
moves money (a proration, a purchase) then goes through the run's own steps
(``BillingRunner.advance``), so it is issued and charged exactly as a period is.

Expected failures are values (``BillingRejection``, in precedence order), never
exceptions; the HTTP layer maps them to the contract's errors.

Proration (``payportal.engine.billing_schedule.prorate_plan_change``): a change on a day
of the current, already billed period credits the old price's part for the days from
that day to the period's end and charges the new price's part for them. An upgrade's
difference is invoiced at once for those days (with autopay, charged); a downgrade's is
kept on the subscription as credit and taken off its next invoices, which needs no
engine change and never pays money back out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from enum import StrEnum, auto

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.engine.billing_schedule import Interval, period_containing, prorate_plan_change
from payportal.persistence import directory
from payportal.persistence.tables_billing import billing_invoices, subscriptions

from . import _records as records
from ._model import (
    BillingInvoice,
    InvoiceKind,
    InvoiceState,
    Plan,
    Subscription,
    SubscriptionEvent,
    SubscriptionStatus,
    subscription_next,
)
from ._schedule import anchor_of
from .run import BillingReport, BillingRunner

__all__ = [
    "BillingRejection",
    "cancel_subscription",
    "change_plan",
    "create_item",
    "create_plan",
    "create_subscription",
]

_MONTH_DAYS_MAX = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Concurrent changes to one subscription (a billing claim, another change) are rare and
# short; a change re-reads and tries again this many times before giving up.
CHANGE_TRIES_MAX = 5


class BillingRejection(StrEnum):
    plan_not_found = auto()
    payment_method_not_found = auto()
    subscription_not_found = auto()
    autopay_requires_payment_method = auto()
    currency_must_match_account = auto()
    anchor_day_must_exist_in_month = auto()
    plan_interval_must_match = auto()
    subscription_must_not_be_canceled = auto()
    subscription_changed_concurrently = auto()


async def create_plan(
    engine: AsyncEngine, *, plan_id: str, name: str, amount_minor: int, currency: str,
    interval: Interval,
) -> Plan:  # fmt: skip
    assert amount_minor > 0
    # The same id again (an idempotent create): the stored plan stands.
    with contextlib.suppress(sa.exc.IntegrityError):
        await records.insert_plan(
            engine, {"id": plan_id, "name": name, "amount_minor": amount_minor,
                     "currency": currency, "interval": interval.value},
        )  # fmt: skip
    plan = await records.plan(engine, plan_id)
    assert plan is not None
    return plan


async def _usable_method(engine: AsyncEngine, account_id: str, method_id: str) -> bool:
    method = await directory.payment_method(engine, method_id)
    return method is not None and method.account_id == account_id and method.deleted_at is None


async def create_subscription(
    engine: AsyncEngine, *, subscription_id: str, account_id: str, account_currency: str,
    plan_id: str, payment_method_id: str | None, autopay: bool, anchor_day: int | None,
    today: dt.date,
) -> Subscription | BillingRejection:  # fmt: skip
    """A subscription starting ``today``; its first period runs to the day before the
    next anchor (a prorated stub when ``anchor_day`` is not today's day)."""
    plan = await records.plan(engine, plan_id)
    if plan is None:
        return BillingRejection.plan_not_found
    if payment_method_id is not None and not await _usable_method(
        engine, account_id, payment_method_id
    ):
        return BillingRejection.payment_method_not_found
    if autopay and payment_method_id is None:
        return BillingRejection.autopay_requires_payment_method
    if plan.currency != account_currency:
        return BillingRejection.currency_must_match_account
    day = today.day if anchor_day is None else anchor_day
    if plan.interval is Interval.year and day > _MONTH_DAYS_MAX[today.month - 1]:
        return BillingRejection.anchor_day_must_exist_in_month
    try:
        async with engine.begin() as connection:
            await connection.execute(
                sa.insert(subscriptions).values(
                    id=subscription_id, account_id=account_id, plan_id=plan.id,
                    payment_method_id=payment_method_id, autopay=autopay, anchor_day=day,
                    anchor_month=today.month, started_on=today,
                    status=SubscriptionStatus.active, cancel_at_period_end=False,
                    next_period_start=today, credit_minor=0,
                )
            )  # fmt: skip
    except sa.exc.IntegrityError:
        pass  # the same id again (an idempotent create): the stored one stands
    row = await records.subscription(engine, subscription_id)
    assert row is not None
    return records.subscription_view(row)


async def cancel_subscription(
    engine: AsyncEngine, *, subscription_id: str, at_period_end: bool, today: dt.date
) -> Subscription | BillingRejection:
    """At period end: billed through the current period, then ended. At once: ended
    today (or with the last billed period, if today's is not billed yet), with no further
    invoice; what was billed for the current period stays billed."""
    for _ in range(CHANGE_TRIES_MAX):
        row = await records.subscription(engine, subscription_id)
        if row is None:
            return BillingRejection.subscription_not_found
        if row.status is SubscriptionStatus.canceled:
            return records.subscription_view(row)
        billed_through = row.current_period_end
        values: dict[str, object]
        if at_period_end and billed_through is not None and billed_through >= today:
            values = {"cancel_at_period_end": True, "ended_on": billed_through}
        else:
            status = subscription_next(row.status, SubscriptionEvent.canceled)
            assert status is SubscriptionStatus.canceled
            # Service ends today if today is billed, else with the last billed period: a
            # period not billed yet is not billed at all.
            last_billed = row.next_period_start - dt.timedelta(days=1)
            values = {"status": status, "ended_on": min(today, last_billed)}
        async with engine.begin() as connection:
            result = await connection.execute(
                sa.update(subscriptions)
                .where(subscriptions.c.id == row.id, subscriptions.c.status == row.status,
                       subscriptions.c.next_period_start == row.next_period_start)
                .values(**values)
            )  # fmt: skip
        if result.rowcount == 1:
            fresh = await records.subscription(engine, subscription_id)
            assert fresh is not None
            return records.subscription_view(fresh)
    return BillingRejection.subscription_changed_concurrently


async def change_plan(
    engine: AsyncEngine, runner: BillingRunner, *, subscription_id: str, plan_id: str,
    invoice_id: str, today: dt.date, now_ms: int,
) -> tuple[Subscription, BillingInvoice | None] | BillingRejection:  # fmt: skip
    """Move the subscription to ``plan_id`` from ``today``; ``invoice_id`` names the
    upgrade's proration invoice (derived from the request's idempotency key)."""
    plan = await records.plan(engine, plan_id)
    for _ in range(CHANGE_TRIES_MAX):
        row = await records.subscription(engine, subscription_id)
        if row is None:
            return BillingRejection.subscription_not_found
        if plan is None:
            return BillingRejection.plan_not_found
        if row.status is SubscriptionStatus.canceled or (
            row.ended_on is not None and row.ended_on < today
        ):
            return BillingRejection.subscription_must_not_be_canceled
        if plan.currency != row.currency:
            return BillingRejection.currency_must_match_account
        if plan.interval is not row.interval:
            return BillingRejection.plan_interval_must_match
        net_minor = 0
        period = None
        billed = row.current_period_start is not None and row.current_period_end is not None
        if billed and row.current_period_start <= today <= row.current_period_end:  # type: ignore[operator]
            anchor = anchor_of(row.interval, row.anchor_day, row.anchor_month)
            whole = period_containing(anchor, row.interval, today)
            proration = prorate_plan_change(whole, today, row.amount_minor, plan.amount)
            net_minor = proration.net_minor
            period = whole
        claim = None
        if net_minor > 0:
            assert period is not None
            charge = row.autopay and row.payment_method_id is not None
            claim = {
                "invoice_id": invoice_id, "kind": InvoiceKind.proration,
                "account_id": row.account_id, "subscription_id": row.id, "period_start": None,
                "service_start": today, "service_end": period.end,
                "number": "P-" + invoice_id.rpartition("_")[2][:12].upper(),
                "description": f"{row.plan_name} to {plan.name}, {today} to {period.end}"[:200],
                "amount_minor": net_minor, "currency": row.currency, "due_date": today,
                "payment_method_id": row.payment_method_id if charge else None,
                "state": InvoiceState.claimed, "lease_owner": runner.owner,
                "lease_until_ms": now_ms + 60_000, "claimed_at_ms": now_ms,
            }  # fmt: skip
        try:
            async with engine.begin() as connection:
                result = await connection.execute(
                    sa.update(subscriptions)
                    .where(subscriptions.c.id == row.id,
                           subscriptions.c.plan_id == row.plan_id,
                           subscriptions.c.credit_minor == row.credit_minor,
                           subscriptions.c.next_period_start == row.next_period_start)
                    .values(plan_id=plan.id,
                            credit_minor=row.credit_minor + max(0, -net_minor))
                )  # fmt: skip
                if result.rowcount != 1:
                    continue
                if claim is not None:
                    await connection.execute(sa.insert(billing_invoices).values(**claim))
        except sa.exc.IntegrityError:
            break  # this request's invoice exists: it ran before; report what it left
        invoice = None
        if claim is not None:
            claimed = await records.invoice_rows(engine, invoice_ids=[invoice_id])
            left = await runner.advance(claimed[0], BillingReport())
            invoice = records.billing_invoice_view(left)
        fresh = await records.subscription(engine, subscription_id)
        assert fresh is not None
        return records.subscription_view(fresh), invoice
    else:
        return BillingRejection.subscription_changed_concurrently
    fresh = await records.subscription(engine, subscription_id)
    existing = await records.invoice_rows(engine, invoice_ids=[invoice_id])
    assert fresh is not None
    return records.subscription_view(fresh), records.billing_invoice_view(existing[0])


async def create_item(
    engine: AsyncEngine, runner: BillingRunner, *, invoice_id: str, account_id: str,
    currency: str, amount_minor: int, description: str | None, payment_method_id: str | None,
    today: dt.date, now_ms: int,
) -> BillingInvoice | BillingRejection:  # fmt: skip
    """A one-off purchase: invoiced now (no service period, so its revenue is recognized
    at the invoice date) and, with a payment method, charged now."""
    assert amount_minor > 0
    if payment_method_id is not None and not await _usable_method(
        engine, account_id, payment_method_id
    ):
        return BillingRejection.payment_method_not_found
    try:
        async with engine.begin() as connection:
            await connection.execute(
                sa.insert(billing_invoices).values(
                    invoice_id=invoice_id, kind=InvoiceKind.item, account_id=account_id,
                    subscription_id=None, period_start=None, service_start=None,
                    service_end=None, number="I-" + invoice_id.rpartition("_")[2][:12].upper(),
                    description=description, amount_minor=amount_minor, currency=currency,
                    due_date=today, payment_method_id=payment_method_id,
                    state=InvoiceState.claimed, lease_owner=runner.owner,
                    lease_until_ms=now_ms + 60_000, claimed_at_ms=now_ms,
                )
            )  # fmt: skip
    except sa.exc.IntegrityError:
        pass  # the same purchase again: take it on from where it was left
    rows = await records.invoice_rows(engine, invoice_ids=[invoice_id])
    row = rows[0]
    if row.state is not InvoiceState.settled and row.lease_owner == runner.owner:
        row = await runner.advance(row, BillingReport())
    return records.billing_invoice_view(row)
