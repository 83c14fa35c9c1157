"""Split checkpoints, on SQLite and PostgreSQL: a checkpoint is the account's core plus one
row per payment, and writes only the payments changed since the account's previous one.

Method: the real shard core (``AccountShardCore``, no Ray) over the real ``Store``, with
the rows each commit writes counted as the store prepares them; an account's loaded state
is compared with the shard's live one, sometimes after deleting the journal the
checkpoint covers, which proves the checkpoint alone carries it. Hypothesis generates
command histories with checkpoints, flushes, evictions and restarts at random points.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payportal.actors import AccountShardCore, ShardOptions
from payportal.actors.protocol import BATCH_ENCODER, REPLIES_DECODER, Reply
from payportal.engine import (
    AccountState,
    CancelPayment,
    Command,
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    PaymentStatus,
    ReadAccount,
    RecordOutcome,
    RefundPayment,
    ReplacePaymentMethod,
    Result,
    SettleCharge,
    StartRetry,
    VoidInvoice,
)
from payportal.persistence import AccountChange, Store, tables

from .conftest import AccountDriver

S = PaymentStatus
VISA = PaymentMethodRef(id="pm_visa", brand="visa")
MASTERCARD = PaymentMethodRef(id="pm_mc", brand="mastercard")
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
IDLE_EVICT_MS = 60_000
# Histories per database: enough to reach restarts between checkpoints of every kind of
# payment change, few enough for well under a minute on both databases.
EXAMPLES = 30


class Clock:
    def __init__(self) -> None:
        self.now_ms = T0_MS

    def __call__(self) -> int:
        return self.now_ms


class Written:
    """The checkpoint rows of every commit the store prepares, as it will write them."""

    def __init__(self, store: Store) -> None:
        self.commits: list[tuple[dict[str, Any], dict[tuple[str, str], Any]]] = []
        prepare = store.prepare

        def recording(shard_id: int, changes: list[AccountChange]) -> Any:
            rows = prepare(shard_id, changes)
            if rows.checkpoints:
                self.commits.append((dict(rows.checkpoints), dict(rows.payment_checkpoints)))
            return rows

        store.prepare = recording  # type: ignore[method-assign]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store.connect(database_url)
    try:
        yield store
    finally:
        await store.close()


def _shard(store: Store, clock: Clock, *, every: int = 10**6) -> AccountShardCore:
    options = ShardOptions(
        checkpoint_every_events=every, checkpoint_interval_ms=10**12,
        idle_evict_ms=IDLE_EVICT_MS, evict_scan_every_batches=1,
    )  # fmt: skip
    return AccountShardCore(
        0, store, options=options, clock_ms=clock, rng=random.Random(0),
        on_commit_failure=lambda error: None,
    )  # fmt: skip


async def _run(shard: AccountShardCore, *commands: Command) -> list[Reply]:
    return REPLIES_DECODER.decode(await shard.apply(BATCH_ENCODER.encode(list(commands))))


def _payment(account_id: str, n: int, amount_minor: int = 100) -> CreatePayment:
    return CreatePayment(
        account_id=account_id, payment_id=f"pay_{account_id}_{n}",
        attempt_id=f"att_{account_id}_{n}", idempotency_key=f"key_{n}",
        amount_minor=amount_minor, currency="USD", payment_method=VISA,
    )  # fmt: skip


def _success(account_id: str, n: int) -> RecordOutcome:
    return RecordOutcome(
        account_id=account_id, payment_id=f"pay_{account_id}_{n}",
        attempt_id=f"att_{account_id}_{n}", outcome=OutcomeKind.succeeded,
        charge_id=f"ch_{account_id}_{n}",
    )  # fmt: skip


async def _open_with_invoice(shard: AccountShardCore, account_id: str) -> None:
    replies = await _run(
        shard,
        OpenAccount(account_id=account_id, currency="USD"),
        IssueInvoice(
            account_id=account_id, invoice_id=f"inv_{account_id}", number="1",
            amount_minor=10**9, currency="USD", due_date=dt.date(2026, 3, 1),
        ),
    )  # fmt: skip
    assert all(r.outcome.result is Result.ok for r in replies)


async def _drop_journal_through(store: Store, account_id: str, version: int) -> None:
    j = tables.journal
    async with store.engine.begin() as connection:
        await connection.execute(
            sa.delete(j).where(j.c.account_id == account_id, j.c.version <= version)
        )


async def _checkpoint_version(store: Store, account_id: str) -> int:
    cp = tables.account_checkpoints
    async with store.engine.connect() as connection:
        found = await connection.execute(
            sa.select(cp.c.version).where(cp.c.account_id == account_id)
        )
        return int(found.scalar() or 0)


async def _payment_rows(store: Store, account_id: str) -> dict[str, int]:
    pc = tables.account_payment_checkpoints
    async with store.engine.connect() as connection:
        found = await connection.execute(
            sa.select(pc.c.payment_id, pc.c.version).where(pc.c.account_id == account_id)
        )
        return {payment_id: version for payment_id, version in found}


def _copy(state: AccountState | None) -> AccountState | None:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=AccountState | None)


async def test_a_checkpoint_writes_only_the_payments_changed_since_the_previous_one(
    store: Store,
) -> None:
    written = Written(store)
    shard = _shard(store, Clock(), every=20)  # a checkpoint every 10 payments
    await _open_with_invoice(shard, "hot")
    for n in range(200):
        await _run(shard, _payment("hot", n), _success("hot", n))

    checkpoints = [(cores["hot"], payments) for cores, payments in written.commits]
    assert len(checkpoints) == 20
    for index, (_, payments) in enumerate(checkpoints):
        # Each checkpoint: the payments of its own window (the first window opens with
        # the account's two events, so it closes a payment early), nothing older.
        window = range(max(0, 10 * index - 1), 10 * index + 9)
        assert {payment_id for _, payment_id in payments} == {
            f"pay_hot_{n}" for n in window
        }, index
    sizes = [len(core[2]) + sum(len(row[3]) for row in payments.values())
             for core, payments in checkpoints]  # fmt: skip
    # What the twentieth checkpoint writes is what the second one did, although the
    # account then holds ten times the payments.
    assert sizes[-1] <= sizes[1] * 1.1, sizes
    assert len(await _payment_rows(store, "hot")) == 199
    live = shard.account("hot")
    version = await _checkpoint_version(store, "hot")
    await _drop_journal_through(store, "hot", version)
    assert await store.load_account("hot") == live


async def test_a_checkpoint_of_named_payments_leaves_the_other_rows_as_they_are(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    account.invoice(50_000)
    paid = [account.pay(1_000) for _ in range(5)]
    await store.commit(0, [account.change(checkpoint=True)])  # no names: every payment
    first = account.version_committed
    assert await _payment_rows(store, "acct_a") == dict.fromkeys(paid, first)

    newer = account.pay(2_000)
    change = account.change(checkpoint=True)
    change.checkpoint_payments = {newer}
    await store.commit(0, [change])

    assert await _payment_rows(store, "acct_a") == {
        **dict.fromkeys(paid, first), newer: account.version_committed,
    }  # fmt: skip
    assert await store.load_account("acct_a") == account.state
    await _drop_journal_through(store, "acct_a", account.version_committed)
    assert await store.load_account("acct_a") == account.state


async def test_a_late_checkpoint_moves_no_payment_row_back(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    account.invoice(5_000)
    payment_id = account.pay(1_000)
    await store.commit(0, [account.change(checkpoint=True)])
    stale = _copy(account.state)
    assert stale is not None
    account.run(
        RefundPayment(account_id="acct_a", payment_id=payment_id, refund_id="re_1",
                      amount_minor=400)
    )  # fmt: skip
    await store.commit(0, [account.change(checkpoint=True)])
    # A delayed checkpoint-only write of the older state, every payment named.
    await store.commit(0, [AccountChange(
        account_id="acct_a", version_before=stale.version, events=[], entries=[],
        state=stale, checkpoint=True,
    )])  # fmt: skip

    assert await _payment_rows(store, "acct_a") == {payment_id: account.version_committed}
    await _drop_journal_through(store, "acct_a", account.version_committed)
    loaded = await store.load_account("acct_a")
    assert loaded == account.state
    assert loaded is not None
    assert loaded.refunds == {"re_1": payment_id}


async def test_payments_the_replay_at_load_touched_are_in_the_next_checkpoint(
    store: Store,
) -> None:
    clock = Clock()
    first = _shard(store, clock)
    await _open_with_invoice(first, "acct_a")
    for n in range(3):
        await _run(first, _payment("acct_a", n), _success("acct_a", n))
    assert await first.flush_checkpoints() == 1
    # Past the checkpoint, in the journal only: a refund of payment 0.
    refund = RefundPayment(account_id="acct_a", payment_id="pay_acct_a_0", refund_id="re_1",
                           amount_minor=30)  # fmt: skip
    assert (await _run(first, refund))[0].outcome.result is Result.ok

    restarted = _shard(store, clock)  # memory gone, as after a crash
    written = Written(store)
    await _run(restarted, _payment("acct_a", 3), _success("acct_a", 3))
    assert await restarted.flush_checkpoints() == 1

    [(_, payments)] = written.commits
    assert {payment_id for _, payment_id in payments} == {"pay_acct_a_0", "pay_acct_a_3"}
    live = restarted.account("acct_a")
    await _drop_journal_through(store, "acct_a", await _checkpoint_version(store, "acct_a"))
    assert await store.load_account("acct_a") == live


async def test_a_checkpoint_from_before_the_split_loads_and_the_next_one_writes_every_payment(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_old")
    account.open()
    account.invoice(50_000)
    paid = [account.pay(1_000) for _ in range(4)]
    account.run(
        RefundPayment(account_id="acct_old", payment_id=paid[0], refund_id="re_1",
                      amount_minor=250)
    )  # fmt: skip
    await store.commit(0, [account.change()])
    # The whole state in the core's column, payments inline, as written before the split.
    async with store.engine.begin() as connection:
        await connection.execute(
            sa.insert(tables.account_checkpoints).values(
                account_id="acct_old", version=account.version_committed,
                state=msgspec.msgpack.encode(account.state),
            )
        )  # fmt: skip
    account.pay(3_000)
    await store.commit(0, [account.change()])
    await _drop_journal_through(store, "acct_old", account.version_committed - 2)
    assert await store.load_account("acct_old") == account.state

    written = Written(store)
    shard = _shard(store, Clock())
    await _run(shard, _payment("acct_old", 99), _success("acct_old", 99))
    assert await shard.flush_checkpoints() == 1

    [(cores, payments)] = written.commits
    state = shard.account("acct_old")
    assert state is not None
    assert {payment_id for _, payment_id in payments} == set(state.payments)
    core = msgspec.msgpack.decode(cores["acct_old"][2], type=AccountState)
    assert (core.payments, core.idempotency, core.refunds) == ({}, {}, {})
    await _drop_journal_through(store, "acct_old", state.version)
    assert await store.load_account("acct_old") == state


# -- random histories -------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("pay"), st.integers(1, 5_000), st.integers(0, 3)),
        st.tuples(st.just("pay"), st.integers(1, 5_000), st.just(3)),
        st.tuples(st.just("succeed"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("decline"), st.integers(0, 30), st.integers(0, 2)),
        st.tuples(st.just("retry"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("replace"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("refund"), st.integers(0, 30), st.integers(1, 5_000)),
        st.tuples(st.just("settle"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("invoice"), st.integers(1, 9_000), st.just(0)),
        st.tuples(st.just("void"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("restart"), st.just(0), st.just(0)),
        st.tuples(st.just("flush"), st.just(0), st.just(0)),
        st.tuples(st.just("evict"), st.just(0), st.just(0)),
    ),
    min_size=10,
    max_size=50,
)
# What each command needs of the payment it is aimed at (else it is refused, which the
# histories also do, less often).
WANTED = {
    "succeed": {S.processing}, "decline": {S.processing}, "retry": {S.retry_scheduled},
    "replace": {S.requires_payment_method},
    "cancel": {S.retry_scheduled, S.requires_payment_method},
    "refund": {S.succeeded, S.partially_refunded}, "settle": {S.succeeded, S.partially_refunded},
}  # fmt: skip
DECLINES = (
    (OutcomeKind.declined, "insufficient_funds"),  # soft: a retry is scheduled
    (OutcomeKind.declined, "stolen_card"),  # hard: needs another payment method
    (OutcomeKind.errored, "processing_error"),  # technical: sent again
)
histories = itertools.count(1)


class History:
    """One account's commands through a shard, which may restart (memory lost) between."""

    def __init__(self, store: Store, every: int) -> None:
        n = next(histories)
        self.account_id = f"acct_h{n:04d}"
        self.other_id = f"acct_o{n:04d}"  # its batches let the account idle out
        self.store = store
        self.every = every
        self.clock = Clock()
        self.shard = _shard(store, self.clock, every=every)
        self.ids = itertools.count(1)

    async def start(self) -> None:
        """The account, an invoice, and a payment in each state the commands move from."""
        await _open_with_invoice(self.shard, self.account_id)
        await self.play("pay", 5_000, 1)  # processing
        await self.play("pay", 7_000, 3)  # succeeded
        # Declined: waiting for a retry, and needing another payment method.
        for outcome, code in DECLINES[:2]:
            await self.play("pay", 3_000, 1)
            [(payment_id, payment)] = [
                (p.payment_id, p) for p in self.state.payments.values()
                if p.status is S.processing and p.amount_minor == 3_000
            ]  # fmt: skip
            await self.run(RecordOutcome(
                account_id=self.account_id, payment_id=payment_id,
                attempt_id=payment.current_attempt.attempt_id, outcome=outcome,
                decline_code=code,
            ))  # fmt: skip

    def new_id(self, prefix: str) -> str:
        # Payment, attempt and charge ids are unique across accounts (the journal's guards).
        return f"{prefix}_{self.account_id}_{next(self.ids)}"

    @property
    def state(self) -> AccountState:
        state = self.shard.account(self.account_id)
        assert state is not None
        return state

    def _pick(self, ids: Any, index: int) -> str:
        ordered = sorted(ids)
        return ordered[index % len(ordered)] if ordered else "missing"

    async def run(self, *commands: Command) -> None:
        # Rejections are fine here (a payment not in a state for the command): they write
        # nothing, which is as much part of a history as what they would have done.
        await _run(self.shard, *commands)

    async def play(self, kind: str, a: int, b: int) -> None:
        account_id = self.account_id
        if kind == "pay":
            payment_id, attempt_id = self.new_id("pay"), self.new_id("att")
            payment = CreatePayment(
                account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                idempotency_key=payment_id if b else "key_reused", amount_minor=a,
                currency="USD", payment_method=VISA,
            )  # fmt: skip
            if b == 3:  # created and captured in one batch: one change, two events
                await self.run(payment, RecordOutcome(
                    account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                    outcome=OutcomeKind.succeeded, charge_id=f"ch_{attempt_id}",
                ))  # fmt: skip
            else:
                await self.run(payment)
            return
        if kind == "invoice":
            await self.run(IssueInvoice(
                account_id=account_id, invoice_id=self.new_id("inv"), number="1",
                amount_minor=a, currency="USD", due_date=dt.date(2026, 2, 1),
            ))  # fmt: skip
            return
        if kind == "void":
            invoice_id = self._pick(self.state.invoices, a)
            await self.run(VoidInvoice(account_id=account_id, invoice_id=invoice_id))
            return
        if kind == "restart":
            live = _copy(self.state)
            self.shard = _shard(self.store, self.clock, every=self.every)
            assert await self.store.load_account(account_id) == live
            await self.run(ReadAccount(account_id=account_id))  # loaded back into memory
            return
        if kind == "flush":
            await self.shard.flush_checkpoints()
            return
        if kind == "evict":
            self.clock.now_ms += IDLE_EVICT_MS
            await self.run(OpenAccount(account_id=self.other_id, currency="USD"))
            assert self.shard.account(account_id) is None
            await self.run(ReadAccount(account_id=account_id))
            return
        aimed = [p.payment_id for p in self.state.payments.values() if p.status in WANTED[kind]]
        payment_id = self._pick(aimed if aimed and a % 5 else self.state.payments, a)
        payment = self.state.payments.get(payment_id)
        attempt_id = payment.current_attempt.attempt_id if payment is not None else "missing"
        if kind == "succeed":
            await self.run(RecordOutcome(
                account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                outcome=OutcomeKind.succeeded, charge_id=f"ch_{attempt_id}",
            ))  # fmt: skip
        elif kind == "decline":
            outcome, code = DECLINES[b]
            await self.run(RecordOutcome(
                account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                outcome=outcome, decline_code=code,
            ))  # fmt: skip
        elif kind == "retry":
            if payment is not None and payment.next_retry_at_ms is not None:
                self.clock.now_ms = max(self.clock.now_ms, payment.next_retry_at_ms)
            await self.run(StartRetry(
                account_id=account_id, payment_id=payment_id, attempt_id=self.new_id("att"),
            ))  # fmt: skip
        elif kind == "replace":
            await self.run(ReplacePaymentMethod(
                account_id=account_id, payment_id=payment_id,
                attempt_id=self.new_id("att"), payment_method=MASTERCARD,
            ))  # fmt: skip
        elif kind == "cancel":
            await self.run(CancelPayment(account_id=account_id, payment_id=payment_id))
        elif kind == "refund":
            if payment is not None:
                b = min(b, max(1, payment.amount_minor - payment.amount_refunded_minor))
            await self.run(RefundPayment(
                account_id=account_id, payment_id=payment_id, refund_id=self.new_id("re"),
                amount_minor=b,
            ))  # fmt: skip
        else:
            assert kind == "settle", kind
            amount_minor = payment.amount_minor if payment is not None else 1
            charge_id = (payment.captured_charge_id if payment is not None else None) or "ch_x"
            await self.run(SettleCharge(
                account_id=account_id, payment_id=payment_id, charge_id=charge_id,
                payout_id=self.new_id("po"), amount_minor=amount_minor,
                fee_minor=amount_minor // 30, currency="USD",
            ))  # fmt: skip


@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(ops=operations, every=st.integers(1, 8))
async def test_the_loaded_state_equals_the_live_one_whatever_the_checkpoints(
    store: Store, ops: list[tuple[str, int, int]], every: int
) -> None:
    history = History(store, every)
    await history.start()
    for kind, a, b in ops:
        await history.play(kind, a, b)
    live = history.state
    assert await store.load_account(history.account_id) == live
    # The checkpoint (with its payment rows) and only the journal past it.
    await history.shard.flush_checkpoints()
    version = await _checkpoint_version(store, history.account_id)
    await _drop_journal_through(store, history.account_id, version)
    assert await store.load_account(history.account_id) == live
