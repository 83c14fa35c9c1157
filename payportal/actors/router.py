"""The front door's side of the shards: route each command, batch per shard, route replies.

The model (docs/design.md decision 2): one Ray call per item caps the system near 2,000 calls
a second, one call per 100 items carries ~177,000 items a second. So commands for a
shard wait here for at most ``batch_max_wait_ms`` or until ``batch_max_items`` have
gathered, then go as one msgpack-encoded call; each caller awaits its own future,
resolved from the batch's reply list in order.

Rules:
- The queue is bounded: past ``queue_max`` outstanding commands a caller is told
  ``Overloaded`` with a retry-after, never left to grow memory without bound.
- At most ``IN_FLIGHT_PER_SHARD`` batches to one shard are in flight; more commands wait
  here and go together when one returns. A shard applies one batch while the one before
  commits, so a third in flight would only wait in the shard — and each call costs the
  same Ray overhead whatever it carries, so under load batches grow instead of calls
  multiplying. A command for a shard with nothing in flight goes at once (at the end
  of the event loop's turn); with one batch out, it waits up to ``batch_max_wait_ms``
  for company.
- A failed call fails every command in it; callers retry with the same idempotency key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from payportal.engine import Command

from .feed import AccountBalances, follow
from .protocol import BATCH_ENCODER, REPLIES_DECODER, Reply, shard_for

__all__ = ["Overloaded", "ShardRouter"]


class Overloaded(Exception):
    """Too many commands are waiting; the caller should retry after ``retry_after_ms``."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"overloaded; retry after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


# Batches in flight to one shard at once (see the module's rules).
IN_FLIGHT_PER_SHARD = 2


class _ShardQueue:
    def __init__(self, router: ShardRouter, handle: Any) -> None:
        self._router = router
        self._handle = handle
        self._pending: list[tuple[Command, asyncio.Future[Reply]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0

    def put(self, command: Command) -> asyncio.Future[Reply]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._pending.append((command, future))
        if len(self._pending) >= self._router.batch_max_items:
            self.flush()
        elif self._timer is None and self._in_flight < IN_FLIGHT_PER_SHARD:
            # Nothing on its way to the shard: go at the end of this turn of the loop (what
            # arrives in the same turn goes too); waiting for more would only add latency.
            # With a batch already out, wait a little for company.
            delay_s = 0.0 if self._in_flight == 0 else self._router.batch_max_wait_s
            self._timer = loop.call_later(delay_s, self.flush)
        return future

    def flush(self, *, force: bool = False) -> None:
        """Send what waits, unless the shard already has its batches in flight (then
        the next one to return sends it); ``force`` sends regardless (draining)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        if self._in_flight >= IN_FLIGHT_PER_SHARD and not force:
            return
        max_items = self._router.batch_max_items
        batch, self._pending = self._pending[:max_items], self._pending[max_items:]
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._router._tasks.add(task)
        task.add_done_callback(self._router._tasks.discard)
        task.add_done_callback(self._sent)

    def _sent(self, _: asyncio.Task[None]) -> None:
        self._in_flight -= 1
        if self._pending:
            self.flush()

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Reply]]]) -> None:
        try:
            payload = BATCH_ENCODER.encode([command for command, _ in batch])
            replies = REPLIES_DECODER.decode(await self._handle.apply.remote(payload))
            assert len(replies) == len(batch), (len(replies), len(batch))
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        finally:
            self._router._outstanding -= len(batch)
        balances = self._router.balances
        for (command, future), reply in zip(batch, replies, strict=True):
            if reply.balance is not None:
                balances.offer(command.account_id, reply.version, reply.balance)
            if not future.done():
                future.set_result(reply)


class ShardRouter:
    def __init__(
        self,
        handles: Sequence[Any],
        *,
        batch_max_items: int = 256,
        batch_max_wait_ms: float = 2.0,
        queue_max: int = 10_000,
    ) -> None:
        assert handles, "a router needs at least one shard"
        self.batch_max_items = batch_max_items
        self.batch_max_wait_s = batch_max_wait_ms / 1000
        self.queue_max = queue_max
        self._queues = [_ShardQueue(self, handle) for handle in handles]
        self._outstanding = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # What every reply and (once ``follow_balances`` runs) every shard's feed says.
        self.balances = AccountBalances(len(handles))
        self._followers: list[asyncio.Task[None]] = []

    def follow_balances(self) -> None:
        """Keep ``balances`` current with every shard (until ``close``); shards that
        publish no feed (test doubles) are left unfollowed, and read from the shard."""
        if self._followers:
            return
        for shard_id, queue in enumerate(self._queues):
            if hasattr(queue._handle, "changes_since"):
                self._followers.append(
                    asyncio.get_running_loop().create_task(
                        follow(self.balances, shard_id, queue._handle)
                    )
                )

    async def close(self) -> None:
        """Stop following the shards' balances, then ``drain``."""
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        self._followers = []
        await self.drain()

    @property
    def shards(self) -> int:
        return len(self._queues)

    @property
    def outstanding(self) -> int:
        return self._outstanding

    @property
    def handles(self) -> list[Any]:
        return [queue._handle for queue in self._queues]

    @property
    def batches_in_flight(self) -> int:
        return len(self._tasks)

    def queue_depths(self) -> list[int]:
        """Commands waiting to be batched, per shard (sent ones count in ``outstanding``)."""
        return [len(queue._pending) for queue in self._queues]

    def submit_nowait(self, command: Command) -> asyncio.Future[Reply]:
        if self._outstanding >= self.queue_max:
            # A full queue drains in about one batch round trip per shard.
            raise Overloaded(retry_after_ms=max(1, int(self.batch_max_wait_s * 1000) * 10))
        self._outstanding += 1
        return self._queues[shard_for(command.account_id, len(self._queues))].put(command)

    async def submit(self, command: Command) -> Reply:
        return await self.submit_nowait(command)

    async def submit_many(self, commands: Sequence[Command]) -> list[Reply]:
        return list(await asyncio.gather(*(self.submit_nowait(c) for c in commands)))

    async def drain(self) -> None:
        """Send what is queued now and wait for every batch in flight."""
        for queue in self._queues:
            queue.flush(force=True)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            for queue in self._queues:
                queue.flush(force=True)
