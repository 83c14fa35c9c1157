"""Which subscription periods are due on a date, what a stub costs, which local date it is,
and the subscription status table: checked row by row and against a day-by-day model."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from zoneinfo import ZoneInfo

import pytest

from payportal.billing._model import (
    TRANSITIONS,
    SubscriptionEvent,
    SubscriptionStatus,
    subscription_next,
)
from payportal.billing._schedule import (
    anchor_of,
    due_periods,
    local_date,
    period_amount_minor,
    subscription_period,
)
from payportal.engine.billing_schedule import Interval
from payportal.engine.messages import ServicePeriod

D = dt.date
MONTH = Interval.month
YEAR = Interval.year


def _is_anchor_day(day: dt.date, interval: Interval, anchor_day: int, anchor_month: int) -> bool:
    """The model: a period starts on the anchor day, or the month's last day if shorter."""
    following = day + dt.timedelta(days=1)
    last_of_month = following.month != day.month
    on_anchor = day.day == anchor_day or (last_of_month and day.day < anchor_day)
    return on_anchor and (interval is MONTH or day.month == anchor_month)


def test_nothing_is_due_before_the_next_period_starts() -> None:
    anchor = anchor_of(MONTH, 15, 1)
    assert due_periods(anchor, MONTH, started_on=D(2028, 1, 15),
                       next_period_start=D(2028, 2, 15), today=D(2028, 2, 14)) == []  # fmt: skip


def test_a_first_period_off_the_anchor_is_a_stub_to_the_day_before_the_anchor() -> None:
    anchor = anchor_of(MONTH, 1, 1)
    periods = due_periods(anchor, MONTH, started_on=D(2028, 1, 20),
                          next_period_start=D(2028, 1, 20), today=D(2028, 1, 20))  # fmt: skip
    assert periods == [ServicePeriod(start=D(2028, 1, 20), end=D(2028, 1, 31))]


def test_a_late_run_claims_every_missed_period_in_order() -> None:
    anchor = anchor_of(MONTH, 31, 1)
    periods = due_periods(anchor, MONTH, started_on=D(2028, 1, 31),
                          next_period_start=D(2028, 1, 31), today=D(2028, 4, 30))  # fmt: skip
    assert [p.start for p in periods] == [D(2028, 1, 31), D(2028, 2, 29), D(2028, 3, 31),
                                          D(2028, 4, 30)]  # fmt: skip
    assert periods[0].end == D(2028, 2, 28)


def test_no_period_starting_after_the_end_date_is_due() -> None:
    anchor = anchor_of(MONTH, 10, 1)
    periods = due_periods(anchor, MONTH, started_on=D(2028, 1, 10),
                          next_period_start=D(2028, 2, 10), today=D(2028, 6, 1),
                          ended_on=D(2028, 3, 9))  # fmt: skip
    assert [p.start for p in periods] == [D(2028, 2, 10)]


def test_a_yearly_leap_day_anchor_bills_on_feb_28_in_common_years() -> None:
    anchor = anchor_of(YEAR, 29, 2)
    periods = due_periods(anchor, YEAR, started_on=D(2028, 2, 29),
                          next_period_start=D(2028, 2, 29), today=D(2030, 3, 1))  # fmt: skip
    assert [p.start for p in periods] == [D(2028, 2, 29), D(2029, 2, 28), D(2030, 2, 28)]


@pytest.mark.parametrize("seed", range(30))
def test_due_periods_match_a_day_by_day_model(seed: int) -> None:
    rng = random.Random(seed)
    interval = rng.choice([MONTH, YEAR])
    started_on = D(2027, 1, 1) + dt.timedelta(days=rng.randrange(730))
    anchor_day = rng.choice([started_on.day, 1, 28, 29, 30, 31, rng.randint(1, 31)])
    anchor_month = started_on.month
    if interval is YEAR:
        anchor_day = min(anchor_day, (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[
            anchor_month - 1])  # fmt: skip
    anchor = anchor_of(interval, anchor_day, anchor_month)
    today = started_on + dt.timedelta(days=rng.randrange(800))
    periods = due_periods(anchor, interval, started_on=started_on, next_period_start=started_on,
                          today=today)  # fmt: skip

    expected_starts = [started_on] + [
        started_on + dt.timedelta(days=n) for n in range(1, (today - started_on).days + 1)
        if _is_anchor_day(started_on + dt.timedelta(days=n), interval, anchor_day, anchor_month)
    ]  # fmt: skip
    assert [p.start for p in periods] == expected_starts, f"reproduce with seed={seed}"
    for previous, current in itertools.pairwise(periods):
        assert previous.end + dt.timedelta(days=1) == current.start
    for period in periods:
        assert subscription_period(anchor, interval, started_on, period.start) == period


def test_a_stub_costs_its_days_share_and_a_whole_period_the_price() -> None:
    anchor = anchor_of(MONTH, 1, 1)
    # January 2028 has 31 days; a stub from the 22nd has 10 of them.
    stub = ServicePeriod(start=D(2028, 1, 22), end=D(2028, 1, 31))
    whole = ServicePeriod(start=D(2028, 2, 1), end=D(2028, 2, 29))
    assert period_amount_minor(anchor, MONTH, stub, 3_100) == 1_000
    assert period_amount_minor(anchor, MONTH, whole, 3_100) == 3_100


@pytest.mark.parametrize(
    ("instant", "zone", "date"),
    [
        # 04:30 UTC is still the evening before in New York (EST, UTC-5).
        ("2028-03-01T04:30:00+00:00", "America/New_York", D(2028, 2, 29)),
        ("2028-03-01T05:30:00+00:00", "America/New_York", D(2028, 3, 1)),
        # The night the clocks go forward (12 March 2028, EDT = UTC-4 from 02:00).
        ("2028-03-12T06:59:00+00:00", "America/New_York", D(2028, 3, 12)),
        ("2028-03-13T03:59:00+00:00", "America/New_York", D(2028, 3, 12)),
        ("2028-03-13T04:00:00+00:00", "America/New_York", D(2028, 3, 13)),
        # The night they go back (5 November 2028): 01:30 happens twice, one date.
        ("2028-11-05T05:30:00+00:00", "America/New_York", D(2028, 11, 5)),
        ("2028-11-05T06:30:00+00:00", "America/New_York", D(2028, 11, 5)),
        ("2028-11-06T04:59:00+00:00", "America/New_York", D(2028, 11, 5)),
        ("2028-11-06T05:00:00+00:00", "America/New_York", D(2028, 11, 6)),
        ("2028-01-01T00:00:00+00:00", "UTC", D(2028, 1, 1)),
    ],
)
def test_today_is_the_date_in_the_business_time_zone(
    instant: str, zone: str, date: dt.date
) -> None:
    now_ms = int(dt.datetime.fromisoformat(instant).timestamp() * 1000)
    assert local_date(now_ms, ZoneInfo(zone)) == date


S = SubscriptionStatus
E = SubscriptionEvent


@pytest.mark.parametrize(
    ("status", "event", "after"),
    [
        (S.active, E.payment_failed, S.past_due),
        (S.active, E.payment_succeeded, S.active),
        (S.active, E.canceled, S.canceled),
        (S.past_due, E.payment_failed, S.past_due),
        (S.past_due, E.payment_succeeded, S.active),
        (S.past_due, E.canceled, S.canceled),
        (S.canceled, E.payment_failed, S.canceled),
        (S.canceled, E.payment_succeeded, S.canceled),
        (S.canceled, E.canceled, None),
    ],
)
def test_subscription_status_transitions(
    status: SubscriptionStatus, event: SubscriptionEvent, after: SubscriptionStatus | None
) -> None:
    assert subscription_next(status, event) is after


def test_every_status_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(SubscriptionStatus)
