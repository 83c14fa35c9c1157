"""When a failed attempt may be tried again: classification, backoff, network caps.

The model (Temporal's retry policy as data, Kill Bill's payment/plugin failure split):
a decline is classified once, from its code, its Visa category and its Mastercard
advice code, as ``hard`` (never retried), ``authentication`` (the issuer wants the payer
present, Strong Customer Authentication: never retried without them, the payer is asked
to confirm on session), ``soft`` (retried on the policy's backoff,
within the card networks' reattempt caps), ``technical`` (the processor failed, not the
card: sent again quickly with the same processor idempotency key) or ``unknown`` (no
answer: resolved by status inquiry, never by a new charge). Everything here is a pure
function of its arguments; jitter comes from the ``random.Random`` the caller passes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from enum import StrEnum
from typing import Final

import msgspec

__all__ = [
    "AUTHENTICATION_CODES",
    "INQUIRY_DELAYS_MS",
    "NETWORK_CAPS",
    "ONE_OFF",
    "SUBSCRIPTION",
    "TECHNICAL",
    "DeclineClass",
    "Initiator",
    "Network",
    "NetworkCap",
    "Reattempt",
    "RetryPolicy",
    "RetrySchedule",
    "classify",
    "earliest_reattempt_ms",
    "inquiry_delay_ms",
    "is_stop_signal",
    "network_for_brand",
    "next_delay_ms",
    "policy_for",
]

SECOND_MS: Final = 1_000
MINUTE_MS: Final = 60 * SECOND_MS
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS


class DeclineClass(StrEnum):
    hard = "hard"
    # The issuer wants the cardholder to authenticate: only the payer can fix it.
    authentication = "authentication"
    soft = "soft"
    technical = "technical"
    unknown = "unknown"


class Network(StrEnum):
    visa = "visa"
    mastercard = "mastercard"
    other = "other"


class Initiator(StrEnum):
    """Visa counts reattempts separately for customer- and merchant-initiated payments."""

    customer = "customer"
    merchant = "merchant"


class RetrySchedule(StrEnum):
    one_off = "one_off"
    subscription = "subscription"


# Decline codes that say the issuer will never approve (Visa category 1 and the
# processors' names for it). Retrying them costs network fees and never succeeds.
HARD_CODES: Final[frozenset[str]] = frozenset({
    "do_not_honor", "card_declined", "lost_card", "stolen_card", "pickup_card",
    "invalid_number", "incorrect_number", "invalid_account", "expired_card",
    "restricted_card", "revocation_of_authorization", "stop_payment_order",
    "transaction_not_allowed", "no_such_issuer", "account_closed", "fraudulent",
    "invalid_cvc", "incorrect_cvc",
    # The payer failed or abandoned a 3-D Secure challenge (Stripe's name): the method
    # did not work for them; they may choose it, or another, again.
    "payment_intent_authentication_failure",
    "04", "07", "12", "14", "15", "41", "43", "46", "54", "57", "R0", "R1", "R3",
})  # fmt: skip

# Visa categories 2-3 and their processors' names: the issuer cannot approve now.
SOFT_CODES: Final[frozenset[str]] = frozenset({
    "insufficient_funds", "issuer_unavailable", "try_again_later",
    "withdrawal_count_limit_exceeded", "card_velocity_exceeded", "reenter_transaction",
    "approve_with_id",
    "19", "51", "59", "61", "65", "75", "86", "91", "96", "N3", "N4",
})  # fmt: skip

# Strong Customer Authentication: the issuer approves only with the payer present, so a
# retry made without them would be declined again. Stripe's code and the networks' response
# code 1A ("additional customer authentication required"); docs/api.md "3-D Secure".
AUTHENTICATION_CODES: Final[frozenset[str]] = frozenset({"authentication_required", "1A"})

# The processor failed, not the card: the request is sent again as it was.
TECHNICAL_CODES: Final[frozenset[str]] = frozenset({
    "processing_error", "processor_unavailable", "rate_limited", "api_error",
})

# Mastercard merchant advice codes that forbid any reattempt.
ADVICE_STOP: Final[frozenset[str]] = frozenset({"03", "21"})
# Mastercard advice codes that name the wait before a reattempt (02: 72 h, Solidgate).
ADVICE_WAIT_MS: Final[dict[str, int]] = {
    "02": 72 * HOUR_MS, "24": HOUR_MS, "25": DAY_MS, "26": 2 * DAY_MS,
    "27": 4 * DAY_MS, "28": 6 * DAY_MS, "29": 8 * DAY_MS, "30": 10 * DAY_MS,
}  # fmt: skip


def is_stop_signal(*, visa_category: int | None, advice_code: str | None) -> bool:
    """The network says never to try this card again, whatever else the answer says."""
    return advice_code in ADVICE_STOP or visa_category == 1


def classify(
    decline_code: str | None,
    *,
    visa_category: int | None = None,
    advice_code: str | None = None,
) -> DeclineClass:
    """Classify a failed attempt. Stop signals win over everything that would retry."""
    if is_stop_signal(visa_category=visa_category, advice_code=advice_code):
        return DeclineClass.hard
    if decline_code in TECHNICAL_CODES:
        return DeclineClass.technical
    if decline_code in HARD_CODES:
        return DeclineClass.hard
    if decline_code in AUTHENTICATION_CODES:
        return DeclineClass.authentication
    if decline_code in SOFT_CODES or visa_category in (2, 3):
        return DeclineClass.soft
    # A code we do not know is treated as hard: a wrong guess of "soft" costs the
    # merchant network fees and the payer repeated declines; a wrong "hard" only asks
    # the payer for another method.
    return DeclineClass.hard


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Backoff as data. ``attempts_max`` counts every attempt, the first included."""

    interval_ms_initial: int
    backoff_coefficient: int
    interval_ms_max: int
    attempts_max: int
    window_ms: int
    # Jitter spreads retries of a whole billing run over time; per mille of the delay.
    jitter_permille: int = 100


# docs/api.md: 4 attempts over 7 days for one-off payments (6 h, 18 h, 54 h ≈ 3.2 days).
ONE_OFF: Final = RetryPolicy(
    interval_ms_initial=6 * HOUR_MS, backoff_coefficient=3, interval_ms_max=3 * DAY_MS,
    attempts_max=4, window_ms=7 * DAY_MS,
)
# docs/api.md: 8 attempts over 14 days for subscriptions (12 h, 1 d, then every 2 d ≈ 11.5 d).
SUBSCRIPTION: Final = RetryPolicy(
    interval_ms_initial=12 * HOUR_MS, backoff_coefficient=2, interval_ms_max=2 * DAY_MS,
    attempts_max=8, window_ms=14 * DAY_MS,
)
# Technical errors: quick, few, and within the hour (30 s, 2 min, 8 min).
TECHNICAL: Final = RetryPolicy(
    interval_ms_initial=30 * SECOND_MS, backoff_coefficient=4, interval_ms_max=10 * MINUTE_MS,
    attempts_max=4, window_ms=HOUR_MS,
)


def policy_for(schedule: RetrySchedule) -> RetryPolicy:
    return SUBSCRIPTION if schedule is RetrySchedule.subscription else ONE_OFF


def next_delay_ms(policy: RetryPolicy, attempt: int, rng: random.Random) -> int | None:
    """The wait after attempt number ``attempt`` (1-based) failed, or None if it was the last."""
    assert attempt >= 1
    if attempt >= policy.attempts_max:
        return None
    growth: int = policy.backoff_coefficient ** (attempt - 1)
    base_ms = min(policy.interval_ms_initial * growth, policy.interval_ms_max)
    spread_ms = base_ms * policy.jitter_permille // 1000
    delay_ms = base_ms + rng.randint(-spread_ms, spread_ms)
    assert delay_ms > 0
    return delay_ms


class NetworkCap(msgspec.Struct, frozen=True, kw_only=True):
    window_ms: int
    reattempts_max: int
    per_initiator: bool = False


# Card-network reattempt caps per card (docs/references.md). Visa since May 2025: 20 per 30
# days, counted separately for customer- and merchant-initiated payments. Mastercard:
# 10 per 24 h and 35 per 30 days. Other networks get the strictest of both.
NETWORK_CAPS: Final[dict[Network, tuple[NetworkCap, ...]]] = {
    Network.visa: (NetworkCap(window_ms=30 * DAY_MS, reattempts_max=20, per_initiator=True),),
    Network.mastercard: (
        NetworkCap(window_ms=DAY_MS, reattempts_max=10),
        NetworkCap(window_ms=30 * DAY_MS, reattempts_max=35),
    ),
    Network.other: (
        NetworkCap(window_ms=DAY_MS, reattempts_max=10),
        NetworkCap(window_ms=30 * DAY_MS, reattempts_max=20),
    ),
}


def network_for_brand(brand: str) -> Network:
    brand = brand.lower()
    if brand == "visa":
        return Network.visa
    if brand in ("mastercard", "mc"):
        return Network.mastercard
    return Network.other


class Reattempt(msgspec.Struct, frozen=True, array_like=True):
    at_ms: int
    initiator: Initiator


def earliest_reattempt_ms(
    network: Network,
    initiator: Initiator,
    history: Sequence[Reattempt],
    not_before_ms: int,
) -> int:
    """The first instant at or after ``not_before_ms`` when one more reattempt on this card
    stays within every cap of its network, given the card's past reattempts."""
    at_ms = not_before_ms
    # Each pass moves ``at_ms`` past the oldest reattempt that fills a window; the loop
    # ends because at_ms only grows and history is finite.
    while True:
        moved = False
        for cap in NETWORK_CAPS[network]:
            relevant = sorted(
                r.at_ms for r in history
                if (not cap.per_initiator or r.initiator is initiator)
                # Inclusive at both ends: whichever way a network counts its window's
                # edge, we stay within the cap.
                and at_ms - cap.window_ms <= r.at_ms <= at_ms
            )  # fmt: skip
            if len(relevant) >= cap.reattempts_max:
                # The window frees up just after the oldest counted reattempt leaves it.
                oldest_to_leave = relevant[len(relevant) - cap.reattempts_max]
                at_ms = oldest_to_leave + cap.window_ms + 1
                moved = True
        if not moved:
            return at_ms


# Unknown outcomes are asked about at 1 min, 5 min, 1 h, then daily (docs/design.md 6).
INQUIRY_DELAYS_MS: Final[tuple[int, ...]] = (MINUTE_MS, 5 * MINUTE_MS, HOUR_MS)


def inquiry_delay_ms(inquiries_made: int) -> int:
    assert inquiries_made >= 0
    if inquiries_made < len(INQUIRY_DELAYS_MS):
        return INQUIRY_DELAYS_MS[inquiries_made]
    return DAY_MS
