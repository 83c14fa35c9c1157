"""Ratable recognition splits every amount exactly over its days and accuracy is exactly 1
only when the ledger matches: checked with written-out examples and with Hypothesis
properties on generated amounts, periods and dates (derandomized, no example database).
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payportal.engine import ServicePeriod
from payportal.engine.revenue import (
    RevenueInvoice,
    recognition_accuracy,
    recognition_schedule,
    recognized_through,
    revenue_by_month,
)

ONE_DAY = dt.timedelta(days=1)

# Derandomized: the same examples on every run, and no example database to drift.
PROPERTIES = settings(
    max_examples=200, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip

# Up to a trillion minor units over up to two years and a bit: far beyond any invoice.
amounts = st.integers(min_value=0, max_value=10**12)
signed_amounts = st.integers(min_value=-(10**12), max_value=10**12)
dates = st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2099, 12, 31))


@st.composite
def periods(draw: st.DrawFn) -> ServicePeriod:
    start = draw(dates)
    days = draw(st.integers(min_value=1, max_value=800))
    return ServicePeriod(start=start, end=start + dt.timedelta(days=days - 1))


@st.composite
def invoices(draw: st.DrawFn) -> RevenueInvoice:
    invoice_date = draw(st.dates(min_value=dt.date(2024, 1, 1), max_value=dt.date(2025, 12, 31)))
    service_period = draw(st.none() | periods())
    if service_period is not None:
        # Billed in advance or in arrears: the period starts near the invoice date.
        shift = dt.timedelta(days=draw(st.integers(min_value=-40, max_value=40)))
        days = period_length(service_period)
        start = invoice_date + shift
        service_period = ServicePeriod(start=start, end=start + dt.timedelta(days=days - 1))
    return RevenueInvoice(
        invoice_id=f"in_{draw(st.integers(min_value=0, max_value=10**6))}",
        amount_minor=draw(signed_amounts),
        invoice_date=invoice_date,
        service_period=service_period,
    )


def period_length(period: ServicePeriod) -> int:
    return (period.end - period.start).days + 1


def period(start: str, end: str) -> ServicePeriod:
    return ServicePeriod(start=dt.date.fromisoformat(start), end=dt.date.fromisoformat(end))


# -- examples ------------------------------------------------------------------------------


def test_extra_minor_units_go_to_the_days_where_the_running_total_crosses_a_unit() -> None:
    schedule = recognition_schedule(10, period("2025-01-01", "2025-01-04"))
    assert schedule == [
        (dt.date(2025, 1, 1), 2), (dt.date(2025, 1, 2), 3),
        (dt.date(2025, 1, 3), 2), (dt.date(2025, 1, 4), 3),
    ]  # fmt: skip
    assert [part for _, part in recognition_schedule(100, period("2025-01-01", "2025-01-03"))] == [
        33, 33, 34
    ]  # fmt: skip


def test_recognition_is_zero_before_the_period_and_whole_from_its_end() -> None:
    billing = period("2025-02-01", "2025-02-28")
    assert recognized_through(2_800, billing, dt.date(2025, 1, 31)) == 0
    assert recognized_through(2_800, billing, dt.date(2025, 2, 1)) == 100
    assert recognized_through(2_800, billing, dt.date(2025, 2, 14)) == 1_400
    assert recognized_through(2_800, billing, dt.date(2025, 2, 28)) == 2_800
    assert recognized_through(2_800, billing, dt.date(2030, 1, 1)) == 2_800


def test_a_one_off_purchase_is_recognized_in_full_on_its_invoice_date() -> None:
    purchase = RevenueInvoice(invoice_id="in_1", amount_minor=5_000,
                              invoice_date=dt.date(2025, 3, 15))  # fmt: skip
    assert revenue_by_month([purchase], dt.date(2025, 3, 14)) == {}
    assert revenue_by_month([purchase], dt.date(2025, 3, 15)) == {"2025-03": (5_000, 0)}


def test_a_monthly_report_splits_a_period_across_months_into_recognized_and_deferred() -> None:
    # 3,100 over 31 days (100 a day): 16 Jan – 15 Feb, invoiced in advance on 16 Jan.
    subscription = RevenueInvoice(invoice_id="in_1", amount_minor=3_100,
                                  invoice_date=dt.date(2025, 1, 16),
                                  service_period=period("2025-01-16", "2025-02-15"))  # fmt: skip
    assert revenue_by_month([subscription], dt.date(2025, 1, 15)) == {}
    assert revenue_by_month([subscription], dt.date(2025, 1, 20)) == {
        "2025-01": (500, 1_100),
        "2025-02": (0, 1_500),
    }
    assert revenue_by_month([subscription], dt.date(2025, 2, 10)) == {
        "2025-01": (1_600, 0),
        "2025-02": (1_000, 500),
    }
    assert revenue_by_month([subscription], dt.date(2025, 3, 1)) == {
        "2025-01": (1_600, 0),
        "2025-02": (1_500, 0),
    }


def test_accuracy_is_one_minus_the_relative_error_as_an_exact_fraction() -> None:
    accuracy = recognition_accuracy(
        {"2025-01": 1_000, "2025-02": 997, "2025-03": 0, "2025-05": 10},
        {"2025-01": 1_000, "2025-02": 1_000, "2025-03": 0, "2025-04": 50},
    )
    assert accuracy == {
        "2025-01": Fraction(1),
        "2025-02": Fraction(997, 1_000),
        "2025-03": Fraction(1),
        "2025-04": Fraction(0),  # the ledger recognized nothing of 50
        "2025-05": Fraction(0),  # the ledger recognized 10 where nothing was due
    }
    assert all(isinstance(value, Fraction) for value in accuracy.values())


def test_accuracy_stays_at_zero_when_the_error_exceeds_the_amount() -> None:
    assert recognition_accuracy({"2025-01": 3_000}, {"2025-01": 1_000}) == {"2025-01": Fraction(0)}


# -- properties ------------------------------------------------------------------------------


@PROPERTIES
@given(amount_minor=amounts, service_period=periods())
def test_the_schedule_covers_every_day_and_sums_exactly_to_the_amount(
    amount_minor: int, service_period: ServicePeriod
) -> None:
    schedule = recognition_schedule(amount_minor, service_period)
    days = period_length(service_period)
    assert [day for day, _ in schedule] == [
        service_period.start + dt.timedelta(days=i) for i in range(days)
    ]
    assert sum(part for _, part in schedule) == amount_minor
    share_minor = amount_minor // days
    for _, part in schedule:
        assert part >= 0
        assert part in (share_minor, share_minor + 1)
    assert sum(1 for _, part in schedule if part == share_minor + 1) == amount_minor % days


@PROPERTIES
@given(amount_minor=amounts, service_period=periods(), offsets=st.lists(
    st.integers(min_value=-10, max_value=820), min_size=2, max_size=6))  # fmt: skip
def test_recognized_through_is_monotone_and_reaches_the_amount_at_the_period_end(
    amount_minor: int, service_period: ServicePeriod, offsets: list[int]
) -> None:
    as_of_dates = sorted(service_period.start + dt.timedelta(days=o) for o in offsets)
    through = [recognized_through(amount_minor, service_period, d) for d in as_of_dates]
    assert through == sorted(through)
    assert recognized_through(amount_minor, service_period, service_period.end) == amount_minor
    assert recognized_through(amount_minor, service_period, service_period.start - ONE_DAY) == 0
    # It is the schedule's running total, and never ahead of the exact pro rata share.
    schedule = recognition_schedule(amount_minor, service_period)
    days = period_length(service_period)
    for as_of, value in zip(as_of_dates, through, strict=True):
        assert value == sum(part for day, part in schedule if day <= as_of)
        elapsed = min(max((as_of - service_period.start).days + 1, 0), days)
        assert value * days <= amount_minor * elapsed < (value + 1) * days


@PROPERTIES
@given(amount_minor=amounts, service_period=periods(), as_of=dates)
def test_a_refund_as_a_negative_amount_reverses_exactly_day_by_day(
    amount_minor: int, service_period: ServicePeriod, as_of: dt.date
) -> None:
    schedule = recognition_schedule(amount_minor, service_period)
    reversal = recognition_schedule(-amount_minor, service_period)
    assert reversal == [(day, -part) for day, part in schedule]
    assert (
        recognized_through(amount_minor, service_period, as_of)
        + recognized_through(-amount_minor, service_period, as_of)
        == 0
    )


@PROPERTIES
@given(issued=st.lists(invoices(), max_size=12), as_of=dates)
def test_an_invoice_and_its_full_refund_leave_every_month_at_zero(
    issued: list[RevenueInvoice], as_of: dt.date
) -> None:
    refunds = [
        RevenueInvoice(invoice_id=f"{i.invoice_id}_refund", amount_minor=-i.amount_minor,
                       invoice_date=i.invoice_date, service_period=i.service_period)
        for i in issued
    ]  # fmt: skip
    report = revenue_by_month([*issued, *refunds], as_of)
    assert all(value == (0, 0) for value in report.values())


@PROPERTIES
@given(issued=st.lists(invoices(), max_size=12),
       as_of=st.dates(min_value=dt.date(2023, 11, 1), max_value=dt.date(2028, 6, 30)))  # fmt: skip
def test_the_monthly_report_matches_an_independent_day_by_day_recomputation(
    issued: list[RevenueInvoice], as_of: dt.date
) -> None:
    recognized_by_month: dict[str, int] = {}
    deferred_by_month: dict[str, int] = {}
    for invoice in issued:
        if invoice.invoice_date > as_of:
            continue
        days = (
            [(invoice.invoice_date, invoice.amount_minor)]
            if invoice.service_period is None
            else recognition_schedule(invoice.amount_minor, invoice.service_period)
        )
        for day, part in days:
            key = day.strftime("%Y-%m")
            target = recognized_by_month if day <= as_of else deferred_by_month
            target[key] = target.get(key, 0) + part
            other = deferred_by_month if day <= as_of else recognized_by_month
            other.setdefault(key, 0)
    report = revenue_by_month(issued, as_of)
    assert report == {
        key: (recognized_by_month[key], deferred_by_month[key])
        for key in sorted(recognized_by_month)
    }
    assert list(report) == sorted(report)


month_keys = st.sampled_from([f"2025-{m:02d}" for m in range(1, 13)])
recognized_maps = st.dictionaries(month_keys, signed_amounts, max_size=12)


@PROPERTIES
@given(recomputed=recognized_maps)
def test_accuracy_is_exactly_one_for_identical_figures(recomputed: dict[str, int]) -> None:
    accuracy = recognition_accuracy(dict(recomputed), recomputed)
    assert set(accuracy) == set(recomputed)
    assert all(value == 1 for value in accuracy.values())


@PROPERTIES
@given(recomputed=recognized_maps, differing=month_keys,
       error_minor=st.integers(min_value=-(10**12), max_value=10**12).filter(bool))  # fmt: skip
def test_accuracy_is_below_one_for_exactly_the_periods_that_differ(
    recomputed: dict[str, int], differing: str, error_minor: int
) -> None:
    ledger = dict(recomputed)
    ledger[differing] = recomputed.get(differing, 0) + error_minor
    accuracy = recognition_accuracy(ledger, recomputed)
    assert 0 <= accuracy[differing] < 1
    for key, value in accuracy.items():
        if key != differing:
            assert value == 1


@pytest.mark.parametrize("amount_minor", [0, 1, 29, 30, 31, 10**12 + 7])
def test_every_day_of_february_in_a_leap_year_gets_its_share(amount_minor: int) -> None:
    schedule = recognition_schedule(amount_minor, period("2024-02-01", "2024-02-29"))
    assert len(schedule) == 29
    assert sum(part for _, part in schedule) == amount_minor
