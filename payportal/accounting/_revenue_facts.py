"""Revenue by month of service, from the journal: the ledger's figures beside an independent
recomputation, and the accuracy of the one against the other. Pure: no I/O.

The model: an account's journal holds two stories about its revenue.

- What the ledger recognized: the parts of every ``RevenueRecognized`` event (posted on
  the day it recognized through), and of every void (``InvoiceVoided``) what it caught
  up (posted on the day before the void) and what it took back (posted on the day of
  the void), each for one invoice and one month of service.
- What should have been recognized, recomputed from the invoices alone: every issued
  invoice (amount, UTC invoice date, service period) and, for a voided one, a credit of
  the same amount over the same days (a one-off's one day is its invoice date) dated on
  the void day — fed to
  ``engine.revenue.revenue_by_month``, which shares no code with the engine's posting.

As of a day, the first counts the postings made by then, the second the invoices and
voids dated by then; per currency and month they must be equal. Accuracy per month is
``1 − |ledger − recomputed| / |recomputed|`` (``engine.revenue.recognition_accuracy``),
the overall figure is the same ratio over all months of a currency, and the lowest
currency's figure when there are several (amounts in different currencies are never
added). Refunds (contra-revenue, by the day they happen) are shown beside recognized
revenue and are no part of the accuracy: they change what was collected, not what was
earned.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import msgspec

from payportal.engine import (
    AccountOpened,
    Event,
    InvoiceIssued,
    InvoiceVoided,
    PaymentRefunded,
    RevenueRecognized,
    ServicePeriod,
    utc_date,
)
from payportal.engine.revenue import (
    RevenueInvoice,
    month_key,
    recognition_accuracy,
    revenue_by_month,
)

__all__ = [
    "REVENUE_EVENT_TYPES",
    "AccountRevenueFacts",
    "DifferingInvoice",
    "RevenueMonth",
    "RevenueReport",
    "build_revenue_report",
    "facts_from_events",
]

# The journal's event types the report reads (nothing else bears on revenue).
REVENUE_EVENT_TYPES: tuple[str, ...] = (
    "account_opened", "invoice_issued", "invoice_voided", "revenue_recognized",
    "payment_refunded",
)  # fmt: skip


@dataclass
class _LedgerPart:
    posted_on: dt.date
    invoice_id: str
    month: str
    amount_minor: int


@dataclass
class AccountRevenueFacts:
    """One account's revenue facts, read from its journal in version order."""

    account_id: str
    currency: str = ""
    documents: list[RevenueInvoice] = field(default_factory=list)
    ledger_parts: list[_LedgerPart] = field(default_factory=list)
    # (day, minor units) of each refund's contra-revenue part.
    refunds: list[tuple[dt.date, int]] = field(default_factory=list)


def facts_from_events(account_id: str, events: Iterable[Event]) -> AccountRevenueFacts:
    facts = AccountRevenueFacts(account_id=account_id)
    issued: dict[str, RevenueInvoice] = {}
    for event in events:
        if isinstance(event, AccountOpened):
            facts.currency = event.currency
        elif isinstance(event, InvoiceIssued):
            document = RevenueInvoice(
                invoice_id=event.invoice_id, amount_minor=event.amount_minor,
                invoice_date=utc_date(event.at_ms), service_period=event.service_period,
            )  # fmt: skip
            issued[event.invoice_id] = document
            facts.documents.append(document)
        elif isinstance(event, InvoiceVoided):
            original = issued[event.invoice_id]
            # A void is a credit of the whole invoice over the same days, from its day on.
            voided_on = utc_date(event.at_ms)
            # A one-off's day is its invoice date: the credit takes back that same day.
            days = original.service_period or ServicePeriod(
                start=original.invoice_date, end=original.invoice_date
            )
            credit = msgspec.structs.replace(
                original, amount_minor=-original.amount_minor, invoice_date=voided_on,
                service_period=days,
            )  # fmt: skip
            facts.documents.append(credit)
            for part in event.revenue_caught_up:
                caught_up = _LedgerPart(voided_on - dt.timedelta(days=1), part.invoice_id,
                                        part.month, part.amount_minor)  # fmt: skip
                facts.ledger_parts.append(caught_up)
            for part in event.revenue_reversed:
                reversal = _LedgerPart(voided_on, part.invoice_id, part.month, part.amount_minor)
                facts.ledger_parts.append(reversal)
        elif isinstance(event, RevenueRecognized):
            for part in event.parts:
                facts.ledger_parts.append(
                    _LedgerPart(event.through, part.invoice_id, part.month, part.amount_minor)
                )
        elif isinstance(event, PaymentRefunded):
            expense_minor = event.amount_minor - event.from_credit_minor
            if expense_minor:
                facts.refunds.append((utc_date(event.at_ms), expense_minor))
    return facts


class RevenueMonth(msgspec.Struct, frozen=True, kw_only=True):
    """One currency's month of service, as of the report's day."""

    currency: str
    month: str  # YYYY-MM
    # What the ledger recognized for the month, and what the month's invoices still defer.
    recognized_minor: int
    deferred_minor: int
    # The same two, recomputed from the invoices alone.
    recomputed_recognized_minor: int
    recomputed_deferred_minor: int
    # Contra-revenue: refunds made in the month (by the day of the refund).
    refunds_minor: int
    accuracy: Fraction


class DifferingInvoice(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    invoice_id: str
    currency: str
    month: str
    recognized_minor: int
    recomputed_minor: int


@dataclass(frozen=True)
class RevenueReport:
    as_of: dt.date | None
    months: list[RevenueMonth]
    accuracy: Fraction
    accuracy_by_currency: dict[str, Fraction]
    differing_invoices: list[DifferingInvoice]


def _in_range(month: str, start: dt.date | None, end: dt.date | None) -> bool:
    return (start is None or month >= month_key(start)) and (end is None or month <= month_key(end))


def _add(totals: dict[tuple[str, str], int], key: tuple[str, str], amount_minor: int) -> None:
    totals[key] = totals.get(key, 0) + amount_minor


def build_revenue_report(
    facts: Iterable[AccountRevenueFacts],
    *,
    as_of: dt.date | None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> RevenueReport:
    """Months of service from ``start``'s month to ``end``'s (inclusive; None: open), as of
    the end of ``as_of`` (None: nothing recognized yet, everything issued is deferred)."""
    ledger: dict[tuple[str, str], int] = {}
    recomputed: dict[tuple[str, str], int] = {}
    billed: dict[tuple[str, str], int] = {}
    refunds: dict[tuple[str, str], int] = {}
    differing: list[DifferingInvoice] = []
    for account in facts:
        currency = account.currency
        posted = [p for p in account.ledger_parts if as_of is not None and p.posted_on <= as_of]
        # Everything issued by the report's day (all of it when nothing was recognized).
        billed_as_of = as_of if as_of is not None else dt.date.max
        expected: dict[tuple[str, str], int] = {}
        for document in account.documents:
            for month, (recognized_minor, deferred_minor) in revenue_by_month(
                [document], billed_as_of
            ).items():
                if as_of is None:
                    recognized_minor, deferred_minor = 0, recognized_minor + deferred_minor
                _add(billed, (currency, month), recognized_minor + deferred_minor)
                _add(recomputed, (currency, month), recognized_minor)
                if recognized_minor:
                    _add(expected, (document.invoice_id, month), recognized_minor)
        ledger_by_invoice: dict[tuple[str, str], int] = {}
        for part in posted:
            _add(ledger, (currency, part.month), part.amount_minor)
            _add(ledger_by_invoice, (part.invoice_id, part.month), part.amount_minor)
        for day, amount_minor in account.refunds:
            if as_of is not None and day <= as_of:
                _add(refunds, (currency, month_key(day)), amount_minor)
        differing.extend(_differing(account, expected, ledger_by_invoice))
    keys = sorted(
        k for k in set(ledger) | set(recomputed) | set(billed) | set(refunds)
        if _in_range(k[1], start, end)
    )  # fmt: skip
    months: list[RevenueMonth] = []
    by_currency: dict[str, tuple[int, int]] = {}
    for currency, month in keys:
        key = (currency, month)
        ledger_minor = ledger.get(key, 0)
        recomputed_minor = recomputed.get(key, 0)
        billed_minor = billed.get(key, 0)
        accuracy = recognition_accuracy({month: ledger_minor}, {month: recomputed_minor})[month]
        months.append(
            RevenueMonth(
                currency=currency, month=month, recognized_minor=ledger_minor,
                deferred_minor=billed_minor - ledger_minor,
                recomputed_recognized_minor=recomputed_minor,
                recomputed_deferred_minor=billed_minor - recomputed_minor,
                refunds_minor=refunds.get(key, 0), accuracy=accuracy,
            )
        )  # fmt: skip
        error_minor, base_minor = by_currency.get(currency, (0, 0))
        by_currency[currency] = (
            error_minor + abs(ledger_minor - recomputed_minor),
            base_minor + abs(recomputed_minor),
        )
    accuracy_by_currency = {c: _ratio(e, b) for c, (e, b) in sorted(by_currency.items())}
    in_range = [d for d in differing if _in_range(d.month, start, end)]
    return RevenueReport(
        as_of=as_of,
        months=months,
        accuracy=min(accuracy_by_currency.values(), default=Fraction(1)),
        accuracy_by_currency=accuracy_by_currency,
        differing_invoices=in_range,
    )


def _ratio(error_minor: int, base_minor: int) -> Fraction:
    if base_minor == 0:
        return Fraction(1) if error_minor == 0 else Fraction(0)
    return max(Fraction(0), 1 - Fraction(error_minor, base_minor))


def _differing(
    account: AccountRevenueFacts,
    expected: Mapping[tuple[str, str], int],
    ledger: Mapping[tuple[str, str], int],
) -> list[DifferingInvoice]:
    found = []
    for invoice_id, month in sorted(set(expected) | set(ledger)):
        recognized_minor = ledger.get((invoice_id, month), 0)
        recomputed_minor = expected.get((invoice_id, month), 0)
        if recognized_minor != recomputed_minor:
            found.append(
                DifferingInvoice(
                    account_id=account.account_id, invoice_id=invoice_id,
                    currency=account.currency, month=month, recognized_minor=recognized_minor,
                    recomputed_minor=recomputed_minor,
                )
            )  # fmt: skip
    return found
