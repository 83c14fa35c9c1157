"""Single objects read through their shard, which is authoritative (read models may lag).

A read is the engine's ``ReadAccount`` command: it changes nothing and is answered in the
account's serial order, after every command before it is durable, with the snapshots of
the invoice or payment it names and the account's balance. A reply without a balance
means the account does not exist.
"""

from __future__ import annotations

from aiohttp import web

from payportal.actors import Reply, ShardRouter
from payportal.engine import ReadAccount, Rejection, Result
from payportal.persistence.queries import wait_for_projection

from .typedefs import ROUTER, STORE

__all__ = ["read_account", "read_invoice", "read_payment", "wait_for_account_projection"]


async def _read(router: ShardRouter, command: ReadAccount) -> Reply:
    reply = await router.submit(command)
    assert reply.outcome.result is Result.exists or (
        reply.outcome.rejection is Rejection.account_not_found
    ), reply.outcome
    return reply


async def read_invoice(router: ShardRouter, account_id: str, invoice_id: str) -> Reply:
    return await _read(router, ReadAccount(account_id=account_id, invoice_id=invoice_id))


async def read_payment(router: ShardRouter, account_id: str, payment_id: str) -> Reply:
    return await _read(router, ReadAccount(account_id=account_id, payment_id=payment_id))


async def read_account(router: ShardRouter, account_id: str) -> Reply:
    """``reply.balance`` is None when the account does not exist."""
    return await _read(router, ReadAccount(account_id=account_id))


async def wait_for_account_projection(request: web.Request, account_id: str) -> None:
    """Read-your-writes for an account's lists: wait (briefly, bounded) until the read
    models reflect the newest version of the account this process knows of — from the
    balances it keeps (``feed``), else from the account's shard."""
    router = request.app[ROUTER]
    known = router.balances.get(account_id)
    if known is not None:
        version = known[0]
    else:
        reply = await read_account(router, account_id)
        if reply.balance is None:
            return
        version = reply.version
    await wait_for_projection(request.app[STORE].engine, account_id, version)
