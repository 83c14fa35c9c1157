"""A simulated year of recurring billing: 1,000 subscriptions (monthly and yearly; anchor
days 1-31 with the 29th, 30th and 31st over-represented; subscriptions started on
29 February of a leap year and on month ends; cancellations at period end and at once)
billed in the business time zone America/New_York by a fake clock that steps through
2028 in uneven steps across both daylight-saving changes, with scheduler crashes injected
at random points (a killed run is rerun by a fresh scheduler) and two schedulers often
running at once. The same claim, invoice and charge code as production runs, on the real
store with in-process shards, the real gateway and the retry janitor, against a card
processor stand-in that keeps every charge by idempotency key.

An independent model (a day-by-day walk of each subscription's calendar) says which
periods must exist; the test asserts that every one was billed exactly once, nothing
else was billed, no invoice was issued twice in the journal, and every autopay period
was charged through exactly one payment and captured at most once (exactly once when
paid), with dunning where the card failed. It prints the figures."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from payportal.actors import AccountShardCore, Reply, ShardRouter
from payportal.actors.janitor import RetryJanitor
from payportal.billing import BillingRunner, InvoiceKind, InvoiceOutcome, InvoiceState
from payportal.billing import _records as records
from payportal.billing import _service as service
from payportal.engine import (
    AttemptSucceeded,
    Command,
    InvoiceIssued,
    OpenAccount,
    OutcomeKind,
    PaymentCreated,
    Result,
)
from payportal.engine.billing_schedule import Interval
from payportal.http.gateway import Gateway
from payportal.persistence import (
    Store,
    create_engine_for,
    directory,
    migrate,
    tables,
    tables_payers,
)
from payportal.persistence.tables_billing import billing_invoices, subscriptions
from payportal.processors import ChargeResult, InquiryStatus, RefundResult
from tests.databases import scratch_database

ZONE = ZoneInfo("America/New_York")
YEAR_START = dt.datetime(2028, 1, 1, tzinfo=ZONE)
YEAR_END = dt.datetime(2029, 1, 1, tzinfo=ZONE)
# The two daylight-saving changes of 2028 in New York, each stepped over to the minute.
DST_INSTANTS = [
    dt.datetime(2028, 3, 12, 6, 59, tzinfo=dt.UTC), dt.datetime(2028, 3, 12, 7, 1, tzinfo=dt.UTC),
    dt.datetime(2028, 11, 5, 5, 30, tzinfo=dt.UTC), dt.datetime(2028, 11, 5, 6, 30, tzinfo=dt.UTC),
]  # fmt: skip
# The full 1,000 on PostgreSQL (production's database); fewer on SQLite, whose one
# writer makes the same year several times slower. Either can be set by environment.
SUBSCRIPTIONS_BY_DIALECT = {
    "postgresql": int(os.environ.get("PAYPORTAL_TEST_BILLING_SUBSCRIPTIONS", "1000")),
    "sqlite": int(os.environ.get("PAYPORTAL_TEST_BILLING_SUBSCRIPTIONS_SQLITE", "100")),
}
SHARDS = 2
# Scheduler leases: short against the fake clock's steps, so a crashed run's rows are
# taken over by the next step's scheduler.
LEASE_MS = 10 * 60_000
TOKENS = {"tok_ok": 0.86, "tok_soft": 0.04, "tok_hard": 0.04, "tok_flaky": 0.06}


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


class Crash(BaseException):
    """A scheduler process killed mid-run (not an Exception: nothing may catch it)."""


class CardNetwork:
    """The processor stand-in: one result per idempotency key, forever (as a processor
    keeps it), outcomes decided by the token. Counts every call and every capture."""

    def __init__(self) -> None:
        self.results: dict[str, ChargeResult] = {}
        self.calls = 0
        self.flaky_seen = 0
        self.captures: dict[str, tuple[str, int]] = {}  # charge id -> (key, amount)

    async def charge(self, token: str, amount_minor: int, currency: str,
                     idempotency_key: str, metadata: Any = None,
                     **options: Any) -> ChargeResult:  # fmt: skip
        self.calls += 1
        if idempotency_key in self.results:
            return self.results[idempotency_key]
        # tok_flaky declines (softly) every other new charge: its retries go through.
        self.flaky_seen += token == "tok_flaky"
        declines = {"tok_soft": True, "tok_hard": True, "tok_ok": False,
                    "tok_flaky": self.flaky_seen % 2 == 1}[token]  # fmt: skip
        if not declines:
            charge_id = f"ch_{len(self.captures) + 1}"
            self.captures[charge_id] = (idempotency_key, amount_minor)
            result = ChargeResult(outcome=OutcomeKind.succeeded, charge_id=charge_id,
                                  amount_minor=amount_minor, currency=currency)  # fmt: skip
        else:
            code = "do_not_honor" if token == "tok_hard" else "insufficient_funds"
            result = ChargeResult(outcome=OutcomeKind.declined, decline_code=code)
        self.results[idempotency_key] = result
        return result

    async def inquire(self, idempotency_key: str) -> ChargeResult:
        known = self.results.get(idempotency_key)
        if known is None:
            return ChargeResult(outcome=OutcomeKind.errored, inquiry=InquiryStatus.not_found)
        return known

    async def refund(self, charge_id: str, amount_minor: int,
                     idempotency_key: str) -> RefundResult:  # fmt: skip
        raise AssertionError("billing never refunds")


class DirectHandle:
    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = self

    def remote(self, batch: bytes) -> Any:
        return self.core.apply(batch)


class CrashingRouter:
    """A scheduler's view of the router that may die right after a command was applied
    (the reply is lost with the process)."""

    def __init__(self, router: ShardRouter, rng: random.Random, rate: float) -> None:
        self._router = router
        self._rng = rng
        self._rate = rate
        self.shards = router.shards

    async def submit(self, command: Command) -> Reply:
        reply = await self._router.submit(command)
        if self._rng.random() < self._rate:
            raise Crash(f"killed after {type(command).__name__}")
        return reply


class Figures:
    def __init__(self) -> None:
        self.runs = 0
        self.concurrent_runs = 0
        self.crashes = 0
        self.started = time.perf_counter()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with scratch_database(request.param, tmp_path, request) as url:
        if request.param == "postgres":
            # The simulation kills schedulers, not the database server: commits need not
            # wait for the disk, which would otherwise be most of the test's time.
            engine = create_engine_for(url)
            async with engine.connect() as connection:
                name = url.rsplit("/", 1)[1]
                await connection.execute(sa.text(
                    f'ALTER DATABASE "{name}" SET synchronous_commit = off'))  # fmt: skip
                await connection.commit()
            await engine.dispose()
        await asyncio.to_thread(migrate, url)
        store = await Store.connect(url)
        try:
            yield store
        finally:
            await store.close()


def _local_date(instant_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(instant_ms / 1000, tz=ZONE).date()


def _is_period_start(day: dt.date, interval: Interval, anchor_day: int, anchor_month: int) -> bool:
    last_of_month = (day + dt.timedelta(days=1)).month != day.month
    on_day = day.day == anchor_day or (last_of_month and day.day < anchor_day)
    return on_day and (interval is Interval.month or day.month == anchor_month)


def _model_starts(sub: records.SubscriptionRow, last_day: dt.date) -> list[dt.date]:
    """Every period start the subscription must have been billed for, day by day."""
    end = last_day if sub.ended_on is None else min(last_day, sub.ended_on)
    if sub.status.value == "canceled" and not sub.cancel_at_period_end:
        end = min(end, sub.ended_on or end)
    starts = [sub.started_on] if sub.started_on <= end else []
    day = sub.started_on + dt.timedelta(days=1)
    while day <= end:
        if _is_period_start(day, sub.interval, sub.anchor_day, sub.anchor_month):
            starts.append(day)
        day += dt.timedelta(days=1)
    return starts


# A year of a thousand subscriptions is minutes of work on a busy machine, by design.
@pytest.mark.timeout(1800)
async def test_a_year_of_subscriptions_bills_every_period_exactly_once(store: Store) -> None:
    subscriptions_total = SUBSCRIPTIONS_BY_DIALECT[store.engine.dialect.name]
    rng = random.Random(2028)
    figures = Figures()
    clock = {"now_ms": _ms(YEAR_START)}

    def now_ms() -> int:
        return clock["now_ms"]

    cores = [AccountShardCore(i, store, clock_ms=now_ms, rng=random.Random(i))
             for i in range(SHARDS)]  # fmt: skip
    router = ShardRouter([DirectHandle(c) for c in cores], batch_max_wait_ms=1)
    network = CardNetwork()
    engine = store.engine

    async def token_for(method_id: str) -> str | None:
        row = await directory.payment_method(engine, method_id)
        return None if row is None else row.token

    janitor = RetryJanitor(router, store, network, clock_ms=now_ms, token_for=token_for)

    async def project() -> None:
        """The read models the janitor and the run read, caught up with the journal now
        (in production a background task does it ~100 ms after each commit)."""
        await router.drain()
        for shard_id in range(SHARDS):
            await store.project_pending(shard_id)

    # -- accounts, cards, plans ------------------------------------------------------------
    accounts = [f"acct_sim{i:04d}" for i in range(max(1, subscriptions_total * 2 // 5))]
    replies = await router.submit_many([OpenAccount(account_id=a, currency="USD")
                                        for a in accounts])  # fmt: skip
    assert all(r.outcome.result is Result.ok for r in replies)
    token_of: dict[str, str] = {}
    expiring: set[str] = set()
    async with engine.begin() as connection:
        for account in accounts:
            token = rng.choices(list(TOKENS), weights=list(TOKENS.values()))[0]
            token_of[account] = token
            # One card in ten expires in June 2028: its payer is reminded once.
            exp_year, exp_month = (2028, 6) if rng.random() < 0.1 else (2031, 12)
            if exp_year == 2028:
                expiring.add(f"pm_{account}")
            await connection.execute(sa.insert(tables_payers.account_profiles).values(
                account_id=account, name=f"Payer {account}", email=f"{account}@example.com",
                currency="USD"))  # fmt: skip
            await connection.execute(sa.insert(tables_payers.payment_methods).values(
                id=f"pm_{account}", account_id=account, token=token, type="card",
                brand="visa", last4="4242", exp_month=exp_month, exp_year=exp_year))  # fmt: skip
    plans = {
        Interval.month: await service.create_plan(
            engine, plan_id="plan_monthly", name="Monthly", amount_minor=2_999,
            currency="USD", interval=Interval.month),
        Interval.year: await service.create_plan(
            engine, plan_id="plan_yearly", name="Yearly", amount_minor=29_900,
            currency="USD", interval=Interval.year),
    }  # fmt: skip

    # -- who subscribes when -----------------------------------------------------------------
    plan_starts: list[tuple[dt.date, int]] = []  # (start date, subscription number)
    special = [dt.date(2028, 2, 29), dt.date(2028, 1, 31), dt.date(2028, 3, 31),
               dt.date(2028, 1, 30), dt.date(2028, 5, 31), dt.date(2028, 8, 29)]  # fmt: skip
    for n in range(subscriptions_total):
        if n < len(special) * 3:
            start = special[n % len(special)]
        elif rng.random() < 0.7:
            start = dt.date(2028, 1, 1)
        else:
            start = dt.date(2028, 1, 1) + dt.timedelta(days=rng.randrange(366))
        plan_starts.append((start, n))
    pending = sorted(plan_starts)

    async def subscribe(n: int, today: dt.date) -> None:
        account = accounts[n % len(accounts)]
        interval = Interval.year if rng.random() < 0.25 else Interval.month
        anchor_day: int | None
        if rng.random() < 0.5:
            anchor_day = None  # today's day
        else:
            anchor_day = rng.choice([1, 15, 28, 29, 30, 31, 29, 30, 31, rng.randint(1, 31)])
            if interval is Interval.year:
                anchor_day = min(anchor_day, (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[
                    today.month - 1])  # fmt: skip
        autopay = rng.random() < 0.85
        created = await service.create_subscription(
            engine, subscription_id=f"sub_{account.removeprefix('acct_')}_{n:05d}",
            account_id=account, account_currency="USD", plan_id=plans[interval].id,
            payment_method_id=f"pm_{account}", autopay=autopay, anchor_day=anchor_day,
            today=today,
        )  # fmt: skip
        assert not isinstance(created, service.BillingRejection), created

    async def cancel_some(today: dt.date) -> None:
        async with engine.connect() as connection:
            ids = [r.id for r in (await connection.execute(
                sa.select(subscriptions.c.id).where(subscriptions.c.status != "canceled")
                .order_by(subscriptions.c.id))).all()]  # fmt: skip
        for subscription_id in rng.sample(ids, k=min(len(ids), max(1, subscriptions_total // 400))):
            result = await service.cancel_subscription(
                engine, subscription_id=subscription_id, at_period_end=rng.random() < 0.6,
                today=today,
            )  # fmt: skip
            assert not isinstance(result, service.BillingRejection)

    # -- schedulers --------------------------------------------------------------------------
    def scheduler(crash_rate: float) -> BillingRunner:
        crashing = CrashingRouter(router, rng, crash_rate / 4)

        def fault(point: str) -> None:
            if rng.random() < crash_rate / 4:
                raise Crash(f"killed at {point}")

        gateway = Gateway(crashing, network, token_for)  # type: ignore[arg-type]
        return BillingRunner(crashing, engine, gateway, clock_ms=now_ms, zone=ZONE,  # type: ignore[arg-type]
                             lease_ms=LEASE_MS, fault=fault)  # fmt: skip

    async def run(crash_rate: float) -> None:
        figures.runs += 1
        try:
            await scheduler(crash_rate).run_once()
        except* Crash:
            figures.crashes += 1

    # -- the year ------------------------------------------------------------------------------
    instants = []
    at = YEAR_START
    while at < YEAR_END:
        instants.append(at)
        at = at + dt.timedelta(hours=rng.randint(10, 30), minutes=rng.randint(0, 59))
    instants = sorted({_ms(i) for i in instants} | {_ms(i) for i in DST_INSTANTS})
    # Steps whose schedulers cannot crash: each must bill every period already due, so no
    # claim may come later than the first such step on or after its period's start.
    calm_instants: list[int] = []
    for instant_ms in instants:
        clock["now_ms"] = instant_ms
        today = dt.datetime.fromtimestamp(instant_ms / 1000, tz=ZONE).date()
        while pending and pending[0][0] <= today:
            _, n = pending.pop(0)
            await subscribe(n, today)
        if rng.random() < 0.01:
            await cancel_some(today)
        crash_rate = 0.3 if rng.random() < 0.2 else 0.0
        if crash_rate == 0.0:
            calm_instants.append(instant_ms)
        if rng.random() < 0.3:
            figures.concurrent_runs += 1
            await asyncio.gather(run(crash_rate), run(crash_rate))
        else:
            await run(crash_rate)
        await janitor.run_once()
    assert not pending

    # -- quiesce: past every lease and the retry window, without crashes ------------------
    for hours in range(0, 15 * 24, 6):
        clock["now_ms"] = instants[-1] + LEASE_MS + hours * 3_600_000
        calm_instants.append(clock["now_ms"])
        await project()
        await janitor.run_once()
        await run(0.0)
    await router.drain()
    last_day = dt.datetime.fromtimestamp(clock["now_ms"] / 1000, tz=ZONE).date()

    # -- the audit -----------------------------------------------------------------------------
    async with engine.connect() as connection:
        sub_rows = [records.subscription_row(r) for r in (await connection.execute(
            records._subscriptions_query())).all()]  # fmt: skip
        billed = [records.invoice_row(r) for r in
                  (await connection.execute(sa.select(billing_invoices))).all()]  # fmt: skip
        outbox_keys = [r.dedupe_key for r in
                       (await connection.execute(sa.select(tables.outbox.c.dedupe_key))).all()]
    journal = await store.journal()
    issued = Counter(e.invoice_id for _, _, e in journal if isinstance(e, InvoiceIssued))
    payments_created = Counter(e.payment_id for _, _, e in journal
                               if isinstance(e, PaymentCreated))  # fmt: skip
    captured = Counter(e.payment_id for _, _, e in journal if isinstance(e, AttemptSucceeded))
    captures_by_key = Counter(key for key, _ in network.captures.values())

    sub_by_id = {sub.id: sub for sub in sub_rows}
    by_sub: dict[str | None, dict[dt.date, records.InvoiceRow]] = {}
    for row in billed:
        assert row.kind is InvoiceKind.period
        assert row.period_start is not None
        assert row.period_start not in by_sub.setdefault(row.subscription_id, {})
        by_sub[row.subscription_id][row.period_start] = row
    expected = missed = extra = 0
    for sub in sub_rows:
        starts = _model_starts(sub, last_day)
        expected += len(starts)
        got = by_sub.get(sub.id, {})
        missed_here = set(starts) - set(got)
        extra_here = set(got) - set(starts)
        if missed_here or extra_here:
            print("mismatch:", sub, sorted(missed_here), sorted(extra_here))
        missed += len(missed_here)
        extra += len(extra_here)
    duplicates = sum(n - 1 for n in issued.values() if n > 1)
    duplicate_payments = sum(n - 1 for n in payments_created.values() if n > 1)
    double_captures = sum(n - 1 for n in captured.values() if n > 1) + sum(
        n - 1 for n in captures_by_key.values() if n > 1)

    paid = unpaid = charging = autopay_rows = 0
    lag_days_max = 0
    for row in billed:
        claimed_on = dt.datetime.fromtimestamp(row.claimed_at_ms / 1000, tz=ZONE).date()
        assert row.period_start is not None
        assert claimed_on >= row.period_start, (row, claimed_on)  # never billed early
        first_calm_ms = next(i for i in calm_instants if _local_date(i) >= row.period_start)
        assert row.claimed_at_ms <= first_calm_ms, (row, _local_date(first_calm_ms))
        lag_days_max = max(lag_days_max, (claimed_on - row.period_start).days)
        if row.amount_minor > 0:
            assert issued[row.invoice_id] == 1, row
        assert row.state in (InvoiceState.charging, InvoiceState.settled), row
        if row.payment_method_id is None:
            assert row.payment_id is None
            continue
        autopay_rows += 1
        assert row.state is not InvoiceState.claimed, row
        assert row.payment_id is not None
        assert payments_created[row.payment_id] == 1, row
        if row.state is InvoiceState.charging:
            charging += 1
            continue
        if row.outcome is InvoiceOutcome.paid:
            paid += 1
            assert captured[row.payment_id] == 1, row
        elif row.outcome is InvoiceOutcome.unpaid:
            unpaid += 1
            assert captured[row.payment_id] == 0, row
            canceled = sub_by_id[row.subscription_id].status.value == "canceled"
            assert canceled or f"subscription_past_due:{row.invoice_id}" in outbox_keys
    for sub in sub_rows:
        rows = by_sub.get(sub.id, {}).values()
        has_unpaid = any(r.outcome is InvoiceOutcome.unpaid for r in rows)
        if sub.status.value != "canceled":
            assert (sub.status.value == "past_due") == has_unpaid, sub
        if token_of[sub.account_id] == "tok_ok":
            assert not has_unpaid, sub
    reminders = [k for k in outbox_keys if k.startswith("card_expiring:")]
    assert len(reminders) == len(set(reminders))
    assert {k.split(":")[1] for k in reminders} <= expiring

    seconds = time.perf_counter() - figures.started
    print(
        f"\nbilling year ({store.engine.dialect.name}): subscriptions={len(sub_rows)} "
        f"periods expected={expected} billed={len(billed)} missed={missed} extra={extra} "
        f"duplicates={duplicates} autopay periods={autopay_rows} payments duplicated="
        f"{duplicate_payments} captures doubled={double_captures} paid={paid} unpaid="
        f"{unpaid} still in retries={charging} processor calls={network.calls} "
        f"captures={len(network.captures)} runs={figures.runs} (concurrent pairs="
        f"{figures.concurrent_runs}, crashed={figures.crashes}) card reminders="
        f"{len(reminders)} max billing lag={lag_days_max} d, {seconds:.1f} s"
    )
    assert expected > subscriptions_total * 7
    assert missed == 0
    assert extra == 0
    assert duplicates == 0
    assert duplicate_payments == 0
    assert double_captures == 0
    assert figures.crashes > 0
    assert figures.concurrent_runs > 0
    assert unpaid > 0
    assert paid > 0
