"""Money and ledger rules that hold by construction: checked directly on the small types."""

from __future__ import annotations

import pytest

from payportal.engine import Entry, LedgerAccount, Line, Money, Side, format_minor
from payportal.engine.ledger import apply_entry, entry


def test_money_refuses_to_mix_currencies() -> None:
    with pytest.raises(AssertionError):
        _ = Money(amount_minor=1, currency="USD") + Money(amount_minor=1, currency="EUR")


def test_money_refuses_an_unknown_currency() -> None:
    with pytest.raises(AssertionError):
        Money(amount_minor=1, currency="ABC")


def test_amounts_format_with_the_currency_exponent() -> None:
    assert format_minor(123_456, "USD") == "1234.56 USD"
    assert format_minor(-5, "EUR") == "-0.05 EUR"
    assert format_minor(1_000, "JPY") == "1000 JPY"
    assert format_minor(1_234, "KWD") == "1.234 KWD"


def test_an_unbalanced_entry_cannot_be_built() -> None:
    with pytest.raises(AssertionError):
        Entry(
            memo="bad",
            lines=(
                Line(account=LedgerAccount.cash, side=Side.debit, amount_minor=10),
                Line(account=LedgerAccount.revenue, side=Side.credit, amount_minor=9),
            ),
        )


def test_zero_lines_are_dropped_and_an_all_zero_entry_is_none() -> None:
    assert entry("nothing", {LedgerAccount.cash: 0}, {LedgerAccount.revenue: 0}) is None
    posted = entry(
        "split",
        {LedgerAccount.processor_clearing: 10},
        {LedgerAccount.accounts_receivable: 10, LedgerAccount.customer_credit: 0},
    )
    assert posted is not None
    assert len(posted.lines) == 2


def test_balances_are_debit_positive_and_sum_to_zero() -> None:
    balances: dict[LedgerAccount, int] = {}
    posted = entry("sale", {LedgerAccount.accounts_receivable: 700}, {LedgerAccount.revenue: 700})
    assert posted is not None
    apply_entry(balances, posted)
    assert balances == {LedgerAccount.accounts_receivable: 700, LedgerAccount.revenue: -700}
