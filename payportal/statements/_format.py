"""Amounts for people and for spreadsheets, from integer minor units: no float anywhere.

``format_amount(123456, "USD")`` is ``"1,234.56"``; ``decimal_amount`` is the same
without grouping (``"1234.56"``), which every spreadsheet and ``decimal.Decimal`` read
exactly. The number of decimals is the currency's ISO 4217 exponent (JPY 0, KWD 3).
"""

from __future__ import annotations

from payportal.engine import CURRENCY_EXPONENTS

__all__ = ["decimal_amount", "format_amount"]


def _split(amount_minor: int, currency: str) -> tuple[str, str, str]:
    exponent = CURRENCY_EXPONENTS[currency]
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    return sign, str(whole), f"{fraction:0{exponent}d}" if exponent else ""


def format_amount(amount_minor: int, currency: str) -> str:
    sign, whole, fraction = _split(amount_minor, currency)
    grouped = f"{int(whole):,}"
    return f"{sign}{grouped}.{fraction}" if fraction else f"{sign}{grouped}"


def decimal_amount(amount_minor: int, currency: str) -> str:
    sign, whole, fraction = _split(amount_minor, currency)
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"
