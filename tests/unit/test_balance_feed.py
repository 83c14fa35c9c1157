"""Balances in the front door's memory (payportal.actors.feed): a shard publishes only what
its commits made durable; a follower keeps every account's newest balance, starts over
when it fell behind or the shard restarted, and keeps nothing of a shard it cannot
follow. Driven in-process with a recording store in place of the database."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec
import pytest

from payportal.actors import AccountShardCore, ShardRouter, shard_for
from payportal.actors.feed import AccountBalances, BalanceFeed, FeedPage
from payportal.actors.protocol import Balance
from payportal.engine import IssueInvoice, OpenAccount

from .shard_doubles import RecordingStore

PAGE = msgspec.msgpack.Decoder(FeedPage)


class FeedHandle:
    """A shard handle as the router sees it, with the feed's long poll."""

    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = _Remote(core.apply)
        self.changes_since = _Remote(core.feed.since)


class _Remote:
    def __init__(self, function: Any) -> None:
        self.remote = function


def _invoice(account_id: str, n: int, amount_minor: int) -> IssueInvoice:
    return IssueInvoice(
        account_id=account_id, invoice_id=f"inv_{n}", number=str(n), amount_minor=amount_minor,
        currency="USD", due_date=dt.date(2026, 1, 1),
    )  # fmt: skip


def test_a_page_holds_what_came_after_the_followers_position() -> None:
    feed = BalanceFeed()
    feed.publish([("acct_a", 1, 0, 0, "USD"), ("acct_b", 1, 0, 0, "USD")])
    feed.publish([("acct_a", 2, 500, 0, "USD")])

    first = feed.page("", 0)
    assert first.restart  # a new follower starts over, from the newest position
    assert (first.seq, first.changes) == (3, [])
    assert feed.page(feed.epoch, 1).changes == [
        ("acct_b", 1, 0, 0, "USD"), ("acct_a", 2, 500, 0, "USD"),
    ]  # fmt: skip
    assert feed.page(feed.epoch, 3).changes == []
    assert not feed.page(feed.epoch, 3).restart


def test_a_follower_behind_the_log_or_of_another_incarnation_starts_over() -> None:
    feed = BalanceFeed(entries_max=4)
    for version in range(1, 20):
        feed.publish([("acct_a", version, version, 0, "USD")])

    assert feed.page(feed.epoch, 2).restart  # trimmed away
    assert not feed.page(feed.epoch, feed.seq - 3).restart
    assert feed.page("another-epoch", feed.seq).restart
    assert feed.page(feed.epoch, feed.seq + 5).restart


async def test_a_poll_waits_for_news_and_returns_when_it_comes() -> None:
    feed = BalanceFeed()
    position = feed.page("", 0)
    poll = asyncio.create_task(feed.since(position.epoch, position.seq, wait_s=30))
    await asyncio.sleep(0.01)
    assert not poll.done()

    feed.publish([("acct_a", 1, 0, 0, "USD")])
    page = PAGE.decode(await asyncio.wait_for(poll, 1))

    assert page.changes == [("acct_a", 1, 0, 0, "USD")]
    quiet = PAGE.decode(await feed.since(page.epoch, page.seq, wait_s=0.01))
    assert quiet.changes == []


def test_balances_only_move_forward_and_a_dropped_shard_keeps_nothing() -> None:
    balances = AccountBalances(shards=2)
    account = "acct_a"
    shard = shard_for(account, 2)
    balances.offer(account, 3, Balance(outstanding_minor=300, credit_minor=0, currency="USD"))
    assert balances.get(account) is None  # nobody follows its shard yet

    balances.following(shard)
    balances.offer(account, 3, Balance(outstanding_minor=300, credit_minor=0, currency="USD"))
    balances.offer(account, 2, Balance(outstanding_minor=200, credit_minor=0, currency="USD"))
    known = balances.get(account)
    assert known is not None
    assert known[0] == 3
    assert known[1].outstanding_minor == 300

    balances.drop_shard(shard)
    assert balances.get(account) is None
    balances.offer(account, 4, Balance(outstanding_minor=400, credit_minor=0, currency="USD"))
    assert balances.get(account) is None


async def test_a_write_through_another_front_door_reaches_this_ones_balances() -> None:
    store = RecordingStore()
    core = AccountShardCore(0, store)
    handle = FeedHandle(core)
    mine = ShardRouter([handle], batch_max_wait_ms=1)
    theirs = ShardRouter([handle], batch_max_wait_ms=1)
    mine.follow_balances()
    try:
        await theirs.submit(OpenAccount(account_id="acct_a", currency="USD"))
        await theirs.submit(_invoice("acct_a", 1, 1_250))

        async with asyncio.timeout(2):
            while (known := mine.balances.get("acct_a")) is None or known[0] < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert known[1].outstanding_minor == 1_250
        # Its own writes show at once, from the reply.
        await mine.submit(_invoice("acct_a", 2, 750))
        known = mine.balances.get("acct_a")
        assert known is not None
        assert known[1].outstanding_minor == 2_000
    finally:
        await mine.close()
        await theirs.close()


async def test_a_batch_whose_commit_failed_publishes_nothing() -> None:
    store = RecordingStore()
    exits: list[BaseException] = []
    core = AccountShardCore(0, store, on_commit_failure=exits.append)
    router = ShardRouter([FeedHandle(core)], batch_max_wait_ms=1)
    await router.submit(OpenAccount(account_id="acct_a", currency="USD"))
    published = core.feed.seq

    store.fail_next = True
    with pytest.raises(ConnectionError):
        await router.submit(_invoice("acct_a", 1, 1_250))

    assert exits
    assert core.feed.seq == published
    await router.close()
