"""The billing run on SQLite and PostgreSQL: a scheduler killed at each step and rerun bills
and charges each period once; three schedulers at once claim each period once; a
downgrade's credit comes off the next invoice; cancellation at period end stops billing;
card reminders go once per card and expiry; a dry run writes nothing; and the agreed
``set_autopay`` / ``list_subscriptions``. In-process shards over the real store, the real
gateway, and a processor stand-in that keeps one result per idempotency key."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from payportal.actors import AccountShardCore, Reply, ShardRouter
from payportal.billing import (
    BillingRunner,
    InvoiceOutcome,
    InvoiceState,
    list_subscriptions,
    set_autopay,
)
from payportal.billing import _records as records
from payportal.billing import _service as service
from payportal.engine import (
    AttemptSucceeded,
    Command,
    InvoiceIssued,
    OpenAccount,
    OutcomeKind,
    PaymentCreated,
)
from payportal.engine.billing_schedule import Interval
from payportal.http.gateway import Gateway
from payportal.persistence import Store, directory, tables, tables_payers
from payportal.processors import ChargeResult, InquiryStatus, RefundResult

UTC_MIDDAY = dt.time(12)
START = dt.date(2028, 1, 31)


def _ms(day: dt.date, at: dt.time = UTC_MIDDAY) -> int:
    return int(dt.datetime.combine(day, at, tzinfo=dt.UTC).timestamp() * 1000)


class Crash(BaseException):
    """A scheduler killed mid-run."""


class Processor:
    """One result per idempotency key, as a processor keeps it; tokens decide outcomes."""

    def __init__(self) -> None:
        self.results: dict[str, ChargeResult] = {}
        self.captures: list[tuple[str, int]] = []

    async def charge(self, token: str, amount_minor: int, currency: str,
                     idempotency_key: str, metadata: Any = None,
                     **options: Any) -> ChargeResult:  # fmt: skip
        if idempotency_key not in self.results:
            if token == "tok_hard":
                result = ChargeResult(outcome=OutcomeKind.declined, decline_code="do_not_honor")
            else:
                self.captures.append((idempotency_key, amount_minor))
                result = ChargeResult(outcome=OutcomeKind.succeeded,
                                      charge_id=f"ch_{len(self.captures)}",
                                      amount_minor=amount_minor, currency=currency)  # fmt: skip
            self.results[idempotency_key] = result
        return self.results[idempotency_key]

    async def inquire(self, idempotency_key: str) -> ChargeResult:
        known = self.results.get(idempotency_key)
        return known or ChargeResult(outcome=OutcomeKind.errored, inquiry=InquiryStatus.not_found)

    async def refund(self, charge_id: str, amount_minor: int,
                     idempotency_key: str) -> RefundResult:  # fmt: skip
        raise AssertionError("billing never refunds")


class DirectHandle:
    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = self

    def remote(self, batch: bytes) -> Any:
        return self.core.apply(batch)


class LosingRouter:
    """Dies right after the first command of a kind was applied: its reply is lost."""

    def __init__(self, router: ShardRouter, kind: str) -> None:
        self._router = router
        self._kind = kind
        self.fired = False

    async def submit(self, command: Command) -> Reply:
        reply = await self._router.submit(command)
        if not self.fired and type(command).__name__ == self._kind:
            self.fired = True
            raise Crash(f"killed after {self._kind}")
        return reply


class Billing:
    """Accounts with cards, plans, and schedulers over one store and a fake clock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine
        self.now_ms = _ms(START)
        cores = [AccountShardCore(i, store, clock_ms=lambda: self.now_ms) for i in range(2)]
        self.router = ShardRouter([DirectHandle(c) for c in cores], batch_max_wait_ms=1)
        self.processor = Processor()

    async def token_for(self, method_id: str) -> str | None:
        row = await directory.payment_method(self.engine, method_id)
        return None if row is None else row.token

    def runner(self, *, router: Any = None, fault: Any = None) -> BillingRunner:
        router = router or self.router
        return BillingRunner(router, self.engine, Gateway(router, self.processor, self.token_for),
                             clock_ms=lambda: self.now_ms, lease_ms=60_000,
                             fault=fault)  # fmt: skip

    async def account(self, n: int, *, token: str = "tok_ok", exp: tuple[int, int] = (2031, 12)
                      ) -> str:  # fmt: skip
        account = f"acct_b{n:04d}"
        await self.router.submit(OpenAccount(account_id=account, currency="USD"))
        async with self.engine.begin() as connection:
            await connection.execute(sa.insert(tables_payers.account_profiles).values(
                account_id=account, name=f"Payer {n}", email=f"b{n}@example.com",
                currency="USD"))  # fmt: skip
            await connection.execute(sa.insert(tables_payers.payment_methods).values(
                id=f"pm_{account}", account_id=account, token=token, type="card",
                brand="visa", last4="4242", exp_year=exp[0], exp_month=exp[1]))  # fmt: skip
        return account

    async def plan(self, plan_id: str, amount_minor: int, interval: Interval = Interval.month
                   ) -> str:  # fmt: skip
        await service.create_plan(self.engine, plan_id=plan_id, name=plan_id,
                                  amount_minor=amount_minor, currency="USD",
                                  interval=interval)  # fmt: skip
        return plan_id

    async def subscribe(self, account: str, plan: str, *, autopay: bool = True,
                        today: dt.date = START) -> str:  # fmt: skip
        created = await service.create_subscription(
            self.engine, subscription_id=f"sub_{account.removeprefix('acct_')}_{plan}",
            account_id=account, account_currency="USD", plan_id=plan,
            payment_method_id=f"pm_{account}", autopay=autopay, anchor_day=None, today=today,
        )  # fmt: skip
        assert not isinstance(created, service.BillingRejection), created
        return created.id

    async def audit(self) -> tuple[Counter[str], Counter[str], Counter[str], list[Any]]:
        await self.router.drain()
        journal = await self.store.journal()
        issued = Counter(e.invoice_id for _, _, e in journal if isinstance(e, InvoiceIssued))
        created = Counter(e.payment_id for _, _, e in journal if isinstance(e, PaymentCreated))
        captured = Counter(e.payment_id for _, _, e in journal
                           if isinstance(e, AttemptSucceeded))  # fmt: skip
        async with self.engine.connect() as connection:
            rows = [records.invoice_row(r) for r in (await connection.execute(
                sa.select(tables.metadata.tables["billing_invoices"]))).all()]  # fmt: skip
        return issued, created, captured, rows


@pytest.fixture
async def billing(store: Store) -> Billing:
    return Billing(store)


CRASH_POINTS = ["claim", "issued", "payment_created", "charged"]


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_scheduler_killed_at_a_step_and_rerun_bills_and_charges_once(
    billing: Billing, point: str
) -> None:
    account = await billing.account(1)
    await billing.subscribe(account, await billing.plan("plan_m", 2_000))

    def fault(at: str) -> None:
        if at == point:
            raise Crash(at)

    with pytest.raises(BaseExceptionGroup) as killed:
        await billing.runner(fault=fault).run_once()
    assert killed.group_contains(Crash)
    # The next scheduler comes after the dead one's lease has lapsed.
    billing.now_ms += 61_000
    await billing.runner().run_once()
    await billing.runner().run_once()

    issued, created, captured, rows = await billing.audit()
    assert len(rows) == 1
    row = rows[0]
    assert row.state is InvoiceState.settled
    assert row.outcome is InvoiceOutcome.paid
    assert issued == Counter({row.invoice_id: 1})
    assert created == Counter({row.payment_id: 1})
    assert captured == Counter({row.payment_id: 1})
    assert [amount for _, amount in billing.processor.captures] == [2_000]


@pytest.mark.parametrize("kind", ["IssueInvoice", "CreatePayment", "RecordOutcome"])
async def test_a_reply_lost_after_the_shard_applied_a_command_is_not_applied_twice(
    billing: Billing, kind: str
) -> None:
    account = await billing.account(1)
    await billing.subscribe(account, await billing.plan("plan_m", 2_000))
    losing = LosingRouter(billing.router, kind)

    with pytest.raises(BaseExceptionGroup):
        await billing.runner(router=losing).run_once()
    billing.now_ms += 61_000
    await billing.runner().run_once()

    issued, created, captured, rows = await billing.audit()
    assert [r.outcome for r in rows] == [InvoiceOutcome.paid]
    assert list(issued.values()) == [1]
    assert list(created.values()) == [1]
    assert list(captured.values()) == [1]
    assert len(billing.processor.captures) == 1


async def test_three_schedulers_at_once_claim_every_period_once(billing: Billing) -> None:
    plan = await billing.plan("plan_m", 1_000)
    subscriptions = [await billing.subscribe(await billing.account(n), plan) for n in range(30)]
    await billing.runner().run_once()
    # Three months later three schedulers race for the three periods each that are due.
    billing.now_ms = _ms(dt.date(2028, 4, 30))

    reports = await asyncio.gather(*(billing.runner().run_once() for _ in range(3)))

    assert sum(r.periods_claimed for r in reports) == 30 * 3
    issued, created, captured, rows = await billing.audit()
    assert len(rows) == 30 * 4
    assert Counter((r.subscription_id, r.period_start) for r in rows).most_common(1)[0][1] == 1
    assert set(issued.values()) == {1}
    assert set(created.values()) == {1}
    assert set(captured.values()) == {1}
    assert len(billing.processor.captures) == 30 * 4
    starts = sorted({r.period_start for r in rows if r.subscription_id == subscriptions[0]})
    assert starts == [dt.date(2028, 1, 31), dt.date(2028, 2, 29), dt.date(2028, 3, 31),
                      dt.date(2028, 4, 30)]  # fmt: skip


async def test_a_downgrade_credit_comes_off_the_next_invoice(billing: Billing) -> None:
    account = await billing.account(1)
    pro = await billing.plan("plan_pro", 3_000)
    basic = await billing.plan("plan_basic", 1_000)
    subscription = await billing.subscribe(account, pro)
    runner = billing.runner()
    await runner.run_once()

    # On the period's first day the whole difference is credited.
    result = await service.change_plan(
        billing.engine, runner, subscription_id=subscription, plan_id=basic,
        invoice_id="inv_b0001_downgrade", today=START, now_ms=billing.now_ms,
    )  # fmt: skip
    assert not isinstance(result, service.BillingRejection)
    assert result[0].credit == 2_000
    assert result[1] is None
    billing.now_ms = _ms(dt.date(2028, 3, 31))
    await billing.runner().run_once()

    _, _, _, rows = await billing.audit()
    amounts = {r.period_start: r.amount_minor for r in rows}
    assert amounts == {START: 3_000, dt.date(2028, 2, 29): 0, dt.date(2028, 3, 31): 0}
    outcomes = {r.period_start: r.outcome for r in rows}
    assert outcomes[dt.date(2028, 2, 29)] is InvoiceOutcome.nothing_due
    subscriptions = await list_subscriptions(billing.engine, account_id=account)
    assert subscriptions[0].credit == 0


async def test_cancel_at_period_end_bills_through_the_period_then_ends(billing: Billing) -> None:
    account = await billing.account(1)
    subscription = await billing.subscribe(account, await billing.plan("plan_m", 1_000))
    await billing.runner().run_once()

    canceled = await service.cancel_subscription(
        billing.engine, subscription_id=subscription, at_period_end=True, today=START
    )
    assert not isinstance(canceled, service.BillingRejection)
    assert canceled.ended_on == dt.date(2028, 2, 28)
    billing.now_ms = _ms(dt.date(2028, 6, 1))
    report = await billing.runner().run_once()

    assert report.subscriptions_ended == 1
    _, _, _, rows = await billing.audit()
    assert [r.period_start for r in rows] == [START]
    [after] = await list_subscriptions(billing.engine, account_id=account)
    assert after.status == "canceled"


async def test_a_card_expiring_soon_is_reminded_once(billing: Billing) -> None:
    expiring = await billing.account(1, exp=(2028, 3))
    lasting = await billing.account(2)
    plan = await billing.plan("plan_m", 1_000)
    await billing.subscribe(expiring, plan)
    await billing.subscribe(lasting, plan)

    early = await billing.runner().run_once()  # 31 January: more than 30 days before 31 March
    billing.now_ms = _ms(dt.date(2028, 3, 2))
    due = await billing.runner().run_once()
    again = await billing.runner().run_once()

    assert (early.reminders_sent, due.reminders_sent, again.reminders_sent) == (0, 1, 0)
    async with billing.engine.connect() as connection:
        keys = [r.dedupe_key for r in (await connection.execute(
            sa.select(tables.outbox.c.dedupe_key))).all()]  # fmt: skip
    assert [k for k in keys if k.startswith("card_expiring:")] == [
        "card_expiring:pm_acct_b0001:2028-03"
    ]


async def test_a_dry_run_counts_what_is_due_and_writes_nothing(billing: Billing) -> None:
    plan = await billing.plan("plan_m", 1_000)
    for n in range(3):
        await billing.subscribe(await billing.account(n), plan)

    runner = BillingRunner(None, billing.engine, None, clock_ms=lambda: billing.now_ms)
    report = await runner.run_once(dry_run=True)

    assert report.periods_claimed == 3
    assert report.subscriptions_due == 3
    issued, _, _, rows = await billing.audit()
    assert rows == []
    assert issued == Counter()


async def test_set_autopay_switches_the_accounts_live_subscriptions(billing: Billing) -> None:
    account = await billing.account(1)
    plan = await billing.plan("plan_m", 1_000)
    first = await billing.subscribe(account, plan)
    await billing.subscribe(account, await billing.plan("plan_y", 9_000, Interval.year))
    await service.cancel_subscription(billing.engine, subscription_id=first,
                                      at_period_end=False, today=START)  # fmt: skip

    changed = await set_autopay(billing.engine, account_id=account, enabled=False)

    assert changed == 1
    listed = await list_subscriptions(billing.engine, account_id=account)
    assert [(s.status, s.autopay) for s in listed] == [("canceled", True), ("active", False)]
    await billing.runner().run_once()
    _, created, _, rows = await billing.audit()
    assert [r.outcome for r in rows] == [InvoiceOutcome.invoiced]
    assert created == Counter()
    assert await set_autopay(billing.engine, account_id="acct_nobody", enabled=True) == 0


async def test_random_runs_and_kills_over_months_leave_exactly_one_invoice_per_period(
    billing: Billing,
) -> None:
    rng = random.Random(7)
    plan = await billing.plan("plan_m", 1_000)
    for n in range(12):
        await billing.subscribe(await billing.account(n, token=rng.choice(["tok_ok", "tok_hard"])),
                                plan)  # fmt: skip
    for day in range(0, 124, 3):
        billing.now_ms = _ms(START + dt.timedelta(days=day))

        def fault(_: str) -> None:
            if rng.random() < 0.1:
                raise Crash("killed")

        # A killed run's error is the kill itself; the next step's schedulers carry on.
        await asyncio.gather(billing.runner(fault=fault).run_once(),
                             billing.runner(fault=fault).run_once(),
                             return_exceptions=True)  # fmt: skip
    billing.now_ms += 61_000
    await billing.runner().run_once()

    issued, created, captured, rows = await billing.audit()
    assert Counter((r.subscription_id, r.period_start) for r in rows).most_common(1)[0][1] == 1
    assert len(rows) == 12 * 5  # 31 Jan, 29 Feb, 31 Mar, 30 Apr, 31 May
    assert set(issued.values()) == {1}
    assert set(created.values()) == {1}
    assert all(n == 1 for n in captured.values())
    assert [r for r in rows if r.state is not InvoiceState.settled] == []
