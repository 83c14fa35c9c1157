"""Money: integer minor units with an ISO 4217 currency.

The model: an amount is an ``int`` count of the currency's minor unit (cents for USD,
yen for JPY). Floats never appear. Currencies are upper-case ISO 4217 codes drawn from
``CURRENCY_EXPONENTS``; an amount in one currency is never combined with another.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

__all__ = [
    "CURRENCY_EXPONENTS",
    "AmountMinor",
    "Currency",
    "Money",
    "currency_is_valid",
    "format_minor",
]

AmountMinor = Annotated[int, msgspec.Meta(ge=0)]
# ``(?!\n)``: Python's ``$`` also matches before a final newline.
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$(?!\n)")]

# ISO 4217 codes in circulation with their minor-unit exponent. Held as data rather than
# fetched so the engine stays free of I/O; a code missing here is refused, not guessed.
CURRENCY_EXPONENTS: Final[dict[str, int]] = {
    "AED": 2, "ARS": 2, "AUD": 2, "BGN": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2,
    "CLP": 0, "CNY": 2, "COP": 2, "CZK": 2, "DKK": 2, "EGP": 2, "EUR": 2, "GBP": 2,
    "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "ISK": 0, "JOD": 3, "JPY": 0,
    "KES": 2, "KRW": 0, "KWD": 3, "MAD": 2, "MXN": 2, "MYR": 2, "NGN": 2, "NOK": 2,
    "NZD": 2, "OMR": 3, "PEN": 2, "PHP": 2, "PKR": 2, "PLN": 2, "QAR": 2, "RON": 2,
    "RSD": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3, "TRY": 2, "TWD": 2,
    "UAH": 2, "UGX": 0, "USD": 2, "VND": 0, "XAF": 0, "XOF": 0, "ZAR": 2,
}  # fmt: skip


def currency_is_valid(currency: str) -> bool:
    return currency in CURRENCY_EXPONENTS


class Money(msgspec.Struct, frozen=True, kw_only=True):
    """An amount with its currency; arithmetic refuses to mix currencies."""

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        assert currency_is_valid(self.currency), self.currency

    def __add__(self, other: Money) -> Money:
        assert other.currency == self.currency, (self.currency, other.currency)
        return Money(amount_minor=self.amount_minor + other.amount_minor, currency=self.currency)

    def __sub__(self, other: Money) -> Money:
        assert other.currency == self.currency, (self.currency, other.currency)
        return Money(amount_minor=self.amount_minor - other.amount_minor, currency=self.currency)


def format_minor(amount_minor: int, currency: str) -> str:
    """Render for people ("12.34 USD") with integer arithmetic only."""
    exponent = CURRENCY_EXPONENTS[currency]
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole} {currency}"
    return f"{sign}{whole}.{fraction:0{exponent}d} {currency}"
