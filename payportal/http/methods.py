"""Saved payment methods as the front door needs them on the payment path: from memory.

The model: a saved method is immutable once written (its token, brand, type and owner
never change); only its deletion happens later. So each front-door process keeps the
methods it has used in memory, read once from ``payment_methods`` on first use, and a
payment names its method without a database round trip. Deletion is not the cache's to
enforce: it is journaled in the method's account (``RemovePaymentMethod``), and the
account's shard refuses a new payment with a removed method, whichever process sent it.
A row deleted before deletions were journaled carries ``deleted_at``, which the cache
keeps and the caller checks.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.actors import ShardRouter
from payportal.engine import RemovePaymentMethod, Result
from payportal.persistence import directory

__all__ = ["METHODS_CACHED_MAX", "PaymentMethods", "remove_payment_method"]

# ~200 bytes an entry: a million methods in use is ~200 MB, more than a busy front door
# sees between restarts; the least recently used leave first.
METHODS_CACHED_MAX: Final = 1_000_000


class PaymentMethods:
    def __init__(self, engine: AsyncEngine, *, entries_max: int = METHODS_CACHED_MAX) -> None:
        assert entries_max > 0
        self._engine = engine
        self._entries_max = entries_max
        self._rows: OrderedDict[str, directory.PaymentMethodRow] = OrderedDict()

    async def get(self, payment_method_id: str) -> directory.PaymentMethodRow | None:
        row = self._rows.get(payment_method_id)
        if row is not None:
            self._rows.move_to_end(payment_method_id)
            return row
        row = await directory.payment_method(self._engine, payment_method_id)
        if row is not None:
            self._rows[payment_method_id] = row
            if len(self._rows) > self._entries_max:
                self._rows.popitem(last=False)
        return row

    async def token_for(self, payment_method_id: str) -> str | None:
        row = await self.get(payment_method_id)
        return None if row is None else row.token

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def forget(self, payment_method_id: str) -> None:
        """Drop a method this process changed (deleted), so it is read again."""
        self._rows.pop(payment_method_id, None)


async def remove_payment_method(
    router: ShardRouter, methods: PaymentMethods, row: directory.PaymentMethodRow
) -> None:
    """Delete a saved method: first in its account (from then on no new payment can use
    it, whichever process is asked), then in the list the payers see."""
    reply = await router.submit(
        RemovePaymentMethod(account_id=row.account_id, payment_method_id=row.id)
    )
    # An account that was never opened has no payments to refuse; the row still goes.
    assert reply.outcome.result is not Result.rejected or reply.balance is None, reply.outcome
    await directory.delete_payment_method(methods.engine, row.id)
    methods.forget(row.id)
