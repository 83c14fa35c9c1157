"""Balances in the front door's memory, kept current by the shards: reads without a hop.

The model: every committed batch of a shard publishes the balance (and version) of each
account it changed to the shard's ``BalanceFeed``, a bounded log numbered by a sequence.
A front door keeps ``AccountBalances``: every reply it gets from a shard carries the
account's balance after the command (so its own writes show at once), and one
long-polling call per shard (``follow``) brings the changes anyone else made — another
front door, the retry janitor inside the shard, a billing run. ``GET /v1/accounts/{id}``
then answers from memory; an account not in memory is read from its shard once.

Rules:
- Only durable balances are published: a batch's balances are taken when it is built
  and published after its commit, never the live state a later batch is changing.
- Versions only move forward: a late or repeated change is ignored.
- A follower that fell behind the log, or a shard that restarted (a new ``epoch``: its
  sequence starts again), drops everything it holds of that shard and starts over, so
  a read never shows a balance older than one the shard already published; the same
  while a shard cannot be reached.
- Idle costs nothing: a poll waits in the shard (no CPU) until something is published
  or ``FOLLOW_WAIT_S`` passes. Under load a follower polls at most every
  ``FOLLOW_INTERVAL_MS``, so it costs a few Ray calls a second whatever the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from .protocol import Balance, shard_for

__all__ = [
    "AccountBalances",
    "BalanceFeed",
    "FeedChange",
    "FeedPage",
    "follow",
]

log = logging.getLogger(__name__)

# (account id, version, outstanding, credit, currency)
FeedChange = tuple[str, int, int, int, str]

# Changes a shard keeps for followers; one that falls further behind starts over.
FEED_ENTRIES_MAX: Final = 65_536
# How long a poll waits in the shard for news before it returns empty.
FOLLOW_WAIT_S: Final = 20.0
# A follower's least time between polls that brought news: what another process wrote
# shows this much later at most, and a busy shard answers a few polls a second.
FOLLOW_INTERVAL_MS: Final = 50
# After a failed poll (the shard restarting), wait before trying again.
FOLLOW_RETRY_MS: Final = 500


class FeedPage(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    epoch: str
    seq: int
    # True: the follower's position is gone (behind the log, or another incarnation's);
    # it must drop what it holds of this shard, and continue from ``seq``.
    restart: bool
    changes: list[FeedChange]


_PAGE_ENCODER: Final = msgspec.msgpack.Encoder()
_PAGE_DECODER: Final = msgspec.msgpack.Decoder(FeedPage)


class BalanceFeed:
    """The shard's side: a bounded log of committed balance changes."""

    def __init__(self, entries_max: int = FEED_ENTRIES_MAX) -> None:
        assert entries_max > 0
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self._entries_max = entries_max
        # (seq, change), seq ascending and contiguous.
        self._entries: list[tuple[int, FeedChange]] = []
        self._published = asyncio.Event()

    def publish(self, changes: Sequence[FeedChange]) -> None:
        for change in changes:
            self.seq += 1
            self._entries.append((self.seq, change))
        if len(self._entries) > 2 * self._entries_max:  # trimmed in halves: amortized O(1)
            del self._entries[: len(self._entries) - self._entries_max]
        published, self._published = self._published, asyncio.Event()
        published.set()

    def page(self, epoch: str, seq: int) -> FeedPage:
        oldest = self._entries[0][0] if self._entries else self.seq + 1
        if epoch != self.epoch or seq > self.seq or seq < oldest - 1:
            return FeedPage(epoch=self.epoch, seq=self.seq, restart=True, changes=[])
        start = seq - oldest + 1
        changes = [change for _, change in self._entries[start:]]
        return FeedPage(epoch=self.epoch, seq=self.seq, restart=False, changes=changes)

    async def since(self, epoch: str, seq: int, wait_s: float) -> bytes:
        """The changes after ``seq`` (encoded ``FeedPage``), waiting up to ``wait_s`` for
        one when there is none yet."""
        if epoch == self.epoch and seq == self.seq and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._published.wait(), wait_s)
        return _PAGE_ENCODER.encode(self.page(epoch, seq))


class AccountBalances:
    """The front door's side: the latest balance it knows of each account."""

    def __init__(self, shards: int) -> None:
        assert shards > 0
        self._shards = shards
        self._known: dict[str, tuple[int, Balance]] = {}
        # Shards whose balances are not followed right now: nothing of theirs is served.
        self._unfollowed: set[int] = set(range(shards))
        # Called with a shard's id when its feed brought news (a commit happened there).
        self._listeners: list[Callable[[int], None]] = []

    def on_news(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def news(self, shard_id: int) -> None:
        for listener in self._listeners:
            listener(shard_id)

    def get(self, account_id: str) -> tuple[int, Balance] | None:
        return self._known.get(account_id)

    def offer(self, account_id: str, version: int, balance: Balance) -> None:
        """Keep ``balance`` at ``version`` unless a newer one is known. Balances of a
        shard that is not followed are not kept: nothing would keep them current."""
        if shard_for(account_id, self._shards) in self._unfollowed:
            return
        known = self._known.get(account_id)
        if known is None or known[0] < version:
            self._known[account_id] = (version, balance)

    def following(self, shard_id: int) -> None:
        self._unfollowed.discard(shard_id)

    def drop_shard(self, shard_id: int) -> None:
        """Forget every balance of ``shard_id`` and keep none until it is followed again."""
        self._unfollowed.add(shard_id)
        shards = self._shards
        self._known = {
            a: known for a, known in self._known.items() if shard_for(a, shards) != shard_id
        }

    def apply(self, changes: Sequence[FeedChange]) -> None:
        for account_id, version, outstanding, credit, currency in changes:
            self.offer(account_id, version, Balance(
                outstanding_minor=outstanding, credit_minor=credit, currency=currency,
            ))  # fmt: skip


async def follow(balances: AccountBalances, shard_id: int, handle: Any) -> None:
    """Keep ``balances`` current with shard ``shard_id`` until cancelled."""
    epoch, seq = "", 0
    while True:
        started = time.monotonic()
        try:
            page = _PAGE_DECODER.decode(
                await handle.changes_since.remote(epoch, seq, FOLLOW_WAIT_S)
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("balances of shard %s not followed: its feed failed", shard_id)
            balances.drop_shard(shard_id)
            epoch, seq = "", 0
            await asyncio.sleep(FOLLOW_RETRY_MS / 1000)
            continue
        if page.restart:
            balances.drop_shard(shard_id)
            balances.following(shard_id)
        balances.apply(page.changes)
        epoch, seq = page.epoch, page.seq
        if page.changes or page.restart:
            balances.news(shard_id)
        if page.changes:
            elapsed_ms = (time.monotonic() - started) * 1000
            if elapsed_ms < FOLLOW_INTERVAL_MS:
                await asyncio.sleep((FOLLOW_INTERVAL_MS - elapsed_ms) / 1000)
