"""Billing's rows: reads and the small transactions that move them (tables_billing).

The model: every change that must happen once is a compare-and-set inside one short
transaction, so two schedulers (or a scheduler and an API request) never both win it:
a claim inserts the period's row under its UNIQUE (subscription_id, period_start) and
moves ``next_period_start`` on in the same transaction; a step of a billing invoice
updates ``state`` only from the state the caller saw and only under its own lease.
Reads take no write lock (``READ``) on SQLite.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payportal.engine.billing_schedule import Interval
from payportal.persistence._engine import READ
from payportal.persistence.tables_billing import billing_invoices, plans, subscriptions

from ._model import (
    BillingInvoice,
    InvoiceKind,
    InvoiceOutcome,
    InvoiceState,
    Period,
    Plan,
    Subscription,
    SubscriptionStatus,
)

__all__ = [
    "InvoiceRow",
    "SubscriptionRow",
    "billing_invoice_view",
    "invoice_row",
    "invoice_rows",
    "list_plans",
    "list_subscriptions",
    "plan",
    "set_autopay",
    "subscription",
    "subscription_view",
]

BILLABLE: tuple[str, ...] = (SubscriptionStatus.active, SubscriptionStatus.past_due)


class SubscriptionRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    account_id: str
    plan_id: str
    payment_method_id: str | None
    autopay: bool
    anchor_day: int
    anchor_month: int
    started_on: dt.date
    status: SubscriptionStatus
    cancel_at_period_end: bool
    ended_on: dt.date | None
    current_period_start: dt.date | None
    current_period_end: dt.date | None
    next_period_start: dt.date
    credit_minor: int
    # The plan, joined in.
    plan_name: str
    amount_minor: int
    currency: str
    interval: Interval


class InvoiceRow(msgspec.Struct, frozen=True, kw_only=True):
    invoice_id: str
    kind: InvoiceKind
    account_id: str
    subscription_id: str | None
    period_start: dt.date | None
    service_start: dt.date | None
    service_end: dt.date | None
    number: str
    description: str | None
    amount_minor: int
    currency: str
    due_date: dt.date
    payment_method_id: str | None
    charge_minor: int | None
    payment_id: str | None
    state: InvoiceState
    outcome: InvoiceOutcome | None
    lease_owner: str | None
    lease_until_ms: int
    claimed_at_ms: int


def _reader(engine: AsyncEngine) -> AsyncEngine:
    return engine.execution_options(**READ)


def plan_view(row: Any) -> Plan:
    return Plan(id=row.id, name=row.name, amount=row.amount_minor, currency=row.currency,
                interval=Interval(row.interval))  # fmt: skip


_SUBSCRIPTION_COLUMNS = (
    *subscriptions.c,
    plans.c.name.label("plan_name"),
    plans.c.amount_minor,
    plans.c.currency,
    plans.c.interval,
)


def _subscriptions_query() -> sa.Select[Any]:
    return sa.select(*_SUBSCRIPTION_COLUMNS).join_from(
        subscriptions, plans, plans.c.id == subscriptions.c.plan_id
    )


def subscription_row(row: Any) -> SubscriptionRow:
    values = {name: row._mapping[name] for name in SubscriptionRow.__struct_fields__}
    values["status"] = SubscriptionStatus(values["status"])
    values["interval"] = Interval(values["interval"])
    values["autopay"] = bool(values["autopay"])
    values["cancel_at_period_end"] = bool(values["cancel_at_period_end"])
    return SubscriptionRow(**values)


def invoice_row(row: Any) -> InvoiceRow:
    values = {name: row._mapping[name] for name in InvoiceRow.__struct_fields__}
    values["kind"] = InvoiceKind(values["kind"])
    values["state"] = InvoiceState(values["state"])
    if values["outcome"] is not None:
        values["outcome"] = InvoiceOutcome(values["outcome"])
    return InvoiceRow(**values)


def subscription_view(row: SubscriptionRow) -> Subscription:
    current = None
    if row.current_period_start is not None and row.current_period_end is not None:
        current = Period(start=row.current_period_start, end=row.current_period_end)
    ended = row.status is SubscriptionStatus.canceled or (
        row.ended_on is not None and row.next_period_start > row.ended_on
    )
    return Subscription(
        id=row.id, account=row.account_id,
        plan=Plan(id=row.plan_id, name=row.plan_name, amount=row.amount_minor,
                  currency=row.currency, interval=row.interval),
        payment_method=row.payment_method_id, autopay=row.autopay, status=row.status,
        anchor_day=row.anchor_day, anchor_month=row.anchor_month, started_on=row.started_on,
        cancel_at_period_end=row.cancel_at_period_end, current_period=current,
        next_period_start=None if ended else row.next_period_start, ended_on=row.ended_on,
        credit=row.credit_minor,
    )  # fmt: skip


def billing_invoice_view(row: InvoiceRow) -> BillingInvoice:
    period = None
    if row.service_start is not None and row.service_end is not None:
        period = Period(start=row.service_start, end=row.service_end)
    return BillingInvoice(
        id=row.invoice_id, kind=row.kind, account=row.account_id,
        subscription=row.subscription_id, service_period=period, number=row.number,
        description=row.description, amount=row.amount_minor, currency=row.currency,
        due_date=row.due_date, state=row.state, outcome=row.outcome, payment=row.payment_id,
    )  # fmt: skip


# -- plans ------------------------------------------------------------------------------------


async def insert_plan(engine: AsyncEngine, values: dict[str, Any]) -> None:
    async with engine.begin() as connection:
        await connection.execute(sa.insert(plans).values(**values))


async def plan(engine: AsyncEngine, plan_id: str) -> Plan | None:
    async with _reader(engine).connect() as connection:
        row = (await connection.execute(sa.select(plans).where(plans.c.id == plan_id))).first()
    return None if row is None else plan_view(row)


async def list_plans(
    engine: AsyncEngine, *, limit: int, starting_after: str | None
) -> tuple[list[Plan], bool]:
    query = sa.select(plans).order_by(plans.c.id).limit(limit + 1)
    if starting_after is not None:
        query = query.where(plans.c.id > starting_after)
    async with _reader(engine).connect() as connection:
        rows = (await connection.execute(query)).all()
    return [plan_view(r) for r in rows[:limit]], len(rows) > limit


# -- subscriptions ----------------------------------------------------------------------------


async def subscription(
    engine: AsyncEngine | AsyncConnection, subscription_id: str
) -> SubscriptionRow | None:
    query = _subscriptions_query().where(subscriptions.c.id == subscription_id)
    if isinstance(engine, AsyncConnection):
        row = (await engine.execute(query)).first()
    else:
        async with _reader(engine).connect() as connection:
            row = (await connection.execute(query)).first()
    return None if row is None else subscription_row(row)


async def list_subscriptions(engine: AsyncEngine, *, account_id: str) -> list[Subscription]:
    """The account's subscriptions, canceled ones included, oldest first."""
    query = (
        _subscriptions_query()
        .where(subscriptions.c.account_id == account_id)
        .order_by(subscriptions.c.created_at, subscriptions.c.id)
    )
    async with _reader(engine).connect() as connection:
        rows = (await connection.execute(query)).all()
    return [subscription_view(subscription_row(r)) for r in rows]


async def set_autopay(engine: AsyncEngine, *, account_id: str, enabled: bool) -> int:
    """Turn autopay on or off for the account's subscriptions that are not canceled;
    returns how many there are. Periods already claimed keep what they were claimed with."""
    async with engine.begin() as connection:
        result = await connection.execute(
            sa.update(subscriptions)
            .where(subscriptions.c.account_id == account_id,
                   subscriptions.c.status.in_(BILLABLE))
            .values(autopay=enabled)
        )  # fmt: skip
    return int(result.rowcount)


async def due_subscriptions(
    engine: AsyncEngine, today: dt.date, *, limit: int, after_id: str | None = None
) -> list[SubscriptionRow]:
    query = (
        _subscriptions_query()
        .where(subscriptions.c.status.in_(BILLABLE), subscriptions.c.next_period_start <= today)
        .order_by(subscriptions.c.id)
        .limit(limit)
    )
    if after_id is not None:
        query = query.where(subscriptions.c.id > after_id)
    async with _reader(engine).connect() as connection:
        return [subscription_row(r) for r in (await connection.execute(query)).all()]


# -- billing invoices -------------------------------------------------------------------------


async def invoice_rows(
    engine: AsyncEngine, *, account_id: str | None = None, subscription_id: str | None = None,
    invoice_ids: Sequence[str] | None = None,
) -> list[InvoiceRow]:  # fmt: skip
    query = sa.select(billing_invoices).order_by(
        billing_invoices.c.claimed_at_ms, billing_invoices.c.invoice_id
    )
    if account_id is not None:
        query = query.where(billing_invoices.c.account_id == account_id)
    if subscription_id is not None:
        query = query.where(billing_invoices.c.subscription_id == subscription_id)
    if invoice_ids is not None:
        query = query.where(billing_invoices.c.invoice_id.in_(list(invoice_ids)))
    async with _reader(engine).connect() as connection:
        return [invoice_row(r) for r in (await connection.execute(query)).all()]


async def workable_invoices(
    engine: AsyncEngine, *, owner: str, now_ms: int, limit: int
) -> list[InvoiceRow]:
    """Unsettled rows this owner holds or whose lease has lapsed, oldest claim first."""
    query = (
        sa.select(billing_invoices)
        .where(
            # An IN list, not "!= settled": the (state, lease) index serves it.
            billing_invoices.c.state.in_([InvoiceState.claimed, InvoiceState.invoiced,
                                          InvoiceState.charging]),
            sa.or_(billing_invoices.c.lease_owner == owner,
                   billing_invoices.c.lease_until_ms <= now_ms),
        )
        .order_by(billing_invoices.c.claimed_at_ms, billing_invoices.c.invoice_id)
        .limit(limit)
    )
    async with _reader(engine).connect() as connection:
        return [invoice_row(r) for r in (await connection.execute(query)).all()]


async def take_lease(
    engine: AsyncEngine, row: InvoiceRow, *, owner: str, now_ms: int, lease_ms: int
) -> InvoiceRow | None:
    """The row under this owner's lease, or None if another holds it or it moved on."""
    async with engine.begin() as connection:
        result = await connection.execute(
            sa.update(billing_invoices)
            .where(
                billing_invoices.c.invoice_id == row.invoice_id,
                billing_invoices.c.state == row.state,
                sa.or_(billing_invoices.c.lease_owner == owner,
                       billing_invoices.c.lease_until_ms <= now_ms),
            )
            .values(lease_owner=owner, lease_until_ms=now_ms + lease_ms)
        )
        if result.rowcount != 1:
            return None
        fresh = (
            await connection.execute(
                sa.select(billing_invoices).where(billing_invoices.c.invoice_id == row.invoice_id)
            )
        ).one()
    return invoice_row(fresh)


async def advance_invoice(
    connection: AsyncConnection, row: InvoiceRow, *, owner: str, state: InvoiceState,
    **values: Any,
) -> bool:  # fmt: skip
    """Move ``row`` from the state it was read in to ``state`` under ``owner``'s lease;
    False (and nothing written) if it moved meanwhile or the lease was lost."""
    result = await connection.execute(
        sa.update(billing_invoices)
        .where(
            billing_invoices.c.invoice_id == row.invoice_id,
            billing_invoices.c.state == row.state,
            billing_invoices.c.lease_owner == owner,
        )
        .values(state=state, **values)
    )
    return bool(result.rowcount == 1)


async def release_lease(engine: AsyncEngine, row: InvoiceRow, *, owner: str) -> None:
    """Let any scheduler look at the row on its next run (a charge still in retries)."""
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(billing_invoices)
            .where(billing_invoices.c.invoice_id == row.invoice_id,
                   billing_invoices.c.lease_owner == owner)
            .values(lease_owner=None, lease_until_ms=0)
        )  # fmt: skip


async def unpaid_invoices(engine: AsyncEngine, *, limit: int) -> list[InvoiceRow]:
    query = (
        sa.select(billing_invoices)
        .where(billing_invoices.c.state == InvoiceState.settled,
               billing_invoices.c.outcome == InvoiceOutcome.unpaid)
        .order_by(billing_invoices.c.claimed_at_ms)
        .limit(limit)
    )  # fmt: skip
    async with _reader(engine).connect() as connection:
        return [invoice_row(r) for r in (await connection.execute(query)).all()]
