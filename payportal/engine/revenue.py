"""Revenue recognition: ratable per day of an invoice's service period, in minor units.

The model: an invoice with a ``ServicePeriod`` is earned evenly over the period's days
(both ends inclusive); one without a period (a one-off purchase) is earned in full on its
invoice date. Refunds and credit notes are invoices with a negative amount over the same
period, so they reverse exactly what the original recognized, day by day.

The rounding rule (largest remainder, ties spread by the running total): every day's
exact share is ``amount / days``, so all remainders tie; the ``amount % days`` extra
minor units go to the days on which the running exact total crosses a whole unit.
Equivalently, the total recognized through the ``k``-th day is ``⌊|amount| · k / days⌋``
with the amount's sign. Hence every day gets ``⌊|amount| / days⌋`` or one more, the days
sum to the amount exactly, recognition is never ahead of the time elapsed, and a negative
amount is the exact mirror of the positive one. Proration of a plan change
(``billing_schedule``) uses the same split, so a credit for unused days equals the
revenue still deferred for them.

Dates only, no clock: ``as_of`` is an argument, and a day is a calendar date in the
merchant's reporting time zone, converted by the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from fractions import Fraction

import msgspec

from .messages import ServicePeriod

__all__ = [
    "RevenueInvoice",
    "month_key",
    "period_days",
    "recognition_accuracy",
    "recognition_schedule",
    "recognized_by_month",
    "recognized_through",
    "recognized_through_days",
    "revenue_by_month",
]

_ONE_DAY = dt.timedelta(days=1)


class RevenueInvoice(msgspec.Struct, frozen=True, kw_only=True):
    """What recognition needs of an invoice. A refund or credit has a negative amount."""

    invoice_id: str
    amount_minor: int
    invoice_date: dt.date
    service_period: ServicePeriod | None = None


def period_days(period: ServicePeriod) -> int:
    """The number of days in an inclusive period."""
    assert period.start <= period.end, period
    return (period.end - period.start).days + 1


def month_key(day: dt.date) -> str:
    """The report's period name for a day: ``YYYY-MM``."""
    return f"{day.year:04d}-{day.month:02d}"


def recognized_through_days(amount_minor: int, days_total: int, days_elapsed: int) -> int:
    """The part of ``amount_minor`` earned by the first ``days_elapsed`` of ``days_total``
    days: the exact pro rata share rounded toward zero (see the module header)."""
    assert days_total >= 1, days_total
    assert 0 <= days_elapsed <= days_total, (days_elapsed, days_total)
    magnitude = abs(amount_minor) * days_elapsed // days_total
    through_minor = magnitude if amount_minor >= 0 else -magnitude
    assert abs(through_minor) <= abs(amount_minor)
    return through_minor


def recognition_schedule(amount_minor: int, period: ServicePeriod) -> list[tuple[dt.date, int]]:
    """Each day of the period with the part of the amount earned on it; sums to the amount."""
    days_total = period_days(period)
    schedule: list[tuple[dt.date, int]] = []
    through_previous_minor = 0
    for index in range(days_total):
        through_minor = recognized_through_days(amount_minor, days_total, index + 1)
        day = period.start + dt.timedelta(days=index)
        schedule.append((day, through_minor - through_previous_minor))
        through_previous_minor = through_minor
    assert sum(part for _, part in schedule) == amount_minor
    assert schedule[-1][0] == period.end
    return schedule


def recognized_through(amount_minor: int, period: ServicePeriod, as_of: dt.date) -> int:
    """What is earned by the end of ``as_of``: 0 before the period, all of it from its end."""
    days_total = period_days(period)
    days_elapsed = min(max((as_of - period.start).days + 1, 0), days_total)
    return recognized_through_days(amount_minor, days_total, days_elapsed)


def _invoice_recognized_through(invoice: RevenueInvoice, as_of: dt.date) -> int:
    if invoice.service_period is None:
        return invoice.amount_minor if as_of >= invoice.invoice_date else 0
    return recognized_through(invoice.amount_minor, invoice.service_period, as_of)


def _invoice_months(invoice: RevenueInvoice) -> list[tuple[str, dt.date, dt.date]]:
    """The invoice's recognition days cut by calendar month: (key, first, last)."""
    if invoice.service_period is None:
        return [(month_key(invoice.invoice_date), invoice.invoice_date, invoice.invoice_date)]
    months: list[tuple[str, dt.date, dt.date]] = []
    first = invoice.service_period.start
    while first <= invoice.service_period.end:
        month_next = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
        last = min(month_next - _ONE_DAY, invoice.service_period.end)
        months.append((month_key(first), first, last))
        first = last + _ONE_DAY
    return months


def recognized_by_month(invoice: RevenueInvoice, as_of: dt.date) -> dict[str, int]:
    """What ``invoice`` has earned by the end of ``as_of``, per calendar month of service;
    months with nothing earned are left out. Nothing before the invoice date."""
    if invoice.invoice_date > as_of:
        return {}
    earned: dict[str, int] = {}
    for key, first, last in _invoice_months(invoice):
        if first > as_of:
            break
        month_minor = _invoice_recognized_through(invoice, min(last, as_of)) - (
            _invoice_recognized_through(invoice, first - _ONE_DAY)
        )
        if month_minor:
            earned[key] = month_minor
    assert sum(earned.values()) == _invoice_recognized_through(invoice, as_of)
    return earned


def revenue_by_month(
    invoices: Iterable[RevenueInvoice], as_of: dt.date
) -> dict[str, tuple[int, int]]:
    """Per calendar month of service: (recognized by the end of ``as_of``, still deferred).

    Only invoices dated on or before ``as_of`` exist yet, so later ones are left out. A
    month's deferred part is what its days will earn after ``as_of``. Keys are ``YYYY-MM``,
    in order; recognized plus deferred over all months is the invoices' total.
    """
    totals: dict[str, tuple[int, int]] = {}
    issued_minor = 0
    for invoice in invoices:
        if invoice.invoice_date > as_of:
            continue
        issued_minor += invoice.amount_minor
        earned_before_minor = 0  # by the end of the day before each month's first
        for key, first, last in _invoice_months(invoice):
            earned_through_minor = _invoice_recognized_through(invoice, last)
            month_minor = earned_through_minor - earned_before_minor
            if as_of >= last:
                recognized_minor = month_minor
            elif as_of >= first:
                recognized_minor = (
                    _invoice_recognized_through(invoice, as_of) - earned_before_minor
                )
            else:
                recognized_minor = 0
            earned_before_minor = earned_through_minor
            recognized_total, deferred_total = totals.get(key, (0, 0))
            totals[key] = (
                recognized_total + recognized_minor,
                deferred_total + month_minor - recognized_minor,
            )
    report = dict(sorted(totals.items()))
    assert sum(r + d for r, d in report.values()) == issued_minor
    return report


def recognition_accuracy(
    recognized_by_period: Mapping[str, int], recomputed_by_period: Mapping[str, int]
) -> dict[str, Fraction]:
    """Per period: ``1 − |ledger − recomputed| / |recomputed|``, exactly, as a Fraction.

    A period missing from one side counts as 0 there. Both 0 is exact (1); a ledger figure
    where the recomputation has none is 0. The result is clamped at 0, so it stays a
    fraction in [0, 1]: an error larger than the amount itself is as wrong as it gets.
    Anything below 1 is a defect to show with the invoices behind it.
    """
    accuracy: dict[str, Fraction] = {}
    for period in sorted(set(recognized_by_period) | set(recomputed_by_period)):
        ledger_minor = recognized_by_period.get(period, 0)
        recomputed_minor = recomputed_by_period.get(period, 0)
        if recomputed_minor == 0:
            accuracy[period] = Fraction(1) if ledger_minor == 0 else Fraction(0)
            continue
        error = Fraction(abs(ledger_minor - recomputed_minor), abs(recomputed_minor))
        accuracy[period] = max(Fraction(0), 1 - error)
        assert (accuracy[period] == 1) == (ledger_minor == recomputed_minor)
    return accuracy
