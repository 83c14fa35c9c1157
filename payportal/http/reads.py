"""Single objects read through their shard, which is authoritative (read models may lag).

The shard protocol has no read-only command yet, so a read is a command the engine is
certain to reject on its own fields before looking at any state — it writes nothing
(no events, so no commit) — while the shard's reply still carries the snapshot of
what it names and the account's balance:

- ``IssueInvoice`` with amount 0 → ``amount_must_be_positive``, reply has the invoice;
- ``RefundPayment`` with amount 0 → ``amount_must_be_positive``, reply has the payment.

A reply without a balance means the account does not exist. These are the only two
places that know the trick; a ``ReadAccount`` command in the engine would replace them.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from aiohttp import web

from payportal.actors import Reply, ShardRouter
from payportal.engine import IssueInvoice, RefundPayment, Rejection
from payportal.persistence.queries import wait_for_projection

from .typedefs import ROUTER, STORE

__all__ = ["read_account", "read_invoice", "read_payment", "wait_for_account_projection"]

_PROBE_DATE: Final = dt.date(2000, 1, 1)


def _assert_read_only(reply: Reply) -> Reply:
    assert reply.outcome.rejection is Rejection.amount_must_be_positive, reply.outcome
    return reply


async def read_invoice(router: ShardRouter, account_id: str, invoice_id: str) -> Reply:
    probe = IssueInvoice(
        account_id=account_id, invoice_id=invoice_id, number="", amount_minor=0,
        currency="USD", due_date=_PROBE_DATE,
    )  # fmt: skip
    return _assert_read_only(await router.submit(probe))


async def read_payment(router: ShardRouter, account_id: str, payment_id: str) -> Reply:
    probe = RefundPayment(
        account_id=account_id, payment_id=payment_id, refund_id="", amount_minor=0
    )
    return _assert_read_only(await router.submit(probe))


async def read_account(router: ShardRouter, account_id: str) -> Reply:
    """``reply.balance`` is None when the account does not exist."""
    return await read_invoice(router, account_id, "")


async def wait_for_account_projection(request: web.Request, account_id: str) -> None:
    """Read-your-writes for an account's lists: wait (briefly, bounded) until the read
    models reflect the version the account's shard is at now."""
    reply = await read_account(request.app[ROUTER], account_id)
    if reply.balance is not None:
        await wait_for_projection(request.app[STORE].engine, account_id, reply.version)
