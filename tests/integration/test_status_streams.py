"""The status publisher announces only committed journal rows, in journal order, exactly
once: real account events are committed through the Store (SQLite and PostgreSQL) and
published into both stream implementations (the in-process stand-in and real Redis,
under a per-test key prefix), then the publisher is re-run from an older cursor and
crashed between an append and its cursor save."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from payportal.engine import OutcomeKind
from payportal.live import (
    MemoryStatusStreams,
    RedisStatusStreams,
    StatusEntry,
    StatusEvent,
    StatusPublisher,
    StatusStreams,
)
from payportal.persistence import Store, tables
from payportal.persistence.tables_status import status_cursors

from .conftest import AccountDriver

SHARD = 1
STATUS_EVENTS = {
    "payment_created", "attempt_succeeded", "attempt_declined", "attempt_errored",
    "retry_started", "retry_deferred", "retries_exhausted", "payment_method_replaced",
    "payment_canceled", "payment_refunded", "payment_disputed",
}  # fmt: skip


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def streams(request: pytest.FixtureRequest) -> AsyncIterator[StatusStreams]:
    if request.param == "memory":
        memory = MemoryStatusStreams()
        # These tests read what was published: a reader is there, so nothing is skipped.
        with memory.subscription():
            yield memory
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"payportal:test:{uuid.uuid4().hex}:"
    redis_streams = RedisStatusStreams.from_url(url, key_prefix=prefix)
    try:
        yield redis_streams
    finally:
        client = redis_streams._redis
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await redis_streams.close()


async def _journal(store: Store) -> list[Any]:
    j = tables.journal
    async with store.engine.connect() as connection:
        query = sa.select(j.c.id, j.c.account_id, j.c.event_type).order_by(j.c.id)
        return list(await connection.execute(query))


async def _published(streams: StatusStreams, account_id: str) -> list[tuple[int, StatusEvent]]:
    entries = await streams.read_after(account_id, 0, count=10_000)
    return [(e.id, msgspec.json.decode(e.data, type=StatusEvent)) for e in entries]


def _paying_account(name: str) -> AccountDriver:
    account = AccountDriver(f"acct_{name}_{uuid.uuid4().hex[:8]}")
    account.open()
    account.invoice(5_000, due_in_days=1)
    account.pay(2_000, outcome=OutcomeKind.declined, decline_code="insufficient_funds")
    account.pay(3_000)
    return account


async def test_events_appear_only_after_commit_and_in_journal_order(
    store: Store, streams: StatusStreams
) -> None:
    publisher = StatusPublisher(store, streams, shard_ids=[SHARD])
    account = _paying_account("order")
    change = account.change()

    assert await publisher.run_once() == 0  # decided, not committed: nothing to say
    assert await _published(streams, account.account_id) == []

    await store.commit(SHARD, [change])
    assert await _published(streams, account.account_id) == []  # the publisher announces
    appended = await publisher.run_once()

    expected = [r.id for r in await _journal(store) if r.event_type in STATUS_EVENTS]
    published = await _published(streams, account.account_id)
    assert appended == len(expected) == 4
    assert [entry_id for entry_id, _ in published] == expected
    assert [(e.status, e.version) for _, e in published] == [
        ("processing", 3), ("retry_scheduled", 4), ("processing", 5), ("succeeded", 6),
    ]
    declined, succeeded = published[1][1], published[3][1]
    assert declined.next_retry_at is not None
    assert succeeded.amount_applied == 3_000
    assert {e.account for _, e in published} == {account.account_id}
    assert await publisher.cursor(SHARD) == (await _journal(store))[-1].id

    # A commit the database refuses (the same versions again) announces nothing.
    with pytest.raises(IntegrityError):
        await store.commit(SHARD, [change])  # what a zombie shard would try to write
    assert await publisher.run_once() == 0
    assert await _published(streams, account.account_id) == published


async def test_rerunning_the_publisher_from_an_older_cursor_publishes_no_duplicates(
    store: Store, streams: StatusStreams
) -> None:
    first, second = _paying_account("first"), _paying_account("second")
    await store.commit(SHARD, [first.change(), second.change()])
    publisher = StatusPublisher(store, streams, shard_ids=[SHARD], batch_rows=3)
    assert await publisher.run_once() == 8
    before = {a.account_id: await _published(streams, a.account_id) for a in (first, second)}

    async with store.engine.begin() as connection:
        await connection.execute(sa.update(status_cursors).values(journal_id=0))
    again = StatusPublisher(store, streams, shard_ids=[SHARD])

    assert await again.run_once() == 0
    after = {a.account_id: await _published(streams, a.account_id) for a in (first, second)}
    assert after == before
    assert await again.cursor(SHARD) == (await _journal(store))[-1].id


class _CrashBeforeCursorSave(StatusPublisher):
    async def save_cursor(self, shard_id: int, journal_id: int) -> None:
        raise RuntimeError("killed between the append and the cursor save")


async def test_a_crash_between_append_and_cursor_save_is_harmless(
    store: Store, streams: StatusStreams
) -> None:
    account = _paying_account("crash")
    await store.commit(SHARD, [account.change()])
    crashing = _CrashBeforeCursorSave(store, streams, shard_ids=[SHARD])
    with pytest.raises(RuntimeError, match="killed"):
        await crashing.run_once()
    assert len(await _published(streams, account.account_id)) == 4  # appended, not saved
    assert await crashing.cursor(SHARD) == 0

    account.pay(1_000)  # more happens while the publisher is down
    await store.commit(SHARD, [account.change()])
    restarted = StatusPublisher(store, streams, shard_ids=[SHARD])

    assert await restarted.run_once() == 2  # only the new payment's two events
    published = await _published(streams, account.account_id)
    ids = [entry_id for entry_id, _ in published]
    assert ids == sorted(set(ids))
    expected = [r.id for r in await _journal(store) if r.event_type in STATUS_EVENTS]
    assert ids == expected


async def test_a_stream_refuses_ids_at_or_below_its_last(streams: StatusStreams) -> None:
    account_id = f"acct_{uuid.uuid4().hex[:8]}"
    assert await streams.append(account_id, StatusEntry(7, "pay_a", b"{}"))
    assert not await streams.append(account_id, StatusEntry(7, "pay_a", b"{}"))
    assert not await streams.append(account_id, StatusEntry(3, "pay_a", b"{}"))
    assert await streams.append(account_id, StatusEntry(9, "pay_b", b"{}"))
    assert [e.id for e in await streams.read_after(account_id, 0)] == [7, 9]
    assert [e.id for e in await streams.read_after(account_id, 7)] == [9]
    assert await streams.first_id(account_id) == 7
    assert await streams.wait_after(account_id, 9, timeout_s=0.05) == []


async def test_the_stand_in_keeps_the_newest_entries_and_forgets_idle_streams() -> None:
    streams = MemoryStatusStreams(length_max=3)
    for entry_id in range(1, 6):
        assert await streams.append("acct_a", StatusEntry(entry_id, "pay_a", b"{}"))
    assert [e.id for e in await streams.read_after("acct_a", 0)] == [3, 4, 5]
    assert not await streams.append("acct_a", StatusEntry(2, "pay_a", b"{}"))  # last id kept

    forgetful = MemoryStatusStreams(idle_ttl_s=0)
    await forgetful.append("acct_a", StatusEntry(1, "pay_a", b"{}"))
    await forgetful.append("acct_b", StatusEntry(2, "pay_b", b"{}"))  # sweeps idle acct_a
    assert await forgetful.first_id("acct_a") is None


async def test_with_nobody_reading_the_stand_in_is_skipped_and_a_late_reader_misses_nothing(
    store: Store,
) -> None:
    streams = MemoryStatusStreams()
    publisher = StatusPublisher(store, streams, shard_ids=[SHARD])
    with streams.subscription():  # a reader, then gone: the stream holds entries 1..k
        early = _paying_account("early")
        await store.commit(SHARD, [early.change()])
        assert await publisher.run_once() == 4
    assert await _published(streams, early.account_id) != []

    late = _paying_account("late")
    await store.commit(SHARD, [late.change()])
    # Nobody reads: nothing is read back or appended, and no stream keeps a gap.
    assert await publisher.run_once() == 0
    assert await _published(streams, early.account_id) == []
    assert await _published(streams, late.account_id) == []
    newest = (await _journal(store))[-1].id
    assert publisher._cursors[SHARD] == newest  # moved in memory, not saved
    assert await publisher.cursor(SHARD) < newest

    # A reader now: what follows is published; what came before is the journal's to serve.
    with streams.subscription():
        third = AccountDriver(f"acct_third_{uuid.uuid4().hex[:8]}")
        third.open()
        third.invoice(1_000, due_in_days=1)
        third.pay(1_000)
        await store.commit(SHARD, [third.change()])
        assert await publisher.run_once() == 2  # processing, succeeded
        published = await _published(streams, third.account_id)
        assert [e.status for _, e in published] == ["processing", "succeeded"]
        assert published[0][0] > newest


async def test_a_running_publisher_publishes_when_woken_and_polls_nothing_meanwhile(
    store: Store, streams: StatusStreams
) -> None:
    publisher = StatusPublisher(store, streams, shard_ids=[SHARD])
    rounds: list[list[int]] = []
    original = publisher.run_once

    async def counted(shard_ids: Any = None) -> int:
        rounds.append(list(shard_ids) if shard_ids is not None else [SHARD])
        return await original(shard_ids)

    publisher.run_once = counted  # type: ignore[method-assign]
    running = asyncio.create_task(publisher.run_forever(interval_ms=60_000))
    try:
        await asyncio.sleep(0.2)
        assert len(rounds) == 1  # the first safety-net round, then nothing while idle
        account = _paying_account("woken")
        await store.commit(SHARD, [account.change()])
        await asyncio.sleep(0.3)
        assert await _published(streams, account.account_id) == []  # nobody said so yet

        publisher.wake(SHARD)
        async with asyncio.timeout(5):
            while len(await _published(streams, account.account_id)) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert len(rounds) == 2
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
