"""The sandbox's cards: number checks, brands and the test-card table.

Everything about what a test card does lives in ``TEST_CARDS``; a Luhn-valid number
that is not in the table behaves like 4242…: it succeeds. Decline codes follow
Stripe's names. Visa declines carry the Visa decline category and Mastercard declines
the merchant advice code, as a real processor returns them; the categories follow the
Visa table in the project's references (51 insufficient funds → 2, 54 expired → 3,
96 system malfunction → 2). ``do_not_honor`` is not in that table; it is given
category 1 because the public contract lists it with the hard declines that are never
retried, which is what category 1 means.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec
from stdnum import luhn

__all__ = [
    "TEST_CARDS",
    "Behaviour",
    "CardBehaviour",
    "behaviour_of",
    "brand_of",
    "cvc_length_for",
    "normalize_number",
    "number_is_valid",
]


class Behaviour(StrEnum):
    succeed = "succeed"
    decline = "decline"
    # The processor failed before deciding: nothing is captured and the key stays free.
    processing_error = "processing_error"
    # Captured, then the HTTP response is held past the client's timeout.
    capture_then_timeout = "capture_then_timeout"
    # The first charge on a token succeeds (the card is "attached"), later ones decline.
    succeed_first_then_decline = "succeed_first_then_decline"
    # 3-D Secure (Stripe's test cards, same numbers): every charge needs the payer's
    # authentication; off session that is the decline ``authentication_required``.
    authenticate_always = "authenticate_always"
    # On session it needs authentication; off session only until the payer authenticated
    # once on this token (the card was "set up for later use").
    authenticate_unless_set_up = "authenticate_unless_set_up"
    # Authentication succeeds, then the issuer declines (the decline code below).
    authenticate_then_decline = "authenticate_then_decline"


class CardBehaviour(msgspec.Struct, frozen=True, kw_only=True):
    behaviour: Behaviour
    funding: str = "credit"
    # For declines: the error code, Stripe's decline code and the network's fields.
    error_code: str = "card_declined"
    decline_code: str | None = None
    visa_category: int | None = None
    advice_code: str | None = None


_SUCCEED: Final = CardBehaviour(behaviour=Behaviour.succeed)

# The public contract's test cards, then a few sandbox additions for Mastercard advice
# codes, debit and Amex (marked). Keys are digits only.
TEST_CARDS: Final[dict[str, CardBehaviour]] = {
    "4242424242424242": _SUCCEED,
    "5555555555554444": _SUCCEED,
    "4000056655665556": CardBehaviour(behaviour=Behaviour.succeed, funding="debit"),
    "4000000000000002": CardBehaviour(
        behaviour=Behaviour.decline, decline_code="do_not_honor", visa_category=1
    ),
    "4000000000000069": CardBehaviour(
        behaviour=Behaviour.decline, error_code="expired_card", decline_code="expired_card",
        visa_category=3,
    ),
    "4000000000009995": CardBehaviour(
        behaviour=Behaviour.decline, decline_code="insufficient_funds", visa_category=2
    ),
    "4000000000000119": CardBehaviour(
        behaviour=Behaviour.processing_error, error_code="processing_error",
        decline_code="processing_error", visa_category=2,
    ),
    "4000000000003063": CardBehaviour(behaviour=Behaviour.capture_then_timeout),
    "4000000000000341": CardBehaviour(
        behaviour=Behaviour.succeed_first_then_decline, decline_code="generic_decline",
        visa_category=4,
    ),
    # Sandbox additions.
    "5105105105105100": CardBehaviour(  # Mastercard soft decline, advice 24: wait 1 h
        behaviour=Behaviour.decline, decline_code="insufficient_funds", advice_code="24"
    ),
    "5100000000000016": CardBehaviour(  # Mastercard, advice 03: do not try again
        behaviour=Behaviour.decline, decline_code="do_not_honor", advice_code="03"
    ),
    "5200828282828210": CardBehaviour(behaviour=Behaviour.succeed, funding="debit"),
    # 3-D Secure, with Stripe's numbers (docs/api.md "3-D Secure").
    "4000002760003184": CardBehaviour(behaviour=Behaviour.authenticate_always),
    "4000002500003155": CardBehaviour(behaviour=Behaviour.authenticate_unless_set_up),
    "4000008260003178": CardBehaviour(
        behaviour=Behaviour.authenticate_then_decline, decline_code="insufficient_funds",
        visa_category=2,
    ),
    "378282246310005": _SUCCEED,  # American Express
}  # fmt: skip

# Card numbers are 12 to 19 digits (ISO/IEC 7812).
NUMBER_LENGTH_MIN: Final = 12
NUMBER_LENGTH_MAX: Final = 19


def normalize_number(raw: str) -> str | None:
    """Digits only, or None when ``raw`` cannot be a card number. Spaces and dashes, as
    people type them, are dropped; the Luhn check is the caller's."""
    digits = raw.replace(" ", "").replace("-", "")
    if not digits.isdigit() or not digits.isascii():
        return None
    if not NUMBER_LENGTH_MIN <= len(digits) <= NUMBER_LENGTH_MAX:
        return None
    return digits


def number_is_valid(digits: str) -> bool:
    return luhn.is_valid(digits)


def brand_of(digits: str) -> str:
    """The card network from the number's prefix (IIN ranges), in Stripe's spelling."""
    if digits.startswith("4"):
        return "visa"
    prefix2, prefix4 = int(digits[:2]), int(digits[:4])
    if 51 <= prefix2 <= 55 or 2221 <= prefix4 <= 2720:
        return "mastercard"
    if prefix2 in (34, 37):
        return "amex"
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649:
        return "discover"
    return "unknown"


def cvc_length_for(brand: str) -> int:
    return 4 if brand == "amex" else 3


def behaviour_of(digits: str) -> CardBehaviour:
    return TEST_CARDS.get(digits, _SUCCEED)
