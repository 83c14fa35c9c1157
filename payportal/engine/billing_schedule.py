"""Billing periods of a subscription, and proration of a plan change within one.

The model: a subscription is billed in consecutive inclusive periods of one ``Interval``
(a month or a year). Each period starts on the anchor: for monthly billing the anchor's
day in every month, for yearly billing the anchor's month and day in every year. A day
the month lacks (the 29th, 30th or 31st) falls back to the month's last day, so the
31st bills on 31 Jan, 28 Feb (29 Feb in a leap year), 31 Mar, 30 Apr; a yearly 29 Feb
anchor bills on 28 Feb in common years. A period ends the day before the next one
starts, so periods never overlap and never leave a gap: every date lies in exactly one.

Proration: a plan change on a day of a period credits the old price's part for the days
from that day to the period's end and charges the new price's part for the same days.
Both parts come from the per-day split of ``revenue`` (exact integers, largest remainder,
see its header): the credit plus the part kept for the days already used is the old
price exactly, and the charge plus the part for those used days is the new price
exactly, so no minor unit is created or lost.

Dates only, no time zones: which calendar date "now" is depends on the merchant's zone,
and daylight-saving shifts change the length of an hour, not of a date. The caller turns
an instant into a local date before calling, which keeps the engine free of the tz
database (read from disk) and of the clock.
"""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
from enum import StrEnum
from typing import Annotated

import msgspec

from .messages import ServicePeriod
from .revenue import period_days, recognized_through_days

__all__ = [
    "BillingAnchor",
    "Interval",
    "Proration",
    "anchor_date",
    "next_period_start",
    "period_containing",
    "periods_between",
    "prorate_plan_change",
]

_ONE_DAY = dt.timedelta(days=1)
# The longest each month can be (February in a leap year): a yearly anchor beyond it
# names no real day, so it is refused rather than silently moved.
_MONTH_DAYS_MAX = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class Interval(StrEnum):
    month = "month"
    year = "year"


class BillingAnchor(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where periods start: ``day`` of each month, or ``month`` and ``day`` of each year.

    Monthly billing ignores ``month``.
    """

    day: Annotated[int, msgspec.Meta(ge=1, le=31)]
    month: Annotated[int, msgspec.Meta(ge=1, le=12)] = 1

    def __post_init__(self) -> None:
        assert 1 <= self.day <= 31, self
        assert 1 <= self.month <= 12, self


class Proration(msgspec.Struct, frozen=True, kw_only=True):
    """A plan change on ``change_date``: what the payer is credited and charged."""

    days_total: int
    days_remaining: int  # from the change date through the period's end, inclusive
    kept_minor: int  # the old price's part for the days already used
    credit_minor: int  # the old price's part for the remaining days, returned
    charge_minor: int  # the new price's part for the remaining days

    @property
    def net_minor(self) -> int:
        """Charge less credit: positive on an upgrade, negative on a downgrade."""
        return self.charge_minor - self.credit_minor


def anchor_date(anchor: BillingAnchor, year: int, month: int) -> dt.date:
    """The anchor's day in a month, falling back to the month's last day."""
    return dt.date(year, month, min(anchor.day, calendar.monthrange(year, month)[1]))


def _period_start(anchor: BillingAnchor, interval: Interval, index: int) -> dt.date:
    """The start of period ``index``: months since year 0 for monthly, the year for yearly."""
    if interval is Interval.month:
        year, month_zero = divmod(index, 12)
        return anchor_date(anchor, year, month_zero + 1)
    assert anchor.day <= _MONTH_DAYS_MAX[anchor.month - 1], anchor
    return anchor_date(anchor, index, anchor.month)


def _period_index(anchor: BillingAnchor, interval: Interval, when: dt.date) -> int:
    index = when.year * 12 + when.month - 1 if interval is Interval.month else when.year
    if when < _period_start(anchor, interval, index):
        index -= 1
    assert _period_start(anchor, interval, index) <= when
    return index


def _period_at(anchor: BillingAnchor, interval: Interval, index: int) -> ServicePeriod:
    start = _period_start(anchor, interval, index)
    end = _period_start(anchor, interval, index + 1) - _ONE_DAY
    assert start <= end, (start, end)
    return ServicePeriod(start=start, end=end)


def period_containing(anchor: BillingAnchor, interval: Interval, when: dt.date) -> ServicePeriod:
    """The one period that contains ``when``."""
    period = _period_at(anchor, interval, _period_index(anchor, interval, when))
    assert period.start <= when <= period.end, (period, when)
    return period


def periods_between(
    anchor: BillingAnchor, interval: Interval, first: dt.date, last: dt.date
) -> list[ServicePeriod]:
    """Every period that contains a day of ``first``..``last`` (inclusive), in order."""
    assert first <= last, (first, last)
    index_first = _period_index(anchor, interval, first)
    index_last = _period_index(anchor, interval, last)
    periods = [_period_at(anchor, interval, i) for i in range(index_first, index_last + 1)]
    for previous, current in itertools.pairwise(periods):
        assert current.start == previous.end + _ONE_DAY, (previous, current)
    return periods


def next_period_start(anchor: BillingAnchor, interval: Interval, when: dt.date) -> dt.date:
    """The first day of the period after the one containing ``when``."""
    return period_containing(anchor, interval, when).end + _ONE_DAY


def prorate_plan_change(
    period: ServicePeriod, change_date: dt.date, price_old_minor: int, price_new_minor: int
) -> Proration:
    """Credit the old price for the days from ``change_date`` on; charge the new one for them.

    The change takes effect at the start of ``change_date``: on the period's first day the
    whole old price is credited and the whole new price charged.
    """
    assert period.start <= change_date <= period.end, (period, change_date)
    assert price_old_minor >= 0, price_old_minor
    assert price_new_minor >= 0, price_new_minor
    days_total = period_days(period)
    days_used = (change_date - period.start).days
    kept_minor = recognized_through_days(price_old_minor, days_total, days_used)
    new_used_minor = recognized_through_days(price_new_minor, days_total, days_used)
    proration = Proration(
        days_total=days_total,
        days_remaining=days_total - days_used,
        kept_minor=kept_minor,
        credit_minor=price_old_minor - kept_minor,
        charge_minor=price_new_minor - new_used_minor,
    )
    assert proration.kept_minor + proration.credit_minor == price_old_minor
    assert 0 <= proration.credit_minor <= price_old_minor
    assert 0 <= proration.charge_minor <= price_new_minor
    return proration
