"""The router's batching and back-pressure and the shard core's ordering, group commit and
failure rule, driven in-process with a recording store in place of the database."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from payportal.actors import AccountShardCore, Overloaded, ShardOptions, ShardRouter, shard_for
from payportal.engine import (
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
    Result,
)

from .shard_doubles import RecordingStore

CARD = PaymentMethodRef(id="pm_1")


class DirectHandle:
    """Stands in for a Ray actor handle: ``handle.apply.remote(batch)`` awaits the core."""

    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.calls = 0
        self.apply = self

    def remote(self, batch: bytes) -> Any:
        self.calls += 1
        return self.core.apply(batch)


def _payment(account_id: str, n: int, amount_minor: int = 100) -> CreatePayment:
    return CreatePayment(
        account_id=account_id, payment_id=f"pay_{n}", attempt_id=f"att_{n}",
        idempotency_key=f"key_{n}", amount_minor=amount_minor, currency="USD",
        payment_method=CARD,
    )  # fmt: skip


async def test_commands_for_one_shard_travel_in_one_call_and_replies_keep_their_order() -> None:
    store = RecordingStore()
    handle = DirectHandle(AccountShardCore(0, store))
    router = ShardRouter([handle], batch_max_items=256, batch_max_wait_ms=50)
    accounts = [f"acct_{i}" for i in range(100)]
    replies = await router.submit_many(
        [OpenAccount(account_id=a, currency="USD") for a in accounts]
    )
    assert handle.calls == 1
    assert [r.outcome.result for r in replies] == [Result.ok] * 100
    assert len(store.commits) == 1  # group commit: one transaction for the batch
    assert sorted(c.account_id for c in store.commits[0]) == sorted(accounts)


async def test_a_full_batch_is_sent_without_waiting_for_the_timer() -> None:
    handle = DirectHandle(AccountShardCore(0, RecordingStore()))
    router = ShardRouter([handle], batch_max_items=10, batch_max_wait_ms=60_000)
    replies = await asyncio.wait_for(
        router.submit_many([OpenAccount(account_id=f"a{i}", currency="USD") for i in range(30)]),
        timeout=5,
    )
    assert len(replies) == 30
    assert handle.calls == 3


async def test_commands_route_to_the_shard_their_account_hashes_to() -> None:
    handles = [DirectHandle(AccountShardCore(i, RecordingStore())) for i in range(3)]
    router = ShardRouter(handles)
    accounts = [f"acct_{i}" for i in range(60)]
    await router.submit_many([OpenAccount(account_id=a, currency="USD") for a in accounts])
    for account_id in accounts:
        owner = shard_for(account_id, 3)
        assert handles[owner].core.account(account_id) is not None
        assert all(h.core.account(account_id) is None for i, h in enumerate(handles) if i != owner)


async def test_a_full_queue_answers_overloaded_instead_of_growing() -> None:
    router = ShardRouter([DirectHandle(AccountShardCore(0, RecordingStore()))], queue_max=5)
    futures = [
        router.submit_nowait(OpenAccount(account_id=f"a{i}", currency="USD")) for i in range(5)
    ]
    with pytest.raises(Overloaded) as raised:
        router.submit_nowait(OpenAccount(account_id="one_too_many", currency="USD"))
    assert raised.value.retry_after_ms > 0
    await asyncio.gather(*futures)
    assert router.outstanding == 0
    await router.submit(OpenAccount(account_id="now_fits", currency="USD"))


async def test_one_accounts_commands_in_a_batch_apply_in_order() -> None:
    router = ShardRouter([DirectHandle(AccountShardCore(0, RecordingStore()))])
    await router.submit(OpenAccount(account_id="a", currency="USD"))
    await router.submit(
        IssueInvoice(
            account_id="a", invoice_id="inv", number="1", amount_minor=250, currency="USD",
            due_date=dt.date(2026, 1, 1),
        )
    )  # fmt: skip
    commands: list[Any] = []
    for n in range(3):
        commands.append(_payment("a", n))
        commands.append(
            RecordOutcome(
                account_id="a", payment_id=f"pay_{n}", attempt_id=f"att_{n}",
                outcome=OutcomeKind.succeeded,
            )
        )  # fmt: skip
    replies = await router.submit_many(commands)
    captured = [r.payment for r in replies[1::2]]
    assert [p.amount_unapplied_minor for p in captured if p] == [0, 0, 50]
    assert replies[-1].balance is not None
    assert replies[-1].balance.credit_minor == 50
    # Each reply is a snapshot taken when its command ran, not the final state.
    assert replies[0].payment is not None
    assert replies[0].payment.status == "processing"


async def test_a_failed_commit_forgets_memory_and_stops_the_shard() -> None:
    store = RecordingStore()
    stopped: list[BaseException] = []
    core = AccountShardCore(0, store, on_commit_failure=stopped.append)
    router = ShardRouter([DirectHandle(core)])
    await router.submit(OpenAccount(account_id="a", currency="USD"))
    store.fail_next = True
    with pytest.raises(ConnectionError):
        await router.submit(
            IssueInvoice(
                account_id="a", invoice_id="inv", number="1", amount_minor=100, currency="USD",
                due_date=dt.date(2026, 1, 1),
            )
        )  # fmt: skip
    assert len(stopped) == 1
    assert core.account("a") is None  # nothing that is not durable survives
    # Sent again (as Ray does after the restart) it applies once, from the durable state.
    reply = await router.submit(
        IssueInvoice(
            account_id="a", invoice_id="inv", number="1", amount_minor=100, currency="USD",
            due_date=dt.date(2026, 1, 1),
        )
    )  # fmt: skip
    assert reply.outcome.result is Result.ok
    assert reply.balance is not None
    assert reply.balance.outstanding_minor == 100


async def test_hot_accounts_are_checkpointed_after_many_events_not_every_one() -> None:
    store = RecordingStore()
    core = AccountShardCore(
        0, store, options=ShardOptions(checkpoint_every_events=10, checkpoint_interval_ms=10**9)
    )
    router = ShardRouter([DirectHandle(core)], batch_max_items=1)
    await router.submit(OpenAccount(account_id="a", currency="USD"))
    for n in range(25):
        await router.submit(_payment("a", n))
    flags = [change.checkpoint for changes in store.commits for change in changes]
    assert len(flags) == 26
    assert sum(flags) == 2


async def test_a_checkpoint_names_the_payments_changed_since_the_previous_one() -> None:
    store = RecordingStore()
    core = AccountShardCore(
        0, store, options=ShardOptions(checkpoint_every_events=10, checkpoint_interval_ms=10**9)
    )
    router = ShardRouter([DirectHandle(core)], batch_max_items=1)
    await router.submit(OpenAccount(account_id="a", currency="USD"))
    for n in range(25):
        await router.submit(_payment("a", n))
    named = [c.checkpoint_payments for cs in store.commits for c in cs if c.checkpoint]
    # The account's first checkpoint comes after its opening and nine payments.
    assert named == [{f"pay_{n}" for n in range(9)}, {f"pay_{n}" for n in range(9, 19)}]
    assert await core.flush_checkpoints() == 1
    assert store.commits[-1][0].checkpoint_payments == {f"pay_{n}" for n in range(19, 25)}


async def test_idle_accounts_are_checkpointed_then_evicted() -> None:
    store = RecordingStore()
    now_ms = [0]
    core = AccountShardCore(
        0, store, clock_ms=lambda: now_ms[0],
        options=ShardOptions(idle_evict_ms=1_000, evict_scan_every_batches=1,
                             checkpoint_interval_ms=10**9),
    )  # fmt: skip
    router = ShardRouter([DirectHandle(core)], batch_max_items=1)
    await router.submit(OpenAccount(account_id="idle", currency="USD"))
    now_ms[0] = 5_000
    await router.submit(OpenAccount(account_id="busy", currency="USD"))
    assert core.account("idle") is None
    assert core.account("busy") is not None
    assert store.commits[-1][0].checkpoint
    reply = await router.submit(OpenAccount(account_id="idle", currency="USD"))
    assert reply.outcome.result is Result.exists  # activated again from the store


class GatedStore(RecordingStore):
    """Holds every commit until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def commit(self, shard_id: int, changes: list[Any]) -> None:
        await self.gate.wait()
        await super().commit(shard_id, changes)


async def test_a_reply_without_events_waits_for_the_commit_it_read_from() -> None:
    # Pipelined shards apply batch N+1 while batch N commits. An ``exists`` answer writes
    # nothing, yet it describes batch N's state: it must not leave before N is durable.
    store = GatedStore()
    core = AccountShardCore(0, store)
    router = ShardRouter([DirectHandle(core)], batch_max_items=1)
    opened = asyncio.ensure_future(router.submit(OpenAccount(account_id="a", currency="USD")))
    await asyncio.sleep(0.05)
    replayed = asyncio.ensure_future(router.submit(OpenAccount(account_id="a", currency="USD")))
    await asyncio.sleep(0.05)
    assert not opened.done()
    assert not replayed.done()
    store.gate.set()
    first, second = await asyncio.gather(opened, replayed)
    assert first.outcome.result is Result.ok
    assert second.outcome.result is Result.exists
    assert len(store.commits) == 1
