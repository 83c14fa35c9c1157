"""Object ids: a Stripe-like prefix, time-ordered, and for account-owned objects the
account they belong to.

The model: ``acct_<unique>``; a payment, attempt, invoice or refund of that account is
``pay_<account part>_<unique>``. The account is read back from the id alone, so a
single object is routed to its shard without a lookup in a read model that may lag
(and a processor callback naming an attempt id finds its account the same way). The
unique part is 11 hex digits of milliseconds (good until the year 2527) and 10 random
ones, so ids sort by creation time and lists paginate in creation order.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Final

__all__ = [
    "ACCOUNT_PREFIX", "ID_SEGMENT", "account_of", "child_id", "derived_child_id", "derived_id",
    "new_id", "routed", "unique",
]  # fmt: skip

ACCOUNT_PREFIX: Final = "acct_"
# A route's ``{id}`` as aiohttp matches it: what the ids here look like (the API's
# ``schemas.ObjectId``). A path whose id is anything else — a NUL, a newline, 300
# characters — matches no route and is a 404 before any handler or database sees it.
ID_SEGMENT: Final = "{id:[A-Za-z0-9_-]{1,64}}"


def routed(path: str) -> str:
    """``path`` as registered with aiohttp: its ``{id}`` limited to ``ID_SEGMENT``."""
    return path.replace("{id}", ID_SEGMENT)
# 40 random bits: two ids minted in the same millisecond collide once in 10^12 pairs.
RANDOM_HEX: Final = 10
MS_HEX: Final = 11


def unique() -> str:
    return f"{time.time_ns() // 1_000_000:0{MS_HEX}x}{secrets.token_hex(RANDOM_HEX // 2)}"


def new_id(prefix: str) -> str:
    return f"{prefix}_{unique()}"


def child_id(prefix: str, account_id: str) -> str:
    assert account_id.startswith(ACCOUNT_PREFIX), account_id
    return f"{prefix}_{account_id.removeprefix(ACCOUNT_PREFIX)}_{unique()}"


def _digest(parts: tuple[str, ...]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[: MS_HEX + RANDOM_HEX]


def derived_id(prefix: str, *parts: str) -> str:
    """An id fixed by ``parts`` (principal and idempotency key): the same request sent
    again names the same object."""
    return f"{prefix}_{_digest(parts)}"


def derived_child_id(prefix: str, account_id: str, *parts: str) -> str:
    """A child id fixed by ``parts`` (e.g. principal and idempotency key): the same
    request sent again names the same object."""
    assert account_id.startswith(ACCOUNT_PREFIX), account_id
    return f"{prefix}_{account_id.removeprefix(ACCOUNT_PREFIX)}_{_digest(parts)}"


def account_of(object_id: str, prefix: str) -> str | None:
    """The account a child id belongs to, or None if ``object_id`` is not one."""
    head = prefix + "_"
    if not object_id.startswith(head):
        return None
    account_part, sep, tail = object_id.removeprefix(head).rpartition("_")
    if not sep or not account_part or not tail:
        return None
    return ACCOUNT_PREFIX + account_part
