"""Read-model queries for lists: accounts, invoices, payments — with keyset pagination.

The model: the read-model tables are projections of the journal and may lag the shards
by a few milliseconds, so they answer lists and searches only; a single object is read
through its shard, which is authoritative. Every list takes ``limit`` and
``starting_after`` (an object id) and returns one more row than asked for internally,
so ``has_more`` needs no COUNT. Orders are total (ties broken by id), so a page boundary
never skips or repeats a row:

- accounts: by id (ids are time-ordered, so this is creation order);
- invoices: by id (creation order) within an account;
- payments: newest first, by (created_at_ms, id) descending.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.engine import OpenInvoice

from ._engine import READ
from .tables import accounts, allocations, attempts, invoices, payments
from .tables_payers import account_profiles, payment_methods

__all__ = [
    "AccountRow",
    "AllocationRow",
    "AttemptRow",
    "InvoiceRow",
    "Page",
    "PaymentMethodListRow",
    "PaymentRow",
    "list_accounts",
    "list_invoices",
    "list_payment_methods",
    "list_payments",
    "open_invoices",
    "wait_for_projection",
]


class AccountRow(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    name: str
    email: str
    currency: str
    external_ref: str | None
    created_at: dt.datetime
    # None until the read model has caught up with the account's opening.
    outstanding_minor: int | None
    credit_minor: int | None


class InvoiceRow(msgspec.Struct, frozen=True, kw_only=True):
    invoice_id: str
    account_id: str
    number: str
    amount_due_minor: int
    amount_paid_minor: int
    status: str
    due_date: dt.date
    service_start: dt.date | None
    service_end: dt.date | None
    description: str | None = None


class AttemptRow(msgspec.Struct, frozen=True, kw_only=True):
    attempt_id: str
    status: str
    decline_code: str | None
    created_at_ms: int


class AllocationRow(msgspec.Struct, frozen=True, kw_only=True):
    invoice_id: str
    amount_minor: int


class PaymentRow(msgspec.Struct, frozen=True, kw_only=True):
    payment_id: str
    account_id: str
    amount_minor: int
    currency: str
    status: str
    payment_method_id: str
    amount_applied_minor: int
    amount_unapplied_minor: int
    amount_refunded_minor: int
    created_at_ms: int
    finished_at_ms: int | None
    next_retry_at_ms: int | None
    attempts: list[AttemptRow]
    allocations: list[AllocationRow]
    description: str | None = None


class PaymentMethodListRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    account_id: str
    type: str
    brand: str
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    wallet: str | None
    created_at: dt.datetime
    deleted_at: dt.datetime | None


T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    data: list[T]
    has_more: bool


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


async def _rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.execution_options(**READ).connect() as connection:
        return list(await connection.execute(query))


def _page(rows: list[T], limit: int) -> Page[T]:
    return Page(data=rows[:limit], has_more=len(rows) > limit)


async def list_accounts(
    engine: AsyncEngine, *, only: Sequence[str] | None = None, limit: int = 10,
    starting_after: str | None = None,
) -> Page[AccountRow]:  # fmt: skip
    """Accounts by id; ``only`` restricts to those ids (a payer's accounts)."""
    assert limit > 0
    p, a = account_profiles.c, accounts.c
    query = (
        sa.select(p.account_id, p.name, p.email, p.currency, p.external_ref, p.created_at,
                  a.outstanding_minor, a.credit_minor)
        .select_from(account_profiles.outerjoin(accounts, a.account_id == p.account_id))
        .order_by(p.account_id)
        .limit(limit + 1)
    )  # fmt: skip
    if only is not None:
        query = query.where(p.account_id.in_(list(only)))
    if starting_after is not None:
        query = query.where(p.account_id > starting_after)
    rows = await _rows(engine, query)
    data = [
        AccountRow(**{**row._mapping, "created_at": _utc(row.created_at)}) for row in rows
    ]
    return _page(data, limit)


async def list_invoices(
    engine: AsyncEngine, account_id: str, *, status: str | None = None, limit: int = 10,
    starting_after: str | None = None,
) -> Page[InvoiceRow]:  # fmt: skip
    assert limit > 0
    i = invoices.c
    columns = [i[name] for name in InvoiceRow.__struct_fields__]
    query = sa.select(*columns).where(i.account_id == account_id).order_by(i.invoice_id)
    if status is not None:
        query = query.where(i.status == status)
    if starting_after is not None:
        query = query.where(i.invoice_id > starting_after)
    rows = await _rows(engine, query.limit(limit + 1))
    return _page([InvoiceRow(**row._mapping) for row in rows], limit)


async def open_invoices(engine: AsyncEngine, account_id: str) -> list[OpenInvoice]:
    """The account's open invoices with something left to pay, for allocation previews."""
    i = invoices.c
    rows = await _rows(
        engine,
        sa.select(i.invoice_id, i.number, i.due_date, i.amount_due_minor, i.amount_paid_minor)
        .where(i.account_id == account_id, i.status == "open"),
    )  # fmt: skip
    return [
        OpenInvoice(
            invoice_id=row.invoice_id, number=row.number, due_date=row.due_date,
            amount_remaining_minor=row.amount_due_minor - row.amount_paid_minor,
        )
        for row in rows
        if row.amount_due_minor > row.amount_paid_minor
    ]  # fmt: skip


async def list_payments(
    engine: AsyncEngine, *, account_ids: Sequence[str] | None = None,
    status: str | None = None, created_gte_ms: int | None = None,
    created_lt_ms: int | None = None, limit: int = 10, starting_after: str | None = None,
) -> Page[PaymentRow]:  # fmt: skip
    """Payments newest first; ``account_ids`` None means every account (a merchant)."""
    assert limit > 0
    p = payments.c
    columns = [p[name] for name in PaymentRow.__struct_fields__ if name in p]
    query = sa.select(*columns).order_by(p.created_at_ms.desc(), p.payment_id.desc())
    if account_ids is not None:
        query = query.where(p.account_id.in_(list(account_ids)))
    if status is not None:
        query = query.where(p.status == status)
    if created_gte_ms is not None:
        query = query.where(p.created_at_ms >= created_gte_ms)
    if created_lt_ms is not None:
        query = query.where(p.created_at_ms < created_lt_ms)
    if starting_after is not None:
        cursor = sa.select(p.created_at_ms).where(p.payment_id == starting_after).scalar_subquery()
        query = query.where(
            sa.or_(
                p.created_at_ms < cursor,
                sa.and_(p.created_at_ms == cursor, p.payment_id < starting_after),
            )
        )
    rows = await _rows(engine, query.limit(limit + 1))
    ids = [row.payment_id for row in rows[:limit]]
    attempts_by: dict[str, list[AttemptRow]] = {i: [] for i in ids}
    allocations_by: dict[str, list[AllocationRow]] = {i: [] for i in ids}
    if ids:
        t = attempts.c
        for row in await _rows(
            engine,
            sa.select(t.payment_id, t.attempt_id, t.status, t.decline_code, t.created_at_ms)
            .where(t.payment_id.in_(ids))
            .order_by(t.created_at_ms, t.attempt_id),
        ):  # fmt: skip
            attempts_by[row.payment_id].append(
                AttemptRow(attempt_id=row.attempt_id, status=row.status,
                           decline_code=row.decline_code, created_at_ms=row.created_at_ms)
            )  # fmt: skip
        a = allocations.c
        for row in await _rows(
            engine,
            sa.select(a.payment_id, a.invoice_id, a.amount_minor)
            .where(a.payment_id.in_(ids))
            .order_by(a.invoice_id),
        ):  # fmt: skip
            allocations_by[row.payment_id].append(
                AllocationRow(invoice_id=row.invoice_id, amount_minor=row.amount_minor)
            )
    data = [
        PaymentRow(
            **row._mapping,
            attempts=attempts_by[row.payment_id],
            allocations=allocations_by[row.payment_id],
        )
        for row in rows[:limit]
    ]
    return Page(data=data, has_more=len(rows) > limit)


async def list_payment_methods(
    engine: AsyncEngine, account_id: str, *, include_deleted: bool = False, limit: int = 10,
    starting_after: str | None = None,
) -> Page[PaymentMethodListRow]:  # fmt: skip
    """An account's payment methods by id; deleted ones only when asked (history)."""
    assert limit > 0
    m = payment_methods.c
    query = (
        sa.select(m.id, m.account_id, m.type, m.brand, m.last4, m.exp_month, m.exp_year,
                  m.wallet, m.created_at, m.deleted_at)
        .where(m.account_id == account_id)
        .order_by(m.id)
        .limit(limit + 1)
    )  # fmt: skip
    if not include_deleted:
        query = query.where(m.deleted_at.is_(None))
    if starting_after is not None:
        query = query.where(m.id > starting_after)
    rows = await _rows(engine, query)
    data = [
        PaymentMethodListRow(
            **{**row._mapping, "created_at": _utc(row.created_at),
               "deleted_at": _utc(row.deleted_at)}
        )
        for row in rows
    ]  # fmt: skip
    return _page(data, limit)


async def wait_for_projection(
    engine: AsyncEngine, account_id: str, version: int, *, timeout_s: float = 1.0,
    poll_s: float = 0.005, poll_s_max: float = 0.04,
) -> bool:  # fmt: skip
    """Wait until the account's read models reflect ``version`` (the version a shard
    reply reported), for read-your-writes in lists. False if they did not in time; the
    caller then answers with what is there (lists may lag; single objects never do).
    The projection writes every ~50 ms, so the wait between looks doubles up to
    ``poll_s_max``: a few queries per list under load, not one every 5 ms."""
    deadline = time.monotonic() + timeout_s
    a = accounts.c
    query = sa.select(a.version).where(a.account_id == account_id)
    wait_s = poll_s
    while True:
        rows = await _rows(engine, query)
        if rows and rows[0].version >= version:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(wait_s)
        wait_s = min(wait_s * 2, poll_s_max)
