"""Live payment status: per-account streams fed from the durable journal, read by SSE.

``StatusPublisher`` reads committed journal rows per shard and appends each payment
status change to its account's stream, the journal id as the entry id. The streams are
Redis Streams when ``PAYPORTAL_REDIS_URL`` is set (``RedisStatusStreams``: every front
door serves every stream) and an in-process stand-in otherwise
(``MemoryStatusStreams``); both follow the ``StatusStreams`` interface and limits in
``_streams``. ``http/events.py`` serves them as Server-Sent Events.
"""

from __future__ import annotations

from ._publisher import PUBLISH_INTERVAL_MS_DEFAULT, StatusPublisher
from ._redis import RedisStatusStreams
from ._status import (
    STATUS_OF,
    StatusEntry,
    StatusEvent,
    journal_last_id,
    journal_payment_start,
    journal_status_after,
)
from ._streams import (
    STREAM_IDLE_TTL_S,
    STREAM_LENGTH_MAX,
    MemoryStatusStreams,
    StatusStreams,
)

__all__ = [
    "PUBLISH_INTERVAL_MS_DEFAULT",
    "STATUS_OF",
    "STREAM_IDLE_TTL_S",
    "STREAM_LENGTH_MAX",
    "MemoryStatusStreams",
    "RedisStatusStreams",
    "StatusEntry",
    "StatusEvent",
    "StatusPublisher",
    "StatusStreams",
    "journal_last_id",
    "journal_payment_start",
    "journal_status_after",
    "open_status_streams",
]


def open_status_streams(redis_url: str | None) -> StatusStreams:
    """Redis Streams at ``redis_url``, or the in-process stand-in when it is None."""
    if redis_url is None:
        return MemoryStatusStreams()
    return RedisStatusStreams.from_url(redis_url)
