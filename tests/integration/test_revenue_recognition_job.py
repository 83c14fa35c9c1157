"""The recognition job posts through the real shard path (router → shard core → group commit →
journal → projection) on SQLite and PostgreSQL, on a simulated clock: the report read back
from the journal agrees exactly with the recomputation, the ledger's projected revenue lines
agree with the report, a second run writes nothing, and a day the job skipped shows up as
accuracy below 1 with the invoices behind it."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import pytest
import sqlalchemy as sa

from payportal.accounting.recognition import (
    recognition_accuracy_report,
    recognize_revenue,
    recognized_through,
    render_revenue_csv,
    revenue_report,
)
from payportal.actors import AccountShardCore, ShardRouter
from payportal.engine import IssueInvoice, OpenAccount, Result, ServicePeriod, VoidInvoice
from payportal.persistence import Store, tables
from payportal.persistence.tables_accounting import revenue_recognition_runs

DAY_MS = 86_400_000
# 2025-01-01T10:00:00Z
START_MS = 1_735_725_600_000


class DirectHandle:
    """Stands in for the Ray actor handle: ``apply.remote(batch)`` awaits the shard core."""

    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = self

    def remote(self, batch: bytes) -> Any:
        return self.core.apply(batch)


class Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, days: int) -> None:
        self.now_ms += days * DAY_MS


class Harness:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = Clock()
        self.core = AccountShardCore(0, store, clock_ms=self.clock)
        self.router = ShardRouter([DirectHandle(self.core)], batch_max_wait_ms=1)

    async def ok(self, *commands: Any) -> None:
        replies = await self.router.submit_many(list(commands))
        assert all(r.outcome.result is Result.ok for r in replies), replies

    async def projected(self) -> None:
        await self.store.project_pending(0)

    async def journal_rows(self) -> int:
        async with self.store.engine.connect() as connection:
            return int((await connection.execute(
                sa.select(sa.func.count()).select_from(tables.journal))).scalar_one())  # fmt: skip


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    store = await Store.connect(database_url)
    try:
        yield Harness(store)
    finally:
        await store.close()


def invoice(account: str, n: int, amount_minor: int, period: tuple[str, str] | None,
            currency: str = "USD") -> IssueInvoice:  # fmt: skip
    service_period = None
    if period is not None:
        service_period = ServicePeriod(start=dt.date.fromisoformat(period[0]),
                                       end=dt.date.fromisoformat(period[1]))  # fmt: skip
    return IssueInvoice(account_id=account, invoice_id=f"inv_{account}_{n}", number=str(n),
                        amount_minor=amount_minor, currency=currency,
                        due_date=dt.date(2025, 1, 31), service_period=service_period)  # fmt: skip


async def seed(h: Harness) -> None:
    await h.ok(OpenAccount(account_id="acct_a", currency="USD"),
               OpenAccount(account_id="acct_b", currency="USD"),
               OpenAccount(account_id="acct_c", currency="EUR"))  # fmt: skip
    await h.ok(
        invoice("acct_a", 1, 3_100, ("2025-01-16", "2025-02-15")),  # 100 a day
        invoice("acct_a", 2, 500, None),  # one-off, on 2025-01-01
        invoice("acct_b", 1, 36_500, ("2025-01-01", "2025-12-31")),  # yearly, 100 a day
        invoice("acct_c", 1, 2_800, ("2025-02-01", "2025-02-28"), currency="EUR"),
    )
    await h.projected()


async def test_the_job_posts_exactly_what_the_invoices_earned_and_reruns_write_nothing(
    harness: Harness,
) -> None:
    h = harness
    await seed(h)
    h.clock.advance(45)  # today 2025-02-15; yesterday is the default day
    run = await recognize_revenue(h.router, h.store.engine, clock_ms=h.clock)
    assert run.through == dt.date(2025, 2, 14)
    assert (run.accounts_total, run.accounts_posted) == (3, 3)
    assert await recognized_through(h.store.engine) == dt.date(2025, 2, 14)

    report = await revenue_report(h.store.engine)
    assert report.as_of == dt.date(2025, 2, 14)
    assert report.accuracy == 1
    assert report.differing_invoices == []
    figures = {(m.currency, m.month): (m.recognized_minor, m.deferred_minor)
               for m in report.months}  # fmt: skip
    assert figures[("USD", "2025-01")] == (1_600 + 500 + 3_100, 0)
    assert figures[("USD", "2025-02")] == (1_400 + 1_400, 100 + 1_400)
    assert figures[("USD", "2025-12")] == (0, 3_100)
    assert figures[("EUR", "2025-02")] == (1_400, 1_400)

    # The projected ledger lines say the same as the report.
    await h.projected()
    ledger = tables.ledger_entries
    async with h.store.engine.connect() as connection:
        rows = (await connection.execute(
            sa.select(ledger.c.side, ledger.c.amount_minor)
            .where(ledger.c.ledger_account == "revenue"))).all()  # fmt: skip
    revenue_minor = sum(r.amount_minor if r.side == "credit" else -r.amount_minor for r in rows)
    assert revenue_minor == sum(m.recognized_minor for m in report.months)

    journal_before = await h.journal_rows()
    again = await recognize_revenue(h.router, h.store.engine, clock_ms=h.clock)
    assert again.accounts_posted == 0
    assert await h.journal_rows() == journal_before

    csv_text = render_revenue_csv(report)
    assert csv_text.splitlines()[0].startswith("as_of,currency,month,recognized_minor")
    assert "2025-02-14,EUR,2025-02,1400,1400,1400,1400,0,1" in csv_text


async def test_a_void_after_recognition_is_taken_back_and_accuracy_stays_exact(
    harness: Harness,
) -> None:
    h = harness
    await seed(h)
    h.clock.advance(45)
    await recognize_revenue(h.router, h.store.engine, clock_ms=h.clock)
    await h.ok(VoidInvoice(account_id="acct_b", invoice_id="inv_acct_b_1"))
    h.clock.advance(1)
    await recognize_revenue(h.router, h.store.engine, clock_ms=h.clock)
    report = await revenue_report(h.store.engine, start=dt.date(2025, 1, 1),
                                  end=dt.date(2025, 2, 28))  # fmt: skip
    assert report.as_of == dt.date(2025, 2, 15)
    assert report.accuracy == 1
    figures = {(m.currency, m.month): m.recognized_minor for m in report.months}
    # acct_b's yearly invoice is gone from every month; acct_a's period ended on 02-15.
    assert figures == {("USD", "2025-01"): 1_600 + 500, ("USD", "2025-02"): 1_500,
                       ("EUR", "2025-02"): 1_500}  # fmt: skip


async def test_a_day_the_job_never_ran_shows_below_one_with_the_invoices_that_differ(
    harness: Harness,
) -> None:
    h = harness
    await seed(h)
    h.clock.advance(45)
    await recognize_revenue(h.router, h.store.engine, clock_ms=h.clock)
    # A run recorded as completed through a later day, though no account was asked.
    async with h.store.engine.begin() as connection:
        await connection.execute(sa.insert(revenue_recognition_runs).values(
            through_date=dt.date(2025, 2, 15), accounts_total=3, accounts_posted=0,
            completed_at=sa.func.now()))  # fmt: skip
    accuracy = await recognition_accuracy_report(h.store.engine)
    assert accuracy.accuracy < 1
    assert accuracy.accuracy_by_currency["EUR"] == Fraction(14, 15)
    assert {(d.invoice_id, d.month, d.recognized_minor, d.recomputed_minor)
            for d in accuracy.differing_invoices} == {
        ("inv_acct_a_1", "2025-02", 1_400, 1_500),
        ("inv_acct_b_1", "2025-02", 1_400, 1_500),
        ("inv_acct_c_1", "2025-02", 1_400, 1_500),
    }  # fmt: skip


async def test_a_day_that_is_not_past_is_refused(harness: Harness) -> None:
    h = harness
    await seed(h)
    with pytest.raises(ValueError, match="not a past day"):
        await recognize_revenue(h.router, h.store.engine, through=dt.date(2025, 1, 1),
                                clock_ms=h.clock)  # fmt: skip
    assert await recognized_through(h.store.engine) is None
