"""Decline classification and backoff examples from the API contract's retry rules."""

from __future__ import annotations

import random

import pytest

from payportal.engine import DeclineClass, OutcomeKind, PaymentStatus, classify, next_delay_ms
from payportal.engine.retry_policy import (
    DAY_MS,
    HOUR_MS,
    ONE_OFF,
    Initiator,
    Network,
    Reattempt,
    earliest_reattempt_ms,
    inquiry_delay_ms,
)

from .engine_builders import Ledgerbook


@pytest.mark.parametrize(
    ("decline_code", "visa_category", "advice_code", "expected"),
    [
        ("do_not_honor", None, None, DeclineClass.hard),
        ("expired_card", None, None, DeclineClass.hard),
        ("lost_card", None, None, DeclineClass.hard),
        ("insufficient_funds", None, None, DeclineClass.soft),
        ("try_again_later", None, None, DeclineClass.soft),
        ("processing_error", None, None, DeclineClass.technical),
        ("insufficient_funds", 1, None, DeclineClass.hard),  # Visa category 1 wins
        ("insufficient_funds", None, "03", DeclineClass.hard),  # Mastercard: do not try again
        ("insufficient_funds", None, "21", DeclineClass.hard),  # Mastercard: stop recurring
        ("something_new", 2, None, DeclineClass.soft),
        ("something_new", None, None, DeclineClass.hard),  # unknown codes are never retried
    ],
)
def test_declines_are_classified_with_stop_signals_first(
    decline_code: str, visa_category: int | None, advice_code: str | None, expected: DeclineClass
) -> None:
    assert classify(decline_code, visa_category=visa_category, advice_code=advice_code) is expected


def test_backoff_grows_within_jitter_and_stops_at_the_attempt_cap() -> None:
    rng = random.Random(7)
    first = next_delay_ms(ONE_OFF, 1, rng)
    second = next_delay_ms(ONE_OFF, 2, rng)
    assert first is not None
    assert second is not None
    assert 6 * HOUR_MS * 0.9 <= first <= 6 * HOUR_MS * 1.1
    assert 18 * HOUR_MS * 0.9 <= second <= 18 * HOUR_MS * 1.1
    assert next_delay_ms(ONE_OFF, ONE_OFF.attempts_max, rng) is None


def test_mastercard_allows_ten_reattempts_a_day_then_waits_for_the_window() -> None:
    start_ms = 10 * DAY_MS
    history = [Reattempt(start_ms + i * 60_000, Initiator.customer) for i in range(10)]
    now_ms = start_ms + 3 * HOUR_MS
    allowed_ms = earliest_reattempt_ms(Network.mastercard, Initiator.customer, history, now_ms)
    assert allowed_ms == start_ms + DAY_MS + 1  # just after the oldest leaves the window


def test_visa_counts_customer_and_merchant_reattempts_separately() -> None:
    start_ms = 40 * DAY_MS
    history = [Reattempt(start_ms + i * HOUR_MS, Initiator.merchant) for i in range(20)]
    now_ms = start_ms + 21 * HOUR_MS
    assert earliest_reattempt_ms(Network.visa, Initiator.customer, history, now_ms) == now_ms
    merchant_ms = earliest_reattempt_ms(Network.visa, Initiator.merchant, history, now_ms)
    assert merchant_ms == start_ms + 30 * DAY_MS + 1


def test_unknown_outcomes_are_asked_about_on_a_widening_schedule() -> None:
    assert [inquiry_delay_ms(n) for n in range(5)] == [
        60_000,
        300_000,
        HOUR_MS,
        DAY_MS,
        DAY_MS,
    ]


def test_an_errored_answer_carrying_a_stop_signal_is_a_hard_decline() -> None:
    book = Ledgerbook()
    payment_id = book.create_payment(1_000).outcome.payment_id
    assert payment_id is not None
    book.outcome(payment_id, OutcomeKind.errored, decline_code="processing_error", advice_code="03")
    assert book.account.payments[payment_id].status is PaymentStatus.requires_payment_method
