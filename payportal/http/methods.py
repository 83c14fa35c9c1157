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

from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.actors import ShardRouter
from payportal.engine import RemovePaymentMethod, Result
from payportal.persistence import directory

from .cached import ImmutableRows

__all__ = ["PaymentMethods", "remove_payment_method"]


class PaymentMethods(ImmutableRows[str, directory.PaymentMethodRow]):
    def __init__(self, engine: AsyncEngine) -> None:
        async def load(payment_method_id: str) -> directory.PaymentMethodRow | None:
            return await directory.payment_method(engine, payment_method_id)

        super().__init__(load)
        self.engine = engine

    async def token_for(self, payment_method_id: str) -> str | None:
        row = await self.get(payment_method_id)
        return None if row is None else row.token


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
