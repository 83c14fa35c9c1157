"""Statements equal the ledger for random histories, on SQLite and PostgreSQL.

Method: Hypothesis generates account histories — invoices, partial payments and
overpayments (with and without explicit allocations), declined payments, credit applied
to later invoices, partial and full refunds, voids, and days passing — and plays them
through the real shard path (``ShardRouter`` → ``AccountShardCore`` → ``Store``, the
shards' clock set by the test), so the journal and read models are the ones a running
deployment writes. An independent model kept here from the commands and their outcomes
(outstanding and credit as two numbers; credit is applied at once, payments take what is
owed, refunds take back the payment's unapplied part while the account still holds it)
gives the expected balances at every day boundary. For cut days drawn from the history
the statement up to the cut, the one after it and the one between two cuts must agree
with the model, with the shard's own balance, with the ``ledger_entries`` read model
summed up to the cut, and with each other (the opening of a period is the closing of
the one before); the CSV must read back to the same figures and the PDF must show them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from payportal.actors import AccountShardCore, ShardRouter
from payportal.engine import (
    Allocation,
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    ReadAccount,
    RecordOutcome,
    RefundPayment,
    Result,
    VoidInvoice,
)
from payportal.persistence import Store, tables
from payportal.statements import (
    DAY_MS,
    Statement,
    StatementAccountNotFound,
    build_statement,
    date_of_ms,
    journal_version,
    ms_of_date,
    render_csv,
    render_pdf,
    wait_for_journal,
)

SHARDS = 2
START_MS = ms_of_date(dt.date(2026, 1, 5)) + 9 * 3_600_000  # 09:00 UTC
VISA = PaymentMethodRef(id="pm_visa", brand="visa")
# Enough histories to reach every kind of event and its combinations, few enough that
# both databases run in well under a minute.
EXAMPLES = 15


class Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms


class Model:
    """Outstanding and credit as the API promises them, kept without the engine."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.credit = 0
        self.unapplied: dict[str, int] = {}  # payment -> unapplied amount
        self.taken_back: dict[str, int] = {}  # payment -> refunded from credit so far
        self.refundable: dict[str, int] = {}
        self.invoices: list[str] = []
        self.postings = 0

    @property
    def balance(self) -> int:
        return self.outstanding - self.credit

    def _apply_credit(self) -> None:
        applied = min(self.credit, self.outstanding)
        self.credit -= applied
        self.outstanding -= applied

    def invoice(self, amount: int) -> None:
        self.outstanding += amount
        self._apply_credit()

    def pay(self, payment_id: str, amount: int) -> None:
        applied = min(amount, self.outstanding)
        self.outstanding -= applied
        self.credit += amount - applied
        self.unapplied[payment_id] = amount - applied
        self.taken_back[payment_id] = 0
        self.refundable[payment_id] = amount

    def refund(self, payment_id: str, amount: int) -> None:
        left = self.unapplied[payment_id] - self.taken_back[payment_id]
        from_credit = min(amount, self.credit, left)
        self.credit -= from_credit
        self.taken_back[payment_id] += from_credit
        self.refundable[payment_id] -= amount

    def void(self, amount_due: int, amount_paid: int) -> None:
        self.outstanding -= amount_due - amount_paid
        self.credit += amount_paid
        self._apply_credit()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("invoice"), st.integers(1, 40_000), st.integers(0, 60)),
        st.tuples(st.just("pay"), st.integers(1, 50_000), st.integers(0, 3)),
        st.tuples(st.just("pay"), st.integers(1, 50_000), st.integers(0, 3)),
        st.tuples(st.just("decline"), st.integers(1, 9_000), st.just(0)),
        st.tuples(st.just("refund"), st.integers(0, 20), st.integers(1, 4)),
        st.tuples(st.just("void"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("days"), st.integers(1, 6), st.just(0)),
    ),
    min_size=8,
    max_size=30,
)

# Every kind of event at least once: an overpayment whose credit pays a later invoice, a
# partial refund taken from credit, a full refund, a void of a part-paid invoice whose
# paid part goes back to credit and on to another invoice, a decline, and days between.
RICH_HISTORY = [
    ("invoice", 10_000, 5), ("invoice", 4_000, 9), ("days", 2, 0), ("pay", 6_000, 0),
    ("pay", 11_000, 1), ("days", 1, 0), ("refund", 1, 1), ("invoice", 3_000, 20),
    ("decline", 500, 0), ("days", 3, 0), ("invoice", 9_000, 30), ("pay", 2_000, 2),
    ("void", 3, 0), ("days", 2, 0), ("refund", 0, 4), ("invoice", 700, 40), ("pay", 900, 1),
]  # fmt: skip


class Harness:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = Clock()
        self.router = ShardRouter(
            [_Direct(AccountShardCore(i, store, clock_ms=self.clock)) for i in range(SHARDS)],
            batch_max_wait_ms=0.5,
        )
        self.accounts = itertools.count(1)

    async def submit(self, command: Any) -> Any:
        reply = await self.router.submit(command)
        self.clock.now_ms += 1_000  # every event at its own second
        return reply


class _Direct:
    """A Ray actor handle's shape over the shard core: the same batches, no Ray."""

    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = self

    def remote(self, batch: bytes) -> Any:
        return self.core.apply(batch)


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    store = await Store.connect(database_url)
    harness = Harness(store)
    try:
        yield harness
    finally:
        await harness.router.drain()
        await store.close()


async def _play(
    h: Harness, account_id: str, ops: list[tuple[str, int, int]]
) -> dict[dt.date, tuple[int, int]]:
    """Runs the history; returns the model's (outstanding, credit) at the end of each day."""
    model = Model()
    at_end_of: dict[dt.date, tuple[int, int]] = {}
    ids = itertools.count(1)
    payments: list[str] = []

    def mark() -> None:
        at_end_of[date_of_ms(h.clock.now_ms)] = (model.outstanding, model.credit)

    reply = await h.submit(OpenAccount(account_id=account_id, currency="USD"))
    assert reply.outcome.result is Result.ok
    for kind, a, b in ops:
        n = next(ids)
        if kind == "invoice":
            invoice_id = f"inv_{account_id}_{n}"
            reply = await h.submit(IssueInvoice(
                account_id=account_id, invoice_id=invoice_id, number=f"INV-{n:03d}",
                amount_minor=a, currency="USD",
                due_date=dt.date(2026, 2, 1) + dt.timedelta(days=b),
            ))  # fmt: skip
            assert reply.outcome.result is Result.ok, reply.outcome
            model.invoice(a)
            model.invoices.append(invoice_id)
        elif kind in ("pay", "decline"):
            payment_id = f"pay_{account_id}_{n}"
            explicit: tuple[Allocation, ...] = ()
            if kind == "pay" and b == 0 and model.outstanding > 0:
                # An explicit allocation: part of the newest invoice still owing.
                snapshot = await h.submit(ReadAccount(
                    account_id=account_id, invoice_id=model.invoices[-1]
                ))  # fmt: skip
                remaining = snapshot.invoice.amount_remaining_minor
                if remaining > 0:
                    share = min(a, remaining, max(1, remaining // 2))
                    explicit = (Allocation(invoice_id=model.invoices[-1], amount_minor=share),)
            reply = await h.submit(CreatePayment(
                account_id=account_id, payment_id=payment_id, attempt_id=f"att_{n}",
                idempotency_key=f"key_{n}", amount_minor=a, currency="USD",
                payment_method=VISA, allocations=explicit,
            ))  # fmt: skip
            assert reply.outcome.result is Result.ok, reply.outcome
            if kind == "pay":
                reply = await h.submit(RecordOutcome(
                    account_id=account_id, payment_id=payment_id, attempt_id=f"att_{n}",
                    outcome=OutcomeKind.succeeded, charge_id=f"ch_{account_id}_{n}",
                ))  # fmt: skip
                assert reply.outcome.result is Result.ok, reply.outcome
                model.pay(payment_id, a)
                payments.append(payment_id)
            else:
                reply = await h.submit(RecordOutcome(
                    account_id=account_id, payment_id=payment_id, attempt_id=f"att_{n}",
                    outcome=OutcomeKind.declined, decline_code="do_not_honor",
                ))  # fmt: skip
                assert reply.outcome.result is Result.ok, reply.outcome
        elif kind == "refund":
            refundable = [p for p in payments if model.refundable[p] > 0]
            if refundable:
                payment_id = refundable[a % len(refundable)]
                left = model.refundable[payment_id]
                amount = left if b == 4 else max(1, left * b // 4)  # full, or a part
                reply = await h.submit(RefundPayment(
                    account_id=account_id, payment_id=payment_id, refund_id=f"re_{n}",
                    amount_minor=amount,
                ))  # fmt: skip
                assert reply.outcome.result is Result.ok, reply.outcome
                model.refund(payment_id, amount)
        elif kind == "void":
            if model.invoices:
                invoice_id = model.invoices[a % len(model.invoices)]
                reply = await h.submit(VoidInvoice(account_id=account_id, invoice_id=invoice_id))
                if reply.outcome.result is Result.ok:
                    voided = reply.invoice
                    model.void(voided.amount_due_minor, voided.amount_paid_minor)
        else:
            mark()
            h.clock.now_ms += a * DAY_MS
        mark()
        reply = await h.submit(ReadAccount(account_id=account_id))
        assert (reply.balance.outstanding_minor, reply.balance.credit_minor) == (
            model.outstanding, model.credit,
        ), "the model and the shard disagree"  # fmt: skip
    return at_end_of


async def _ledger_read_model(store: Store, account_id: str, before_ms: int) -> dict[str, int]:
    """``ledger_entries`` (projected) summed by ledger account for events before a time."""
    for shard_id in range(SHARDS):
        await store.project_pending(shard_id)
    le, j = tables.ledger_entries.c, tables.journal.c
    signed = sa.case((le.side == "debit", le.amount_minor), else_=-le.amount_minor)
    query = (
        sa.select(le.ledger_account, sa.func.sum(signed))
        .select_from(tables.ledger_entries.join(
            tables.journal, sa.and_(j.account_id == le.account_id, j.version == le.version)
        ))
        .where(le.account_id == account_id, j.at_ms < before_ms)
        .group_by(le.ledger_account)
    )  # fmt: skip
    async with store.engine.connect() as connection:
        rows = await connection.execute(query)
        return {account: int(total) for account, total in rows if total}


def _check_renderings(statement: Statement) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(statement))))
    lines = [r for r in rows if r["row_type"] == "line"]
    assert len(lines) == len(statement.lines)
    cents = Decimal(100)
    for column in ("outstanding", "credit"):
        opening = next(r for r in rows if r["row_type"] == "opening")[column]
        closing = next(r for r in rows if r["row_type"] == "closing")[column]
        change = sum(Decimal(r[f"{column}_change"]) for r in lines)
        assert Decimal(opening) + change == Decimal(closing)
        assert Decimal(closing) * cents == getattr(statement.closing, f"{column}_minor")
    totals = {r["kind"]: Decimal(r["amount"]) * cents for r in rows if r["row_type"] == "total"}
    assert totals["payments"] == statement.totals.payments_minor
    assert totals["invoiced"] == statement.totals.invoiced_minor
    assert totals["refunds"] == statement.totals.refunds_minor
    pdf = render_pdf(statement)
    assert pdf.startswith(b"%PDF-")
    assert pdf.rstrip().endswith(b"%%EOF")


@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(ops=operations, cuts=st.tuples(st.integers(0, 12), st.integers(0, 8)))
@example(ops=RICH_HISTORY, cuts=(2, 3))
async def test_statement_balances_and_totals_equal_the_ledger(
    harness: Harness, ops: list[tuple[str, int, int]], cuts: tuple[int, int]
) -> None:
    account_id = f"acct_st{next(harness.accounts):04d}"
    # Each history starts on the same day (accounts are independent, so time may repeat).
    harness.clock.now_ms = START_MS
    at_end_of = await _play(harness, account_id, ops)
    engine = harness.store.engine
    days = sorted(at_end_of)

    whole = await build_statement(engine, account_id)
    shard = (await harness.submit(ReadAccount(account_id=account_id))).balance
    assert whole.closing.outstanding_minor == shard.outstanding_minor
    assert whole.closing.credit_minor == shard.credit_minor
    assert (whole.opening.outstanding_minor, whole.opening.credit_minor) == (0, 0)
    assert whole.ledger_closing == await _ledger_read_model(
        harness.store, account_id, harness.clock.now_ms + DAY_MS
    )
    assert whole.totals.payments_count == sum(kind == "pay" for kind, _, _ in ops)
    assert whole.totals.payments_minor == sum(a for kind, a, _ in ops if kind == "pay")
    _check_renderings(whole)

    start_day = date_of_ms(START_MS)
    first = start_day + dt.timedelta(days=cuts[0])
    second = first + dt.timedelta(days=1 + cuts[1])

    def expected_at(day: dt.date) -> tuple[int, int]:
        marked = [d for d in days if d <= day]
        return at_end_of[marked[-1]] if marked else (0, 0)

    upto = await build_statement(engine, account_id, end=first)
    between = await build_statement(engine, account_id, start=first + dt.timedelta(days=1),
                                    end=second)  # fmt: skip
    after = await build_statement(engine, account_id, start=second + dt.timedelta(days=1))
    for statement, day in ((upto, first), (between, second)):
        got = (statement.closing.outstanding_minor, statement.closing.credit_minor)
        assert got == expected_at(day), (day, got, expected_at(day))
        assert statement.ledger_closing == await _ledger_read_model(
            harness.store, account_id, ms_of_date(day) + DAY_MS
        )
        assert (statement.period_start, statement.period_end)[1] == day
    assert between.opening == upto.closing
    assert after.opening == between.closing
    assert after.closing == whole.closing
    # The three periods partition the history: their lines (running balances included)
    # are the whole statement's, and their totals add up to its totals.
    assert [*upto.lines, *between.lines, *after.lines] == list(whole.lines)
    for name in ("invoiced_minor", "payments_minor", "refunds_minor", "voided_minor",
                 "credit_applied_minor", "refunds_from_credit_minor",
                 "credit_created_minor"):  # fmt: skip
        parts = sum(getattr(s.totals, name) for s in (upto, between, after))
        assert parts == getattr(whole.totals, name), name
    assert upto.version <= between.version <= after.version == whole.version


async def test_the_journal_wait_returns_at_once_when_covered_and_false_when_not(
    harness: Harness,
) -> None:
    account_id = "acct_wait"
    await harness.submit(OpenAccount(account_id=account_id, currency="USD"))
    reply = await harness.submit(ReadAccount(account_id=account_id))
    engine = harness.store.engine

    assert await journal_version(engine, account_id) == reply.version == 1
    assert await wait_for_journal(engine, account_id, reply.version, timeout_s=0)
    # A version the journal does not hold (as if a replica lagged): the wait gives up.
    assert not await wait_for_journal(engine, account_id, reply.version + 1, timeout_s=0.05)
    assert await journal_version(engine, "acct_never_opened") == 0


async def test_a_period_before_the_account_opened_is_empty_and_an_unknown_account_raises(
    harness: Harness,
) -> None:
    await harness.submit(OpenAccount(account_id="acct_late", currency="JPY"))
    engine = harness.store.engine

    statement = await build_statement(engine, "acct_late", end=date_of_ms(START_MS - DAY_MS))

    assert statement.lines == ()
    assert statement.currency == "JPY"
    assert statement.closing == statement.opening
    assert statement.closing.balance_minor == 0
    assert statement.version == 0
    with pytest.raises(StatementAccountNotFound):
        await build_statement(engine, "acct_never_opened")
    with pytest.raises(ValueError, match="after"):
        await build_statement(engine, "acct_late", start=dt.date(2026, 2, 2),
                              end=dt.date(2026, 2, 1))  # fmt: skip
