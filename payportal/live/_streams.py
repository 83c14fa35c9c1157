"""Per-account status streams: the interface, its limits, and the in-process stand-in.

The model: one append-only stream per account whose entry ids are journal ids, so they
only grow. ``append`` with an id at or below the stream's last one is refused (returns
False): that is how a re-publish after a publisher crash is recognised as a duplicate.
Readers ask for entries after an id and may wait for new ones. Two implementations
share the interface: Redis Streams (``RedisStatusStreams``: any front-door process can
serve any stream) and ``MemoryStatusStreams`` here, for one process without Redis.

Limits, the same for both:

- ``STREAM_LENGTH_MAX`` entries per account are kept (Redis: ``XADD MAXLEN ~``, which
  trims in whole macro-nodes, so a few more may stay). Older entries are dropped; a
  client resuming from before the oldest kept entry is served the gap from the journal
  (``http/events.py``), so trimming loses nothing.
- A stream not appended to for ``STREAM_IDLE_TTL_S`` is deleted (Redis: ``EXPIRE``
  refreshed on every append). Same fallback: the journal has it all.
- The last id survives trimming but not expiry: a re-publish of an id older than an
  expired stream's would be accepted again. Readers never see it twice anyway: a
  connection only sends ids above the last it sent, and a resume names that id.
- A stream holds an unbroken run of its account's status entries, from its first entry
  up to what the publisher has published. The stand-in may be ``idle`` (nobody reads
  it, and no other process can): the publisher then skips the work and calls ``forget``,
  so no stream is left with a gap, and the next reader is served from the journal.
  Readers hold a ``subscription`` from before their first read of the stream or the
  journal, so a round that skips can never pass a row a reader would wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import Final, Protocol

from ._status import StatusEntry

__all__ = [
    "STREAM_IDLE_TTL_S",
    "STREAM_LENGTH_MAX",
    "MemoryStatusStreams",
    "StatusStreams",
]

# A payment makes 2-10 status events over its life: a few thousand entries hold weeks of
# a busy account's history, while bounding memory to about a megabyte per account.
STREAM_LENGTH_MAX: Final = 5_000
# A week: longer than any client stays offline and still expects to resume from the
# stream rather than from the journal.
STREAM_IDLE_TTL_S: Final = 7 * 24 * 3600
# Entries handed out per read, so a far-behind reader is served in pages.
READ_COUNT_DEFAULT: Final = 500


class StatusStreams(Protocol):
    async def append(self, account_id: str, entry: StatusEntry) -> bool:
        """Add ``entry`` to the account's stream; False when its id is not above the last."""
        ...

    async def first_id(self, account_id: str) -> int | None:
        """The oldest id the stream still holds (None: empty or expired)."""
        ...

    async def read_after(
        self, account_id: str, after_id: int, count: int = READ_COUNT_DEFAULT
    ) -> list[StatusEntry]:
        """Entries with ids above ``after_id``, oldest first, at most ``count``."""
        ...

    async def wait_after(
        self, account_id: str, after_id: int, timeout_s: float, count: int = READ_COUNT_DEFAULT
    ) -> list[StatusEntry]:
        """Like ``read_after``, but waits up to ``timeout_s`` for an entry to arrive."""
        ...

    def subscription(self) -> contextlib.AbstractContextManager[None]:
        """Held by a reader for as long as it reads (see ``idle``)."""
        ...

    def idle(self) -> bool:
        """True when no reader exists and none can read without holding a subscription
        in this process: the publisher may skip a round (and then calls ``forget``)."""
        ...

    def forget(self) -> None:
        """Drop every stream (only while ``idle``): what they held is in the journal."""
        ...

    async def close(self) -> None: ...


class _Stream:
    __slots__ = ("appended", "entries", "last_id")

    def __init__(self) -> None:
        self.entries: deque[StatusEntry] = deque(maxlen=STREAM_LENGTH_MAX)
        self.last_id = 0
        self.appended = asyncio.Event()


class MemoryStatusStreams:
    """The in-process stand-in: a bounded deque per account and an event to wake readers."""

    def __init__(
        self, *, length_max: int = STREAM_LENGTH_MAX, idle_ttl_s: float = STREAM_IDLE_TTL_S
    ) -> None:
        self._streams: dict[str, _Stream] = {}
        self._touched: dict[str, float] = {}  # account → monotonic time of its last append
        self._length_max = length_max
        self._idle_ttl_s = idle_ttl_s
        self._subscribers = 0

    @contextlib.contextmanager
    def subscription(self) -> Iterator[None]:
        self._subscribers += 1
        try:
            yield
        finally:
            self._subscribers -= 1

    def idle(self) -> bool:
        return self._subscribers == 0

    def forget(self) -> None:
        assert self._subscribers == 0, "forgetting streams that are being read"
        self._streams.clear()
        self._touched.clear()

    def _expire_idle(self, now: float) -> None:
        # Insertion order of ``_touched`` is append order (refreshed by re-inserting), so
        # the idle streams are at its front.
        for account_id, touched in list(self._touched.items()):
            if now - touched < self._idle_ttl_s:
                break
            del self._touched[account_id]
            del self._streams[account_id]

    def _stream(self, account_id: str, now: float) -> _Stream:
        stream = self._streams.get(account_id)
        if stream is None:
            stream = self._streams[account_id] = _Stream()
            stream.entries = deque(maxlen=self._length_max)
            self._touched[account_id] = now
        return stream

    async def append(self, account_id: str, entry: StatusEntry) -> bool:
        now = time.monotonic()
        self._expire_idle(now)
        stream = self._stream(account_id, now)
        if entry.id <= stream.last_id:
            return False
        stream.entries.append(entry)
        stream.last_id = entry.id
        self._touched.pop(account_id, None)
        self._touched[account_id] = now
        woken, stream.appended = stream.appended, asyncio.Event()
        woken.set()
        return True

    async def first_id(self, account_id: str) -> int | None:
        stream = self._streams.get(account_id)
        if stream is None or not stream.entries:
            return None
        return stream.entries[0].id

    async def read_after(
        self, account_id: str, after_id: int, count: int = READ_COUNT_DEFAULT
    ) -> list[StatusEntry]:
        stream = self._streams.get(account_id)
        if stream is None or stream.last_id <= after_id:
            return []
        found = []
        for entry in reversed(stream.entries):  # the newest are what readers want
            if entry.id <= after_id:
                break
            found.append(entry)
        found.reverse()
        return found[:count]

    async def wait_after(
        self, account_id: str, after_id: int, timeout_s: float, count: int = READ_COUNT_DEFAULT
    ) -> list[StatusEntry]:
        found = await self.read_after(account_id, after_id, count)
        if found:
            return found
        stream = self._stream(account_id, time.monotonic())
        try:
            await asyncio.wait_for(stream.appended.wait(), timeout_s)
        except TimeoutError:
            return []
        return await self.read_after(account_id, after_id, count)

    async def close(self) -> None:
        self._streams.clear()
        self._touched.clear()
