"""The engine posts revenue recognition to the ledger exactly as an independent recomputation
from the invoices says: written-out examples of each posting rule, and Hypothesis-generated
histories (invoices with and without service periods, partial payments, refunds, voids,
plan changes by proration, recognition runs on a simulated calendar) whose accuracy must be
exactly 1 in every month, checked three ways — the report's recomputation
(``engine.revenue.revenue_by_month``), a day-by-day sum written here, and the ledger's own
revenue balance — with the engine's invariants (a balanced ledger) after every step.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payportal.accounting._revenue_facts import build_revenue_report, facts_from_events
from payportal.engine import (
    AccountState,
    ChargeSettled,
    Decision,
    Event,
    InvoiceStatus,
    InvoiceVoided,
    LedgerAccount,
    RecognizeRevenue,
    RefundPayment,
    Rejection,
    Result,
    RevenueRecognized,
    ServicePeriod,
    SettleCharge,
    VoidInvoice,
    utc_date,
)
from payportal.engine.billing_schedule import prorate_plan_change
from payportal.engine.messages import Command
from payportal.engine.revenue import month_key, recognition_schedule
from tests.unit.engine_builders import Ledgerbook

DAY_MS = 86_400_000
# 2025-01-01T10:00:00Z: mid-day, so a day's events all fall on that UTC date.
START_MS = 1_735_725_600_000
START_DAY = dt.date(2025, 1, 1)

PROPERTIES = settings(
    max_examples=400, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


class Book(Ledgerbook):
    """A ledgerbook that keeps every event, on a calendar that starts on ``START_DAY``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        super().__init__()
        self.now_ms = START_MS

    def run(self, command: Command) -> Decision:
        decision = super().run(command)
        self.events.extend(decision.events)
        return decision

    @property
    def today(self) -> dt.date:
        return utc_date(self.now_ms)

    def advance(self, days: int) -> None:
        self.now_ms += days * DAY_MS

    def recognize(self, through: dt.date) -> Decision:
        return self.run(RecognizeRevenue(account_id=self.account_id, through=through))

    def ledger(self, account: LedgerAccount) -> int:
        return self.account.ledger.get(account, 0)


def period(start: str, end: str) -> ServicePeriod:
    return ServicePeriod(start=dt.date.fromisoformat(start), end=dt.date.fromisoformat(end))


def recognized_months(book: Book) -> dict[str, int]:
    months: dict[str, int] = {}
    for event in book.events:
        if isinstance(event, RevenueRecognized):
            for part in event.parts:
                months[part.month] = months.get(part.month, 0) + part.amount_minor
    return months


# -- examples ------------------------------------------------------------------------------


def test_every_invoice_is_deferred_until_recognition_runs() -> None:
    book = Book()
    book.invoice(3_100, service_period=period("2025-01-01", "2025-01-31"))
    book.invoice(500)
    assert book.ledger(LedgerAccount.deferred_revenue) == -3_600
    assert book.ledger(LedgerAccount.revenue) == 0


def test_a_period_is_recognized_ratably_per_day_and_a_one_off_on_its_invoice_date() -> None:
    book = Book()
    subscription = book.invoice(3_100, service_period=period("2025-01-01", "2025-01-31"))
    purchase = book.invoice(500)
    book.advance(10)  # today 2025-01-11
    decision = book.recognize(dt.date(2025, 1, 10))
    assert decision.outcome.result is Result.ok
    assert book.ledger(LedgerAccount.revenue) == -(1_000 + 500)
    assert book.ledger(LedgerAccount.deferred_revenue) == -2_100
    assert book.account.invoices[subscription].recognized_by_month == {"2025-01": 1_000}
    assert book.account.invoices[purchase].recognized_by_month == {"2025-01": 500}
    assert book.account.recognized_through == dt.date(2025, 1, 10)


def test_recognizing_through_the_same_day_twice_or_an_earlier_day_posts_nothing() -> None:
    book = Book()
    book.invoice(3_100, service_period=period("2025-01-01", "2025-01-31"))
    book.advance(10)
    assert book.recognize(dt.date(2025, 1, 10)).outcome.result is Result.ok
    entries = len(book.entries)
    again = book.recognize(dt.date(2025, 1, 10))
    earlier = book.recognize(dt.date(2025, 1, 3))
    assert again.outcome.result is Result.exists
    assert earlier.outcome.result is Result.exists
    assert not again.events
    assert not earlier.events
    assert len(book.entries) == entries
    assert book.ledger(LedgerAccount.revenue) == -1_000


def test_only_past_days_are_recognized() -> None:
    book = Book()
    book.invoice(500)
    for through in (book.today, book.today + dt.timedelta(days=1)):
        decision = book.recognize(through)
        assert decision.outcome.rejection is Rejection.recognition_date_must_be_past
    assert book.ledger(LedgerAccount.revenue) == 0


def test_an_invoice_issued_today_waits_for_tomorrows_run_even_for_days_already_done() -> None:
    book = Book()
    book.advance(5)  # today 2025-01-06
    book.recognize(dt.date(2025, 1, 5))
    # Billed in arrears, after the run: its first five days are already in the past.
    late = book.invoice(3_100, service_period=period("2025-01-01", "2025-01-31"))
    assert book.recognize(dt.date(2025, 1, 5)).outcome.result is Result.exists
    book.advance(1)
    assert book.recognize(dt.date(2025, 1, 6)).outcome.result is Result.ok
    assert book.account.invoices[late].recognized_by_month == {"2025-01": 600}


def test_recognition_is_split_by_month_of_service() -> None:
    book = Book()
    invoice = book.invoice(3_100, service_period=period("2025-01-16", "2025-02-15"))
    book.advance(45)  # today 2025-02-15
    book.recognize(dt.date(2025, 2, 10))
    assert book.account.invoices[invoice].recognized_by_month == {"2025-01": 1_600,
                                                                   "2025-02": 1_000}  # fmt: skip


def test_a_void_takes_back_recognized_and_deferred_revenue_and_is_never_recognized_again() -> None:
    book = Book()
    invoice = book.invoice(3_100, service_period=period("2025-01-01", "2025-01-31"))
    book.pay(1_000)
    book.advance(10)
    book.recognize(dt.date(2025, 1, 10))
    decision = book.run(VoidInvoice(account_id=book.account_id, invoice_id=invoice))
    assert decision.outcome.result is Result.ok
    voided = decision.events[0]
    assert [(p.month, p.amount_minor) for p in voided.revenue_reversed] == [  # type: ignore[union-attr]
        ("2025-01", -1_000)
    ]
    assert book.ledger(LedgerAccount.revenue) == 0
    assert book.ledger(LedgerAccount.deferred_revenue) == 0
    assert book.account.credit_minor == 1_000  # what was paid returns to credit
    book.advance(30)
    assert book.recognize(dt.date(2025, 2, 9)).outcome.result is Result.exists
    assert book.account.invoices[invoice].status is InvoiceStatus.void


def test_a_void_before_the_run_for_yesterday_still_gives_yesterday_its_revenue() -> None:
    book = Book()
    invoice = book.invoice(3_100, service_period=period("2025-01-01", "2025-01-31"))
    book.advance(10)  # today 2025-01-11
    book.recognize(dt.date(2025, 1, 9))
    voided = book.run(VoidInvoice(account_id=book.account_id, invoice_id=invoice)).events[0]
    assert isinstance(voided, InvoiceVoided)
    assert [(p.month, p.amount_minor) for p in voided.revenue_caught_up] == [("2025-01", 100)]
    assert [(p.month, p.amount_minor) for p in voided.revenue_reversed] == [("2025-01", -1_000)]
    assert book.ledger(LedgerAccount.revenue) == 0
    assert book.ledger(LedgerAccount.deferred_revenue) == 0
    assert book.recognize(dt.date(2025, 1, 10)).outcome.result is Result.exists
    facts = [facts_from_events(book.account_id, book.events)]
    for as_of in (dt.date(2025, 1, 10), dt.date(2025, 1, 11)):
        report = build_revenue_report(facts, as_of=as_of)
        assert report.accuracy == 1
        assert report.differing_invoices == []
    assert build_revenue_report(facts, as_of=dt.date(2025, 1, 10)).months[0].recognized_minor == (
        1_000
    )


def test_a_refund_posts_to_the_contra_revenue_account_and_leaves_recognition_alone() -> None:
    book = Book()
    book.invoice(3_100, service_period=period("2025-01-01", "2025-01-31"))
    payment = book.pay(3_100)
    book.advance(31)
    book.recognize(dt.date(2025, 1, 31))
    book.run(RefundPayment(account_id=book.account_id, payment_id=payment, refund_id="re_1",
                           amount_minor=600))  # fmt: skip
    assert book.ledger(LedgerAccount.refunds) == 600
    assert book.ledger(LedgerAccount.revenue) == -3_100
    report = build_revenue_report([facts_from_events(book.account_id, book.events)],
                                  as_of=book.today)  # fmt: skip
    by_month = {m.month: m for m in report.months}
    assert by_month["2025-01"].recognized_minor == 3_100
    assert by_month["2025-02"].refunds_minor == 600
    assert report.accuracy == 1


def test_a_missed_recognition_shows_below_one_with_the_invoice_that_differs() -> None:
    book = Book()
    invoice = book.invoice(3_100, service_period=period("2025-01-01", "2025-01-31"))
    book.advance(10)
    book.recognize(dt.date(2025, 1, 5))
    report = build_revenue_report([facts_from_events(book.account_id, book.events)],
                                  as_of=dt.date(2025, 1, 10))  # fmt: skip
    assert report.accuracy == Fraction(500, 1_000)
    assert [(d.invoice_id, d.month, d.recognized_minor, d.recomputed_minor)
            for d in report.differing_invoices] == [(invoice, "2025-01", 500, 1_000)]  # fmt: skip


# -- settlement ------------------------------------------------------------------------------


def settle(book: Book, paid: str, **overrides: object) -> Decision:
    payment = book.account.payments[paid]
    fields: dict[str, object] = {
        "account_id": book.account_id, "payment_id": paid,
        "charge_id": payment.captured_charge_id, "payout_id": "po_1",
        "amount_minor": payment.amount_minor, "fee_minor": 59, "currency": "USD",
    }  # fmt: skip
    fields.update(overrides)
    return book.run(SettleCharge(**fields))  # type: ignore[arg-type]


def test_a_settled_charge_moves_clearing_to_cash_and_fees_once() -> None:
    book = Book()
    book.invoice(1_000)
    payment = book.pay(1_000)
    first = settle(book, payment)
    assert first.outcome.result is Result.ok
    assert isinstance(first.events[0], ChargeSettled)
    assert book.ledger(LedgerAccount.processor_clearing) == 0
    assert book.ledger(LedgerAccount.cash) == 941
    assert book.ledger(LedgerAccount.fees) == 59
    assert settle(book, payment).outcome.result is Result.exists
    assert book.ledger(LedgerAccount.cash) == 941


@pytest.mark.parametrize(
    ("overrides", "rejection"),
    [
        ({"amount_minor": 0}, Rejection.amount_must_be_positive),
        ({"currency": "XXX"}, Rejection.currency_must_be_valid),
        ({"fee_minor": 1_001}, Rejection.fee_must_be_within_amount),
        ({"fee_minor": -1}, Rejection.fee_must_be_within_amount),
        ({"payment_id": "pay_missing"}, Rejection.payment_not_found),
        ({"currency": "EUR"}, Rejection.currency_must_match_account),
        ({"charge_id": "ch_other"}, Rejection.charge_must_match_payment),
        ({"amount_minor": 999}, Rejection.amount_must_match_payment),
    ],
)
def test_a_settlement_that_does_not_match_the_payment_is_rejected(
    overrides: dict[str, object], rejection: Rejection
) -> None:
    book = Book()
    payment = book.pay(1_000)
    assert settle(book, payment, **overrides).outcome.rejection is rejection
    assert book.ledger(LedgerAccount.cash) == 0


@pytest.mark.parametrize(
    ("overrides", "rejection"),
    [
        ({"payout_id": "po_2"}, Rejection.exists_with_different_payout),
        ({"fee_minor": 60}, Rejection.exists_with_different_fee),
        ({"amount_minor": 999}, Rejection.exists_with_different_amount),
    ],
)
def test_a_second_settlement_with_other_figures_is_rejected(
    overrides: dict[str, object], rejection: Rejection
) -> None:
    book = Book()
    payment = book.pay(1_000)
    settle(book, payment)
    assert settle(book, payment, **overrides).outcome.rejection is rejection


def test_a_payment_never_captured_cannot_settle() -> None:
    book = Book()
    created = book.create_payment(1_000)
    assert created.outcome.payment_id is not None
    decision = settle(book, created.outcome.payment_id, charge_id="ch_x")
    assert decision.outcome.rejection is Rejection.charge_must_match_payment


# -- random histories ------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("invoice"), st.integers(1, 500_000), st.booleans(),
                  st.integers(-40, 40), st.integers(1, 400)),
        st.tuples(st.just("plan_change"), st.integers(0, 30), st.integers(0, 400),
                  st.integers(1, 500_000)),
        st.tuples(st.just("pay"), st.integers(1, 600_000)),
        st.tuples(st.just("refund"), st.integers(0, 30), st.integers(1, 600_000)),
        st.tuples(st.just("void"), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.integers(1, 45)),
        st.tuples(st.just("recognize"), st.integers(0, 20)),
    ),
    min_size=1,
    max_size=40,
)  # fmt: skip


def day_by_day(book: Book, as_of: dt.date) -> dict[str, int]:
    """What each month should have recognized, summed a day at a time from the invoices and
    voids in the journal (no month arithmetic shared with the engine or the report)."""
    from payportal.engine import InvoiceIssued

    months: dict[str, int] = {}
    issued: dict[str, InvoiceIssued] = {}
    for event in book.events:
        if isinstance(event, InvoiceIssued):
            issued[event.invoice_id] = event
            sign = 1
            invoice = event
        elif isinstance(event, InvoiceVoided):
            invoice = issued[event.invoice_id]
            sign = -1
        else:
            continue
        if utc_date(event.at_ms) > as_of:
            continue
        days = (
            [(utc_date(invoice.at_ms), invoice.amount_minor)]
            if invoice.service_period is None
            else recognition_schedule(invoice.amount_minor, invoice.service_period)
        )
        for day, part in days:
            if day <= as_of:
                months[month_key(day)] = months.get(month_key(day), 0) + sign * part
    return {k: v for k, v in months.items() if v}


def check_recognition(book: Book, as_of: dt.date) -> None:
    """``as_of``: the latest day recognition was run through (the job's watermark), whether
    or not the account had anything to post then."""
    state: AccountState = book.account
    assert state.recognized_through is None or state.recognized_through <= as_of
    report = build_revenue_report([facts_from_events(book.account_id, book.events)], as_of=as_of)
    assert report.differing_invoices == []
    assert all(m.accuracy == 1 for m in report.months), report.months
    assert report.accuracy == 1
    ledger = {m.month: m.recognized_minor for m in report.months if m.recognized_minor}
    assert ledger == day_by_day(book, as_of)
    for month in report.months:
        assert month.deferred_minor == month.recomputed_deferred_minor
    # Every revenue posting so far (some may postdate ``as_of``: a void today) adds up to
    # the ledger's revenue account, which moves only by recognition and voids.
    posted_minor = 0
    for event in book.events:
        if isinstance(event, RevenueRecognized):
            posted_minor += sum(part.amount_minor for part in event.parts)
        elif isinstance(event, InvoiceVoided):
            posted_minor += sum(part.amount_minor for part in event.revenue_caught_up)
            posted_minor += sum(part.amount_minor for part in event.revenue_reversed)
    assert posted_minor == -book.ledger(LedgerAccount.revenue)


@PROPERTIES
@given(history=operations)
def test_accuracy_is_exactly_one_over_random_histories(history: list[tuple[object, ...]]) -> None:
    book = Book()
    invoices: list[str] = []
    payments: list[str] = []
    refund_ids = iter(range(1_000))
    watermark: dt.date | None = None
    for operation in history:
        kind = operation[0]
        if kind == "invoice":
            _, amount_minor, with_period, shift, days = operation
            service_period = None
            if with_period:
                start = book.today + dt.timedelta(days=int(shift))  # type: ignore[call-overload]
                service_period = ServicePeriod(start=start,
                                               end=start + dt.timedelta(days=int(days) - 1))  # type: ignore[call-overload]  # fmt: skip
            invoices.append(book.invoice(int(amount_minor), service_period=service_period))  # type: ignore[call-overload]
        elif kind == "plan_change" and invoices:
            # The plan changes on a day of an invoice's period: an open invoice is voided and
            # the used days re-billed at the old price; the rest of the period is billed at
            # the new price (the proration invoice), paid or not.
            _, pick, offset, price_new = operation
            old = book.account.invoices[invoices[int(pick) % len(invoices)]]  # type: ignore[call-overload]
            if old.service_period is None or old.status is InvoiceStatus.void:
                continue
            old_period = old.service_period
            length = (old_period.end - old_period.start).days + 1
            change = old_period.start + dt.timedelta(days=int(offset) % length)  # type: ignore[call-overload]
            proration = prorate_plan_change(old_period, change, old.amount_due_minor,
                                            int(price_new))  # type: ignore[call-overload]  # fmt: skip
            if old.status is InvoiceStatus.open:
                book.run(VoidInvoice(account_id=book.account_id, invoice_id=old.invoice_id))
                if proration.kept_minor > 0:
                    used = ServicePeriod(start=old_period.start,
                                         end=change - dt.timedelta(days=1))  # fmt: skip
                    invoices.append(book.invoice(proration.kept_minor, service_period=used))
            if proration.charge_minor > 0:
                rest = ServicePeriod(start=change, end=old_period.end)
                invoices.append(book.invoice(proration.charge_minor, service_period=rest))
        elif kind == "pay":
            payments.append(book.pay(int(operation[1])))  # type: ignore[call-overload]
        elif kind == "refund" and payments:
            _, pick, amount_minor = operation
            payment = book.account.payments[payments[int(pick) % len(payments)]]  # type: ignore[call-overload]
            refundable_minor = payment.amount_minor - payment.amount_refunded_minor
            if refundable_minor > 0:
                book.run(RefundPayment(
                    account_id=book.account_id, payment_id=payment.payment_id,
                    refund_id=f"re_{next(refund_ids)}",
                    amount_minor=min(int(amount_minor), refundable_minor),  # type: ignore[call-overload]
                ))  # fmt: skip
        elif kind == "void" and invoices:
            invoice = book.account.invoices[invoices[int(operation[1]) % len(invoices)]]  # type: ignore[call-overload]
            if invoice.status is InvoiceStatus.open:
                book.run(VoidInvoice(account_id=book.account_id, invoice_id=invoice.invoice_id))
        elif kind == "advance":
            book.advance(int(operation[1]))  # type: ignore[call-overload]
        elif kind == "recognize":
            through = book.today - dt.timedelta(days=1 + int(operation[1]))  # type: ignore[call-overload]
            decision = book.recognize(through)
            assert decision.outcome.result in (Result.ok, Result.exists)
            watermark = through if watermark is None else max(watermark, through)
            # A void dates what it catches up on the day before it: the report is exact
            # once recognition has run through that day (see ``engine.account``).
            voided_on = [utc_date(e.at_ms) for e in book.events if isinstance(e, InvoiceVoided)]
            if all(watermark >= day - dt.timedelta(days=1) for day in voided_on):
                check_recognition(book, watermark)
    book.advance(1)
    through = book.today - dt.timedelta(days=1)
    book.recognize(through)
    check_recognition(book, through)
