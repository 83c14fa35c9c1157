"""Billing periods fall on the anchor and tile the calendar, and proration conserves every
minor unit: checked by calling the schedule directly, against dates and amounts written
out here and against a day-by-day walk of whole simulated years.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from payportal.engine import ServicePeriod
from payportal.engine.billing_schedule import (
    BillingAnchor,
    Interval,
    next_period_start,
    period_containing,
    periods_between,
    prorate_plan_change,
)

ONE_DAY = dt.timedelta(days=1)


def period(start: str, end: str) -> ServicePeriod:
    return ServicePeriod(start=dt.date.fromisoformat(start), end=dt.date.fromisoformat(end))


def test_the_31st_falls_back_to_the_last_day_of_february_and_returns_in_march() -> None:
    anchor = BillingAnchor(day=31)
    starts_leap = [
        p.start
        for p in periods_between(anchor, Interval.month, dt.date(2024, 1, 31), dt.date(2024, 4, 30))
    ]
    assert starts_leap == [
        dt.date(2024, 1, 31), dt.date(2024, 2, 29), dt.date(2024, 3, 31), dt.date(2024, 4, 30)
    ]  # fmt: skip
    starts_common = [
        p.start
        for p in periods_between(anchor, Interval.month, dt.date(2025, 1, 31), dt.date(2025, 3, 31))
    ]
    assert starts_common == [dt.date(2025, 1, 31), dt.date(2025, 2, 28), dt.date(2025, 3, 31)]


def test_a_period_anchored_on_the_31st_ends_the_day_before_the_fallback_start() -> None:
    anchor = BillingAnchor(day=31)
    assert period_containing(anchor, Interval.month, dt.date(2025, 2, 10)) == period(
        "2025-01-31", "2025-02-27"
    )
    assert period_containing(anchor, Interval.month, dt.date(2025, 2, 28)) == period(
        "2025-02-28", "2025-03-30"
    )
    assert period_containing(anchor, Interval.month, dt.date(2024, 2, 28)) == period(
        "2024-01-31", "2024-02-28"
    )


def test_the_leap_day_belongs_to_the_period_anchored_on_the_29th() -> None:
    anchor = BillingAnchor(day=29)
    assert period_containing(anchor, Interval.month, dt.date(2024, 2, 29)) == period(
        "2024-02-29", "2024-03-28"
    )
    assert period_containing(anchor, Interval.month, dt.date(2024, 2, 28)) == period(
        "2024-01-29", "2024-02-28"
    )
    assert period_containing(anchor, Interval.month, dt.date(2025, 3, 1)) == period(
        "2025-02-28", "2025-03-28"
    )


def test_a_yearly_29_february_anchor_bills_on_28_february_in_common_years() -> None:
    anchor = BillingAnchor(month=2, day=29)
    starts = [
        p.start
        for p in periods_between(anchor, Interval.year, dt.date(2024, 3, 1), dt.date(2028, 3, 1))
    ]
    assert starts == [
        dt.date(2024, 2, 29), dt.date(2025, 2, 28), dt.date(2026, 2, 28), dt.date(2027, 2, 28),
        dt.date(2028, 2, 29),
    ]  # fmt: skip
    assert period_containing(anchor, Interval.year, dt.date(2025, 2, 28)) == period(
        "2025-02-28", "2026-02-27"
    )


def test_a_yearly_anchor_on_a_day_no_year_has_is_refused() -> None:
    with pytest.raises(AssertionError):
        period_containing(BillingAnchor(month=2, day=30), Interval.year, dt.date(2025, 1, 1))


def test_an_anchor_day_outside_1_to_31_is_refused() -> None:
    with pytest.raises(AssertionError):
        BillingAnchor(day=0)
    with pytest.raises(AssertionError):
        BillingAnchor(day=32)


def test_the_next_period_starts_the_day_after_the_current_one_ends() -> None:
    anchor = BillingAnchor(day=30)
    assert next_period_start(anchor, Interval.month, dt.date(2025, 1, 30)) == dt.date(2025, 2, 28)
    assert next_period_start(anchor, Interval.month, dt.date(2025, 2, 28)) == dt.date(2025, 3, 30)
    assert next_period_start(anchor, Interval.month, dt.date(2025, 3, 29)) == dt.date(2025, 3, 30)
    yearly = BillingAnchor(month=7, day=15)
    assert next_period_start(yearly, Interval.year, dt.date(2025, 7, 14)) == dt.date(2025, 7, 15)
    assert next_period_start(yearly, Interval.year, dt.date(2025, 7, 15)) == dt.date(2026, 7, 15)


def _last_day_of_month(day: dt.date) -> int:
    month_next = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return (month_next - ONE_DAY).day


def _assert_periods_tile_the_range(
    anchor: BillingAnchor, interval: Interval, first: dt.date, last: dt.date
) -> list[ServicePeriod]:
    periods = periods_between(anchor, interval, first, last)
    assert periods[0].start <= first <= periods[0].end
    assert periods[-1].start <= last <= periods[-1].end
    for previous, current in itertools.pairwise(periods):
        assert current.start == previous.end + ONE_DAY, (anchor, previous, current)  # no gap
    # Walk every day: it lies in exactly one period, the one period_containing names.
    day = first
    while day <= last:
        containing = [p for p in periods if p.start <= day <= p.end]
        assert len(containing) == 1, (anchor, day, containing)
        assert period_containing(anchor, interval, day) == containing[0]
        day += ONE_DAY
    # Chaining next_period_start from the first period gives the same starts.
    starts = [periods[0].start]
    while len(starts) < len(periods):
        starts.append(next_period_start(anchor, interval, starts[-1]))
    assert starts == [p.start for p in periods]
    return periods


@pytest.mark.parametrize("year", [2023, 2024])  # a common year and a leap year
@pytest.mark.parametrize("anchor_day", range(1, 32))
def test_a_simulated_year_of_monthly_periods_has_no_gap_or_overlap(
    anchor_day: int, year: int
) -> None:
    anchor = BillingAnchor(day=anchor_day)
    first, last = dt.date(year, 1, 1), dt.date(year, 12, 31)
    periods = _assert_periods_tile_the_range(anchor, Interval.month, first, last)
    assert len(periods) == (12 if anchor_day == 1 else 13)
    for p in periods:
        assert p.start.day == min(anchor_day, _last_day_of_month(p.start))


@pytest.mark.parametrize("anchor_day", range(1, 32))
def test_yearly_periods_have_no_gap_or_overlap_across_a_leap_year(anchor_day: int) -> None:
    month = 2 if anchor_day <= 29 else 3  # February days up to the leap day; else March
    anchor = BillingAnchor(month=month, day=anchor_day)
    periods = _assert_periods_tile_the_range(
        anchor, Interval.year, dt.date(2023, 1, 1), dt.date(2029, 12, 31)
    )
    for p in periods:
        assert p.start.month == month
        assert p.start.day == min(anchor_day, _last_day_of_month(p.start))
        assert p.end.year == p.start.year + 1


def test_a_plan_change_mid_month_credits_unused_days_and_charges_the_rest() -> None:
    # 30-day period, change on day 11: 20 days remain, 2/3 of each price.
    proration = prorate_plan_change(period("2025-04-01", "2025-04-30"), dt.date(2025, 4, 11),
                                    price_old_minor=3_000, price_new_minor=6_000)  # fmt: skip
    assert proration.days_total == 30
    assert proration.days_remaining == 20
    assert proration.kept_minor == 1_000
    assert proration.credit_minor == 2_000
    assert proration.charge_minor == 4_000
    assert proration.net_minor == 2_000


def test_a_proration_that_does_not_divide_evenly_keeps_the_rounded_down_share() -> None:
    # 31 days, 10 used: the old price kept is ⌊1000·10/31⌋ = 322, so 678 is credited;
    # the new price for the 21 remaining days is 500 − ⌊500·10/31⌋ = 500 − 161 = 339.
    proration = prorate_plan_change(period("2025-01-01", "2025-01-31"), dt.date(2025, 1, 11),
                                    price_old_minor=1_000, price_new_minor=500)  # fmt: skip
    assert proration.kept_minor == 322
    assert proration.credit_minor == 678
    assert proration.charge_minor == 339
    assert proration.net_minor == -339


def test_a_change_on_the_first_day_credits_and_charges_whole_prices() -> None:
    proration = prorate_plan_change(period("2025-02-01", "2025-02-28"), dt.date(2025, 2, 1),
                                    price_old_minor=999, price_new_minor=1_999)  # fmt: skip
    assert (proration.kept_minor, proration.credit_minor, proration.charge_minor) == (0, 999, 1_999)


def test_a_change_on_the_last_day_charges_only_that_day() -> None:
    proration = prorate_plan_change(period("2025-02-01", "2025-02-28"), dt.date(2025, 2, 28),
                                    price_old_minor=2_800, price_new_minor=5_600)  # fmt: skip
    assert proration.days_remaining == 1
    assert (proration.credit_minor, proration.charge_minor) == (100, 200)


@pytest.mark.parametrize("price_old_minor", [0, 1, 7, 999, 1_000_003])
@pytest.mark.parametrize("price_new_minor", [0, 1, 13, 4_999, 2_000_017])
def test_proration_never_creates_or_loses_a_minor_unit(
    price_old_minor: int, price_new_minor: int
) -> None:
    billing = period("2024-01-31", "2024-02-28")
    day = billing.start
    while day <= billing.end:
        proration = prorate_plan_change(billing, day, price_old_minor, price_new_minor)
        assert proration.kept_minor + proration.credit_minor == price_old_minor
        # What the new plan would have earned on the used days, plus the charge, is its price.
        new_used_minor = price_new_minor - proration.charge_minor
        assert 0 <= new_used_minor <= price_new_minor
        # Each piece is the exact pro rata share, rounded at most one unit away.
        days_remaining = proration.days_remaining
        assert abs(proration.credit_minor * 29 - price_old_minor * days_remaining) < 29
        assert abs(proration.charge_minor * 29 - price_new_minor * days_remaining) < 29
        day += ONE_DAY


def test_a_change_outside_the_period_is_refused() -> None:
    with pytest.raises(AssertionError):
        prorate_plan_change(period("2025-02-01", "2025-02-28"), dt.date(2025, 3, 1), 100, 200)
