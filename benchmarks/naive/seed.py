"""Seed the naive baseline's database (not part of payportal): its schema, then every
account, invoice and saved card with COPY, and the API key's hash. Ids are the
benchmark's (``benchmarks._ids``), the same as payportal is seeded with."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from .._ids import account_id, payment_method_id

__all__ = ["seed"]

SCHEMA = Path(__file__).with_name("schema.sql")
# As for payportal: never fully paid during a run.
INVOICE_AMOUNT_MINOR = 10**11


async def seed(
    dsn: str, accounts: int, tokens: Sequence[str], api_key: str, *, invoices_per_account: int,
    single_invoice_from: int | None = None,
) -> None:
    """As payportal is seeded: from index ``single_invoice_from`` on, one invoice."""
    assert tokens
    wide = accounts if single_invoice_from is None else single_invoice_from

    def invoices(i: int) -> int:
        return invoices_per_account if i < wide else 1

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(SCHEMA.read_text())
        today = dt.date.today()
        ids = [account_id(i) for i in range(accounts)]
        await connection.copy_records_to_table(
            "accounts", columns=["id", "currency", "outstanding_minor", "credit_minor"],
            records=[(a, "USD", invoices(i) * INVOICE_AMOUNT_MINOR, 0)
                     for i, a in enumerate(ids)],
        )  # fmt: skip
        await connection.copy_records_to_table(
            "invoices", columns=["id", "account_id", "due_date", "amount_minor"],
            records=[
                (f"inv_{a.removeprefix('acct_')}_{n}", a, today + dt.timedelta(days=30 * n),
                 INVOICE_AMOUNT_MINOR)
                for i, a in enumerate(ids) for n in range(invoices(i))
            ],
        )  # fmt: skip
        await connection.copy_records_to_table(
            "payment_methods", columns=["id", "account_id", "token"],
            records=[(payment_method_id(i), a, tokens[i % len(tokens)])
                     for i, a in enumerate(ids)],
        )  # fmt: skip
        await connection.execute(
            "INSERT INTO api_keys (key_hash, name) VALUES ($1, 'bench')",
            hashlib.sha256(api_key.encode()).hexdigest(),
        )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
