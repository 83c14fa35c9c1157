"""The pure parts of reconciliation: how the sandbox builds settlement lines and payouts (fee
rounding, payout per currency and day, each seedable discrepancy) and how report lines are
matched with payments (each mismatch kind, the grace time for charges too young to judge),
checked on written-out examples with the expected figures computed by hand."""

from __future__ import annotations

import datetime as dt

import pytest

from payportal.accounting.reconciliation import _check_lines, _Payment
from payportal.processors._settlement import (
    Discrepancy,
    SettledCharge,
    SettlementKnobs,
    build_settlement,
    payouts_csv,
)
from payportal.processors.sandbox import fee_minor

DAY_S = 86_400
# 2025-03-10T12:00:00Z and the next day at the same time.
MAR_10 = 1_741_608_000
MAR_11 = MAR_10 + DAY_S
TODAY = dt.date(2025, 3, 11)


@pytest.mark.parametrize(
    ("amount_minor", "fee"),
    [(1, 30), (17, 30), (18, 31), (1_000, 59), (10_000, 320), (12_345, 388)],
)
def test_the_fee_is_2_9_percent_rounded_half_up_plus_30(amount_minor: int, fee: int) -> None:
    assert fee_minor(amount_minor) == fee


def charges() -> list[SettledCharge]:
    return [
        SettledCharge(id="ch_1", amount=1_000, currency="USD", created=MAR_10),
        SettledCharge(id="ch_2", amount=2_000, currency="USD", created=MAR_10 + 60),
        SettledCharge(id="ch_3", amount=3_000, currency="EUR", created=MAR_10),
        SettledCharge(id="ch_4", amount=4_000, currency="USD", created=MAR_11),
    ]


def settle(*discrepancies: Discrepancy) -> tuple[list, list]:  # type: ignore[type-arg]
    knobs = SettlementKnobs(discrepancies=list(discrepancies))
    return build_settlement(charges(), knobs, today=TODAY, fee_of=fee_minor)


def test_charges_are_paid_out_per_currency_and_day_a_day_later() -> None:
    lines, payouts = settle()
    assert [(x.charge, x.payout, x.fee, x.net) for x in lines] == [
        ("ch_1", "po_20250310_usd", 59, 941), ("ch_2", "po_20250310_usd", 88, 1_912),
        ("ch_3", "po_20250310_eur", 117, 2_883), ("ch_4", "po_20250311_usd", 146, 3_854),
    ]  # fmt: skip
    assert [(p.id, p.date, p.amount, p.charges, p.status) for p in payouts] == [
        ("po_20250310_eur", dt.date(2025, 3, 11), 2_883, 1, "paid"),
        ("po_20250310_usd", dt.date(2025, 3, 11), 941 + 1_912, 2, "paid"),
        ("po_20250311_usd", dt.date(2025, 3, 12), 3_854, 1, "pending"),
    ]  # fmt: skip
    assert payouts_csv(payouts).splitlines()[1] == "po_20250310_eur,2025-03-11,EUR,2883,1,paid"


def test_each_discrepancy_changes_the_report_as_documented() -> None:
    lines, payouts = settle(
        Discrepancy(kind="drop_charge", charge="ch_1"),
        Discrepancy(kind="amount", charge="ch_2", amount=-500),
        Discrepancy(kind="currency", charge="ch_4", currency="GBP"),
        Discrepancy(kind="duplicate", charge="ch_3"),
        Discrepancy(kind="unknown_charge", charge="ch_x", amount=700, currency="USD"),
        Discrepancy(kind="payout_total", charge="ch_3", amount=9),
    )
    assert [(x.charge, x.amount, x.currency) for x in lines] == [
        ("ch_2", 1_500, "USD"), ("ch_3", 3_000, "EUR"), ("ch_4", 4_000, "GBP"),
        ("ch_3", 3_000, "EUR"), ("ch_x", 700, "USD"),
    ]  # fmt: skip
    assert lines[0].fee == fee_minor(1_500)
    totals = {p.id: p.amount for p in payouts}
    assert totals["po_20250310_eur"] == 2 * 2_883 + 9
    assert totals["po_20250311_gbp"] == 3_854
    assert totals["po_20250311_usd"] == 700 - fee_minor(700)


def payment(n: int, amount_minor: int, currency: str = "USD") -> _Payment:
    return _Payment(payment_id=f"pay_{n}", account_id="acct_1", amount_minor=amount_minor,
                    currency=currency, applied_minor=amount_minor, unapplied_minor=0)  # fmt: skip


def test_lines_that_match_are_matched_and_every_mismatch_is_named_once() -> None:
    lines, payouts = settle(
        Discrepancy(kind="amount", charge="ch_2", amount=1),
        Discrepancy(kind="duplicate", charge="ch_1"),
        Discrepancy(kind="unknown_charge", charge="ch_x", amount=700, currency="USD"),
    )
    payments = {"ch_1": payment(1, 1_000), "ch_2": payment(2, 2_000),
                "ch_3": payment(3, 3_000, "USD"), "ch_4": payment(4, 4_000)}  # fmt: skip
    matched, found = _check_lines(lines, payouts, payments, processor="sandbox",
                                  young_after_s=MAR_11 + DAY_S)  # fmt: skip
    assert [line.charge for line, _ in matched] == ["ch_1", "ch_4"]
    assert sorted((f.kind, f.charge_id) for f in found) == [
        ("amount_mismatch", "ch_2"), ("currency_mismatch", "ch_3"),
        ("duplicate_charge", "ch_1"), ("unknown_charge", "ch_x"),
    ]  # fmt: skip
    assert len({f.dedupe for f in found}) == len(found)


def test_a_charge_younger_than_the_grace_time_is_not_called_unknown_yet() -> None:
    lines, payouts = settle()
    matched, found = _check_lines(lines, payouts, {}, processor="sandbox",
                                  young_after_s=MAR_10 + 30)  # fmt: skip
    assert matched == []
    assert sorted(f.charge_id for f in found) == ["ch_1", "ch_3"]  # created by then


def test_a_payout_whose_total_is_not_its_lines_is_flagged_once() -> None:
    lines, payouts = settle(Discrepancy(kind="payout_total", charge="ch_4", amount=-2))
    payments = {c.id: payment(n, c.amount, c.currency) for n, c in enumerate(charges())}
    matched, found = _check_lines(lines, payouts, payments, processor="sandbox",
                                  young_after_s=MAR_11 + DAY_S)  # fmt: skip
    assert len(matched) == 4
    assert [(f.kind, f.payout_id, f.expected_minor, f.reported_minor) for f in found] == [
        ("payout_total_mismatch", "po_20250311_usd", 3_854, 3_852)
    ]
