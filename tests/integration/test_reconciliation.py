"""Reconciliation finds every discrepancy seeded into the sandbox's settlement reports exactly
once, flags nothing that matches, posts fees and cash through the real shard path once per
charge, and writes nothing new when run again — on SQLite and PostgreSQL, with real charges
captured by the sandbox processor (over HTTP) and recorded through the engine."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer

from payportal.accounting.reconciliation import (
    list_exceptions,
    open_exceptions,
    reconcile,
    resolve_exception,
)
from payportal.actors import AccountShardCore, ShardRouter
from payportal.engine import (
    CreatePayment,
    IssueInvoice,
    LedgerAccount,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
    Result,
)
from payportal.persistence import Store, tables
from payportal.persistence.tables_accounting import settlement_matches
from payportal.processors.sandbox import create_sandbox_app, fee_minor
from payportal.processors.sandbox_client import SandboxProcessor

VISA = PaymentMethodRef(id="pm_visa", brand="visa")
# Standard Webhooks secret format; no callbacks are sent in these tests.
SECRET = "whsec_" + "A" * 43 + "="
PAYMENTS = 8


class DirectHandle:
    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = self

    def remote(self, batch: bytes) -> Any:
        return self.core.apply(batch)


class World:
    def __init__(self, store: Store, sandbox: TestServer, processor: SandboxProcessor) -> None:
        self.store = store
        self.sandbox = sandbox
        self.processor = processor
        self.core = AccountShardCore(0, store)
        self.router = ShardRouter([DirectHandle(self.core)], batch_max_wait_ms=1)
        self.charges: list[str] = []  # in the order they were captured
        self.payment_of: dict[str, tuple[str, str]] = {}  # charge -> (account, payment)

    async def capture(self, account_id: str, n: int, amount_minor: int) -> None:
        token = await self.processor.tokenize_test_card("4242424242424242")
        result = await self.processor.charge(token, amount_minor, "USD", f"att_{n}")
        assert result.outcome is OutcomeKind.succeeded
        assert result.charge_id
        replies = await self.router.submit_many([
            CreatePayment(account_id=account_id, payment_id=f"pay_{n}", attempt_id=f"att_{n}",
                          idempotency_key=f"key_{n}", amount_minor=amount_minor,
                          currency="USD", payment_method=VISA),
            RecordOutcome(account_id=account_id, payment_id=f"pay_{n}", attempt_id=f"att_{n}",
                          outcome=OutcomeKind.succeeded, charge_id=result.charge_id),
        ])  # fmt: skip
        assert all(r.outcome.result is Result.ok for r in replies), replies
        self.charges.append(result.charge_id)
        self.payment_of[result.charge_id] = (account_id, f"pay_{n}")

    async def seed(self, kind: str, **fields: Any) -> None:
        async with aiohttp.ClientSession() as session:
            response = await session.post(self.sandbox.make_url("/v1/_settlements/discrepancies"),
                                          json={"kind": kind, **fields})  # fmt: skip
            assert response.status == 200, await response.text()

    async def reconcile(self) -> Any:
        await self.store.project_pending(0)
        return await reconcile(self.router, self.store.engine, self.processor, grace_ms=0)

    async def count(self, table: sa.Table) -> int:
        async with self.store.engine.connect() as connection:
            return int((await connection.execute(
                sa.select(sa.func.count()).select_from(table))).scalar_one())  # fmt: skip


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    store = await Store.connect(database_url)
    sandbox = TestServer(create_sandbox_app(callback_url=None, webhook_secret=SECRET))
    await sandbox.start_server()
    processor = SandboxProcessor(str(sandbox.make_url("")))
    world = World(store, sandbox, processor)
    try:
        await world.router.submit_many([OpenAccount(account_id=a, currency="USD")
                                        for a in ("acct_a", "acct_b")])  # fmt: skip
        await world.router.submit_many([
            IssueInvoice(account_id=a, invoice_id=f"inv_{a}", number="1", amount_minor=50_000,
                         currency="USD", due_date=dt.date(2026, 1, 31))
            for a in ("acct_a", "acct_b")
        ])  # fmt: skip
        for n in range(PAYMENTS):
            await world.capture("acct_a" if n % 2 else "acct_b", n, 1_000 + 137 * n)
        yield world
    finally:
        await processor.close()
        await sandbox.close()
        await store.close()


async def test_a_clean_report_matches_every_charge_posts_fees_and_cash_once_and_flags_nothing(
    world: World,
) -> None:
    run = await world.reconcile()
    assert (run.charges, run.matched, run.posted, run.exceptions_new) == (
        PAYMENTS, PAYMENTS, PAYMENTS, 0
    )
    assert await open_exceptions(world.store.engine) == []
    for account_id in ("acct_a", "acct_b"):
        state = world.core.account(account_id)
        assert state is not None
        amounts = [p.amount_minor for p in state.payments.values()]
        fees_minor = sum(fee_minor(a) for a in amounts)
        assert state.ledger[LedgerAccount.fees] == fees_minor
        assert state.ledger[LedgerAccount.cash] == sum(amounts) - fees_minor
        assert state.ledger.get(LedgerAccount.processor_clearing, 0) == 0
    journal = await world.count(tables.journal)
    again = await world.reconcile()
    assert (again.matched, again.posted, again.exceptions_new) == (PAYMENTS, 0, 0)
    assert await world.count(tables.journal) == journal
    assert await world.count(settlement_matches) == PAYMENTS


async def test_every_seeded_discrepancy_is_found_exactly_once_and_nothing_matching_is_flagged(
    world: World,
) -> None:
    dropped, amount, currency, duplicated, payout_off, *matching = world.charges
    await world.seed("drop_charge", charge=dropped)
    await world.seed("unknown_charge", charge="ch_never_captured", amount=777, currency="USD")
    await world.seed("amount", charge=amount, amount=5)
    await world.seed("currency", charge=currency, currency="EUR")
    await world.seed("duplicate", charge=duplicated)
    await world.seed("payout_total", charge=payout_off, amount=3)

    run = await world.reconcile()
    found, has_more = await list_exceptions(world.store.engine)
    assert not has_more
    assert Counter(x.kind for x in found) == Counter({
        "missing_charge": 1, "unknown_charge": 1, "amount_mismatch": 1,
        "currency_mismatch": 1, "duplicate_charge": 1, "payout_total_mismatch": 1,
    })  # fmt: skip
    by_kind = {x.kind: x for x in found}
    assert by_kind["missing_charge"].charge_id == dropped
    assert by_kind["missing_charge"].payment_id == world.payment_of[dropped][1]
    assert by_kind["unknown_charge"].charge_id == "ch_never_captured"
    assert (by_kind["amount_mismatch"].charge_id, by_kind["amount_mismatch"].expected_minor,
            by_kind["amount_mismatch"].reported_minor) == (amount, 1_137, 1_142)  # fmt: skip
    assert by_kind["currency_mismatch"].charge_id == currency
    assert by_kind["duplicate_charge"].charge_id == duplicated
    day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    assert by_kind["payout_total_mismatch"].payout_id == f"po_{day}_usd"
    assert by_kind["payout_total_mismatch"].reported_minor == (
        by_kind["payout_total_mismatch"].expected_minor + 3  # type: ignore[operator]
    )
    flagged = {x.charge_id for x in found}
    assert not flagged & set(matching)
    # Posted: every charge that matched (the duplicate's first line and the payout's lines
    # too), nothing for the mismatched ones.
    assert run.posted == len(matching) + 2
    for charge in (amount, currency, dropped):
        account_id, payment_id = world.payment_of[charge]
        state = world.core.account(account_id)
        assert state is not None
        assert state.payments[payment_id].payout_id is None

    journal = await world.count(tables.journal)
    again = await world.reconcile()
    assert (again.posted, again.exceptions_new) == (0, 0)
    assert await world.count(tables.journal) == journal
    assert len((await list_exceptions(world.store.engine))[0]) == len(found)

    resolved = await resolve_exception(world.store.engine, by_kind["unknown_charge"].id,
                                       resolution="not_an_issue", note="test charge")  # fmt: skip
    assert (resolved.status, resolved.resolution, resolved.note) == (
        "resolved", "not_an_issue", "test charge"
    )
    await world.reconcile()
    still_open = await open_exceptions(world.store.engine)
    assert len(still_open) == len(found) - 1
    assert by_kind["unknown_charge"].id not in {x.id for x in still_open}


async def test_the_settlement_reports_carry_amount_fee_net_and_payout_and_read_as_csv(
    world: World,
) -> None:
    report = await world.processor.settlement_report()
    lines, payouts = report.lines, report.payouts
    assert [x.charge for x in lines] == world.charges
    for line in lines:
        assert line.fee == fee_minor(line.amount)
        assert line.net == line.amount - line.fee
    assert len(payouts) == 1
    assert payouts[0].amount == sum(x.net for x in lines)
    assert payouts[0].date == dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    async with aiohttp.ClientSession() as session:
        response = await session.get(world.sandbox.make_url("/v1/settlements?format=csv"))
        text = await response.text()
        assert response.content_type == "text/csv"
        assert text.splitlines()[0] == "charge,payout,amount,currency,fee,net,created,type,source"
        assert len(text.splitlines()) == PAYMENTS + 1
        response = await session.get(world.sandbox.make_url("/v1/payouts?format=xml"))
        assert response.status == 400


async def test_a_refund_and_a_dispute_after_the_payout_are_withheld_matched_and_clear_clearing(
    world: World,
) -> None:
    from payportal.engine import DisputePayment, RefundPayment, check_invariants
    from payportal.processors.sandbox import DISPUTE_FEE_MINOR

    await world.reconcile()  # every charge paid out
    refunded_charge, disputed_charge = world.charges[0], world.charges[2]
    account_id, refunded_payment = world.payment_of[refunded_charge]
    assert world.payment_of[disputed_charge][0] == account_id
    disputed_payment = world.payment_of[disputed_charge][1]
    refund = await world.processor.refund(refunded_charge, 400, idempotency_key="re_ours_1")
    assert refund.outcome is OutcomeKind.succeeded
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            world.sandbox.make_url(f"/v1/_charges/{disputed_charge}/dispute"))
        dispute_id = (await response.json())["dispute"]
    dispute = DisputePayment(account_id=account_id, payment_id=disputed_payment,
                             dispute_id=dispute_id, fee_minor=DISPUTE_FEE_MINOR)  # fmt: skip
    replies = await world.router.submit_many([
        RefundPayment(account_id=account_id, payment_id=refunded_payment, refund_id="re_ours_1",
                      amount_minor=400),
        dispute, dispute,
    ])  # fmt: skip
    assert [r.outcome.result for r in replies] == [Result.ok, Result.ok, Result.exists]
    state = world.core.account(account_id)
    assert state is not None
    disputed_minor = state.payments[disputed_payment].amount_minor
    # Before the next payout the processor holds the refund and the dispute against us.
    assert state.ledger[LedgerAccount.processor_clearing] == -(
        400 + disputed_minor + DISPUTE_FEE_MINOR)
    assert state.ledger[LedgerAccount.accounts_receivable] == 50_000 - sum(
        p.amount_minor for p in state.payments.values()) + disputed_minor  # reopened
    lines, payouts = (await world.processor.settlement_report()).lines, None
    withheld = sorted((x.type, x.amount, x.fee, x.net) for x in lines if x.type != "charge")
    assert withheld == sorted([
        ("refund", -400, 0, -400),
        ("dispute", -disputed_minor, DISPUTE_FEE_MINOR, -disputed_minor - DISPUTE_FEE_MINOR),
    ])
    del payouts
    run = await world.reconcile()
    assert run.exceptions_new == 0, await open_exceptions(world.store.engine)
    assert run.posted == 2
    state = world.core.account(account_id)
    assert state is not None
    check_invariants(state)
    assert state.ledger.get(LedgerAccount.processor_clearing, 0) == 0
    assert state.ledger[LedgerAccount.refunds] == 400
    assert state.ledger[LedgerAccount.fees] == DISPUTE_FEE_MINOR + sum(
        fee_minor(p.amount_minor) for p in state.payments.values())
    again = await world.reconcile()
    assert (again.posted, again.exceptions_new) == (0, 0)


async def test_a_dispute_fee_the_report_contradicts_is_queued_not_posted(world: World) -> None:
    from payportal.engine import DisputePayment

    charge = world.charges[1]
    account_id, payment_id = world.payment_of[charge]
    async with aiohttp.ClientSession() as session:
        response = await session.post(world.sandbox.make_url(f"/v1/_charges/{charge}/dispute"))
        dispute_id = (await response.json())["dispute"]
    reply = await world.router.submit(DisputePayment(
        account_id=account_id, payment_id=payment_id, dispute_id=dispute_id, fee_minor=999))
    assert reply.outcome.result is Result.ok
    run = await world.reconcile()
    assert run.exceptions_by_kind == {"posting_rejected": 1}
    state = world.core.account(account_id)
    assert state is not None
    assert state.payments[payment_id].reversals == {}
