"""Engine objects and read-model rows as the API's response types (unix seconds, minor
units, the contract's field names). Pure functions; no I/O."""

from __future__ import annotations

import datetime as dt

from payportal.actors import Balance as ShardBalance
from payportal.engine import Invoice as EngineInvoice
from payportal.engine import Payment as EnginePayment
from payportal.persistence.directory import AccountProfile, PaymentMethodRow
from payportal.persistence.queries import AccountRow, InvoiceRow, PaymentMethodListRow, PaymentRow
from payportal.processors.adapter import NextAction

from .schemas import (
    Account,
    AllocationOut,
    Attempt,
    Balance,
    Invoice,
    Payment,
    PaymentMethod,
    ServicePeriodBody,
)

__all__ = [
    "account_row_view",
    "account_view",
    "invoice_row_view",
    "invoice_view",
    "payment_method_view",
    "payment_row_view",
    "payment_view",
    "seconds",
]


def seconds(ms: int) -> int:
    return ms // 1000


def _unix(value: dt.datetime) -> int:
    return int(value.timestamp())


def account_view(profile: AccountProfile, balance: ShardBalance) -> Account:
    return Account(
        id=profile.account_id, name=profile.name, email=profile.email,
        currency=profile.currency, external_ref=profile.external_ref,
        balance=Balance(outstanding=balance.outstanding_minor, credit=balance.credit_minor,
                        currency=balance.currency),
        created=_unix(profile.created_at),
    )  # fmt: skip


def account_row_view(row: AccountRow) -> Account:
    balance = None
    if row.outstanding_minor is not None and row.credit_minor is not None:
        balance = Balance(
            outstanding=row.outstanding_minor, credit=row.credit_minor, currency=row.currency
        )
    return Account(
        id=row.account_id, name=row.name, email=row.email, currency=row.currency,
        external_ref=row.external_ref, balance=balance, created=_unix(row.created_at),
    )  # fmt: skip


def invoice_view(account_id: str, currency: str, invoice: EngineInvoice) -> Invoice:
    period = invoice.service_period
    return Invoice(
        id=invoice.invoice_id, account=account_id, number=invoice.number, currency=currency,
        amount_due=invoice.amount_due_minor, amount_paid=invoice.amount_paid_minor,
        amount_remaining=invoice.amount_remaining_minor, status=invoice.status.value,
        due_date=invoice.due_date,
        service_period=None if period is None else ServicePeriodBody(start=period.start,
                                                                     end=period.end),
        description=invoice.description,
    )  # fmt: skip


def invoice_row_view(row: InvoiceRow, currency: str) -> Invoice:
    period = None
    if row.service_start is not None and row.service_end is not None:
        period = ServicePeriodBody(start=row.service_start, end=row.service_end)
    remaining = 0 if row.status == "void" else row.amount_due_minor - row.amount_paid_minor
    return Invoice(
        id=row.invoice_id, account=row.account_id, number=row.number, currency=currency,
        amount_due=row.amount_due_minor, amount_paid=row.amount_paid_minor,
        amount_remaining=remaining, status=row.status,  # type: ignore[arg-type]
        due_date=row.due_date, service_period=period, description=row.description,
    )  # fmt: skip


def payment_view(
    account_id: str, payment: EnginePayment, next_action: NextAction | None = None
) -> Payment:
    return Payment(
        id=payment.payment_id, account=account_id, amount=payment.amount_minor,
        currency=payment.currency, status=payment.status.value,
        payment_method=payment.payment_method.id,
        attempts=[
            Attempt(id=a.attempt_id, status=a.status.value, decline_code=a.decline_code,
                    created_at=seconds(a.created_at_ms))
            for a in payment.attempts
        ],
        allocations=[AllocationOut(invoice=a.invoice_id, amount=a.amount_minor)
                     for a in payment.allocations],
        amount_applied=payment.amount_applied_minor,
        amount_unapplied=payment.amount_unapplied_minor,
        amount_refunded=payment.amount_refunded_minor,
        processing_ms=payment.processing_ms,
        next_retry_at=None if payment.next_retry_at_ms is None
        else seconds(payment.next_retry_at_ms),
        created=seconds(payment.created_at_ms), description=payment.description,
        next_action=next_action,
    )  # fmt: skip


def payment_row_view(row: PaymentRow) -> Payment:
    processing_ms = None
    if row.finished_at_ms is not None:
        processing_ms = row.finished_at_ms - row.created_at_ms
    return Payment(
        id=row.payment_id, account=row.account_id, amount=row.amount_minor,
        currency=row.currency, status=row.status, payment_method=row.payment_method_id,
        attempts=[
            Attempt(id=a.attempt_id, status=a.status,  # type: ignore[arg-type]
                    decline_code=a.decline_code, created_at=seconds(a.created_at_ms))
            for a in row.attempts
        ],
        allocations=[AllocationOut(invoice=a.invoice_id, amount=a.amount_minor)
                     for a in row.allocations],
        amount_applied=row.amount_applied_minor, amount_unapplied=row.amount_unapplied_minor,
        amount_refunded=row.amount_refunded_minor, processing_ms=processing_ms,
        next_retry_at=None if row.next_retry_at_ms is None else seconds(row.next_retry_at_ms),
        created=seconds(row.created_at_ms), description=row.description,
    )  # fmt: skip


def payment_method_view(row: PaymentMethodRow | PaymentMethodListRow) -> PaymentMethod:
    return PaymentMethod(
        id=row.id, account=row.account_id, type=row.type, brand=row.brand, last4=row.last4,
        exp_month=row.exp_month, exp_year=row.exp_year, wallet=row.wallet,
        created=_unix(row.created_at), deleted=row.deleted_at is not None,
    )  # fmt: skip
