"""Seed a running ``payportal serve`` with many accounts for the end-to-end benchmark,
through payportal's own Python API instead of HTTP (100,000 accounts one request at a
time would take longer than the benchmark).

Everything the benchmark knows about payportal's internals is in this one module: the
account profile rows, the ``OpenAccount`` / ``IssueInvoice`` commands sent through the
shards' router, and the saved payment methods. When storage changes, only this changes.

Run it in serve's working directory with serve's environment: it joins serve's Ray (the
address serve leaves in ``var/ray_address``) and finds its shards by name, so every
account has one owner.

    python -m benchmarks.seed_payportal --accounts 10000 --tokens tok_a,tok_b

Ids are fixed by the account's index (``benchmarks._ids``), so the load generator can
address any account without a list from here; each account's saved card uses
``tokens[i % len(tokens)]``. It prints one JSON line with what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._ids import account_id, payment_method_id

__all__ = ["seed"]

# Far more than a run can pay at 1 USD a payment: an invoice is never fully paid, so
# every payment allocates the same way from the first to the last.
INVOICE_AMOUNT_MINOR = 10**11
# Commands per submit_many: large enough to fill every batch, small enough to keep the
# router's futures (and the shards' replies) a few MB.
CHUNK = 20_000
ROWS_CHUNK = 5_000
PROJECTION_WAIT_S = 300.0


async def _insert_rows(engine: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    import sqlalchemy as sa

    for start in range(0, len(rows), ROWS_CHUNK):
        async with engine.begin() as connection:
            await connection.execute(sa.insert(table), rows[start : start + ROWS_CHUNK])


async def _submit_all(router: Any, commands: Sequence[Any], what: str) -> None:
    from payportal.engine import Result

    for start in range(0, len(commands), CHUNK):
        replies = await router.submit_many(commands[start : start + CHUNK])
        rejected = [r.outcome for r in replies if r.outcome.result is Result.rejected]
        if rejected:
            raise RuntimeError(f"{what}: {len(rejected)} rejected, e.g. {rejected[0]}")


async def seed(
    router: Any, engine: Any, accounts: int, tokens: Sequence[str], *, invoices_per_account: int,
    single_invoice_from: int | None = None,
) -> dict[str, Any]:
    """Open ``accounts`` accounts with open invoices (``invoices_per_account``; one from
    index ``single_invoice_from`` on) and one saved card each; the figures of what was
    done. ``router`` is a ``ShardRouter`` on serve's shards, ``engine`` the store's
    SQLAlchemy engine."""
    from payportal.engine import IssueInvoice, OpenAccount
    from payportal.persistence.tables_payers import account_profiles, payment_methods

    assert tokens, "the saved cards need at least one processor token"
    started = time.perf_counter()
    ids = [account_id(i) for i in range(accounts)]
    # The profile first, as the API writes it: an account the API cannot describe is
    # invisible to it (and the confirmation emails go to this address).
    await _insert_rows(engine, account_profiles, [
        {"account_id": a, "name": f"Bench {a}", "email": f"{a}@bench.example",
         "currency": "USD", "external_ref": None}
        for a in ids
    ])  # fmt: skip
    profiles_s = time.perf_counter() - started
    await _submit_all(router, [OpenAccount(account_id=a, currency="USD") for a in ids], "open")
    today = dt.date.today()
    wide = accounts if single_invoice_from is None else single_invoice_from
    invoices = [
        IssueInvoice(
            account_id=a, invoice_id=f"inv_{a.removeprefix('acct_')}_{n}", number=f"B{n}",
            amount_minor=INVOICE_AMOUNT_MINOR, currency="USD",
            due_date=today + dt.timedelta(days=30 * n),
        )
        for i, a in enumerate(ids)
        for n in range(invoices_per_account if i < wide else 1)
    ]  # fmt: skip
    await _submit_all(router, invoices, "invoices")
    commands_s = time.perf_counter() - started - profiles_s
    # As POST /v1/accounts/{id}/payment_methods saves a card the payer tokenized.
    await _insert_rows(engine, payment_methods, [
        {"id": payment_method_id(i), "account_id": a, "token": tokens[i % len(tokens)],
         "type": "card", "brand": "visa", "last4": "4242", "exp_month": 12,
         "exp_year": today.year + 4, "wallet": None}
        for i, a in enumerate(ids)
    ])  # fmt: skip
    return {
        "accounts": accounts,
        "invoices": len(invoices),
        "seconds": round(time.perf_counter() - started, 2),
        "profiles_s": round(profiles_s, 2),
        "commands_s": round(commands_s, 2),
    }


async def wait_for_projection(store: Any, shards: int, timeout_s: float) -> float | None:
    """Seconds until every shard's read models caught up with its journal (the seeding
    leaves a backlog that would otherwise run during the first measurements), or None."""
    import sqlalchemy as sa

    from payportal.persistence import tables

    started = time.perf_counter()
    j = tables.journal
    while time.perf_counter() - started < timeout_s:
        async with store.engine.connect() as connection:
            last = dict((await connection.execute(
                sa.select(j.c.shard_id, sa.func.max(j.c.id)).group_by(j.c.shard_id)
            )).all())  # fmt: skip
        cursors = [await store.projection_cursor(s) for s in range(shards)]
        if all(cursors[s] >= last.get(s, 0) for s in range(shards)):
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    return None


async def _main(
    accounts: int, tokens: list[str], invoices_per_account: int, single_invoice_from: int | None
) -> dict[str, Any]:
    from payportal.actors import ShardRouter
    from payportal.actors.cluster import connect_ray_for_command, get_shards
    from payportal.config import load_settings
    from payportal.persistence import Store

    settings = load_settings()
    joined = connect_ray_for_command(settings.ray_address, settings.var_dir)
    if not joined:
        raise SystemExit("no running payportal serve to join (var/ray_address); start it first")
    router = ShardRouter(get_shards(settings.shards), queue_max=4 * CHUNK)
    store = await Store.connect(settings.database_url)
    try:
        done = await seed(router, store.engine, accounts, tokens,
                          invoices_per_account=invoices_per_account,
                          single_invoice_from=single_invoice_from)  # fmt: skip
        projected_s = await wait_for_projection(store, settings.shards, PROJECTION_WAIT_S)
        done["projection_caught_up_s"] = None if projected_s is None else round(projected_s, 2)
        return done
    finally:
        await router.drain()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--tokens", required=True, help="comma-separated sandbox tokens")
    parser.add_argument("--invoices-per-account", type=int, default=2)
    parser.add_argument("--single-invoice-from", type=int, default=None,
                        help="accounts from this index on get one invoice")
    args = parser.parse_args(argv)
    tokens = [t for t in args.tokens.split(",") if t]
    done = asyncio.run(_main(args.accounts, tokens, args.invoices_per_account,
                             args.single_invoice_from))  # fmt: skip
    print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
