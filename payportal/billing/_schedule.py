"""Which subscription periods are due on a date, and what each costs. Pure: no clock.

The model: ``payportal.engine.billing_schedule`` gives the anchor-day periods. A
subscription adds its first day: when it starts between anchors, its first period is a
stub from that day to the day before the next anchor, priced as the plan's part for the
stub's days (the engine's proration of a change from nothing to the plan, so the stub
plus the days before it make the whole price exactly). Every later period is a whole one.

"Today" is a date in the merchant's business time zone (``local_date``): a period is due
from 00:00 local time on its first day. Daylight-saving changes move no date, so a
period is neither billed twice across the repeated hour nor skipped across the lost one.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from payportal.engine.billing_schedule import (
    BillingAnchor,
    Interval,
    period_containing,
    periods_between,
    prorate_plan_change,
)
from payportal.engine.messages import ServicePeriod

__all__ = ["anchor_of", "due_periods", "local_date", "period_amount_minor", "subscription_period"]

_ONE_DAY = dt.timedelta(days=1)


def local_date(now_ms: int, zone: ZoneInfo) -> dt.date:
    """The calendar date at ``now_ms`` (unix milliseconds) in ``zone``."""
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=zone).date()


def anchor_of(interval: Interval, anchor_day: int, anchor_month: int) -> BillingAnchor:
    # Monthly billing ignores the month; keeping it 1 makes equal anchors compare equal.
    month = anchor_month if interval is Interval.year else 1
    return BillingAnchor(day=anchor_day, month=month)


def subscription_period(
    anchor: BillingAnchor, interval: Interval, started_on: dt.date, day: dt.date
) -> ServicePeriod:
    """The subscription's period containing ``day``: the calendar period, its start
    clipped to ``started_on`` for the first (stub) period."""
    assert day >= started_on, (day, started_on)
    period = period_containing(anchor, interval, day)
    if period.start < started_on:
        return ServicePeriod(start=started_on, end=period.end)
    return period


def due_periods(
    anchor: BillingAnchor,
    interval: Interval,
    *,
    started_on: dt.date,
    next_period_start: dt.date,
    today: dt.date,
    ended_on: dt.date | None = None,
) -> list[ServicePeriod]:
    """The periods from ``next_period_start`` whose first day is on or before ``today``
    (and not after ``ended_on``), in order, each ending the day before the next begins."""
    assert next_period_start >= started_on, (next_period_start, started_on)
    last = today if ended_on is None else min(today, ended_on)
    if next_period_start > last:
        return []
    periods = periods_between(anchor, interval, next_period_start, last)
    first = periods[0]
    if first.start < next_period_start:
        # Only the first period of all may start off an anchor (the stub).
        assert next_period_start == started_on, (next_period_start, first)
        periods[0] = ServicePeriod(start=next_period_start, end=first.end)
    assert periods[0].start == next_period_start, (periods[0], next_period_start)
    assert all(p.start <= last for p in periods)
    return periods


def period_amount_minor(
    anchor: BillingAnchor, interval: Interval, period: ServicePeriod, price_minor: int
) -> int:
    """The plan's price for a whole period; its part for the stub's days otherwise."""
    whole = period_containing(anchor, interval, period.start)
    assert whole.end == period.end, (whole, period)
    if whole.start == period.start:
        return price_minor
    amount_minor = prorate_plan_change(whole, period.start, 0, price_minor).charge_minor
    assert 0 <= amount_minor <= price_minor
    return amount_minor
