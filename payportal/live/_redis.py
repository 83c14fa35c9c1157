"""Status streams on Redis Streams: one stream per account, shared by every front door.

The model: ``XADD <key> MAXLEN ~ STREAM_LENGTH_MAX <journal id>-0`` with the fields
``payment`` and ``data``; Redis refuses an id not above the stream's last one, which is
the duplicate check (``append`` returns False). ``EXPIRE`` is refreshed on every append,
so idle streams go away after ``STREAM_IDLE_TTL_S``. Readers use ``XRANGE`` and wait
with ``XREAD BLOCK``: a waiting reader holds one pooled connection while it waits
(bounded by ``timeout_s``). Limits and their fallbacks are described in ``_streams``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import redis.asyncio as redis
from redis.exceptions import ResponseError

from ._status import StatusEntry
from ._streams import READ_COUNT_DEFAULT, STREAM_IDLE_TTL_S, STREAM_LENGTH_MAX

__all__ = ["KEY_PREFIX_DEFAULT", "RedisStatusStreams"]

KEY_PREFIX_DEFAULT: Final = "payportal:status:"
# Redis's answer to an XADD whose id is not above the stream's top entry.
_NOT_ABOVE_TOP: Final = "equal or smaller"


def _entries(raw: list[tuple[bytes, dict[bytes, bytes]]]) -> list[StatusEntry]:
    found = []
    for entry_id, fields in raw:
        journal_id, _, sequence = entry_id.partition(b"-")
        assert sequence == b"0", entry_id
        found.append(StatusEntry(int(journal_id), fields[b"payment"].decode(), fields[b"data"]))
    return found


class RedisStatusStreams:
    def __init__(
        self, client: redis.Redis, *, key_prefix: str = KEY_PREFIX_DEFAULT,
        length_max: int = STREAM_LENGTH_MAX, idle_ttl_s: int = STREAM_IDLE_TTL_S,
    ) -> None:  # fmt: skip
        self._redis = client
        self._prefix = key_prefix
        self._length_max = length_max
        self._idle_ttl_s = idle_ttl_s

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStatusStreams:
        """Connects lazily, on the first command."""
        return cls(redis.Redis.from_url(url, decode_responses=False), **options)

    def key(self, account_id: str) -> str:
        return self._prefix + account_id

    def subscription(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def idle(self) -> bool:
        # Readers in other processes read these streams: never known to be idle.
        return False

    def forget(self) -> None:
        raise AssertionError("Redis streams are never idle")

    async def append(self, account_id: str, entry: StatusEntry) -> bool:
        key = self.key(account_id)
        try:
            await self._redis.xadd(
                key, {"payment": entry.payment, "data": entry.data}, id=f"{entry.id}-0",
                maxlen=self._length_max, approximate=True,
            )  # fmt: skip
        except ResponseError as error:
            if _NOT_ABOVE_TOP in str(error):
                return False
            raise
        await self._redis.expire(key, self._idle_ttl_s)
        return True

    async def first_id(self, account_id: str) -> int | None:
        found = _entries(await self._redis.xrange(self.key(account_id), count=1))
        return found[0].id if found else None

    async def read_after(
        self, account_id: str, after_id: int, count: int = READ_COUNT_DEFAULT
    ) -> list[StatusEntry]:
        raw = await self._redis.xrange(self.key(account_id), min=f"{after_id + 1}-0", count=count)
        return _entries(raw)

    async def wait_after(
        self, account_id: str, after_id: int, timeout_s: float, count: int = READ_COUNT_DEFAULT
    ) -> list[StatusEntry]:
        key = self.key(account_id)
        answer = await self._redis.xread(
            {key: f"{after_id}-0"}, count=count, block=max(1, int(timeout_s * 1000))
        )
        if not answer:
            return []
        # RESP2 (the client's protocol here): [[key, entries]].
        return _entries(answer[0][1])

    async def close(self) -> None:
        await self._redis.aclose()
