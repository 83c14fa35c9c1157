"""Rows that never change once written, kept in a front-door process's memory.

An account's profile and a saved payment method are written once and never updated (a
method's deletion is journaled in its account, not read from here), so each process
reads one from the database the first time it needs it and never again: the payment and
account paths then make no round trip of their own. Only rows that exist are kept; the
least recently used leave first beyond ``entries_max``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

__all__ = ["ENTRIES_MAX", "ImmutableRows"]

# ~200 bytes an entry: a million is ~200 MB, more than a busy front door sees between
# restarts.
ENTRIES_MAX: Final = 1_000_000

K = TypeVar("K")
V = TypeVar("V")


class ImmutableRows(Generic[K, V]):
    def __init__(
        self, load: Callable[[K], Awaitable[V | None]], *, entries_max: int = ENTRIES_MAX
    ) -> None:
        assert entries_max > 0
        self._load = load
        self._entries_max = entries_max
        self._rows: OrderedDict[K, V] = OrderedDict()

    async def get(self, key: K) -> V | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
            return row
        row = await self._load(key)
        if row is not None:
            self._rows[key] = row
            if len(self._rows) > self._entries_max:
                self._rows.popitem(last=False)
        return row

    def forget(self, key: K) -> None:
        """Drop a row this process changed, so it is read again."""
        self._rows.pop(key, None)
