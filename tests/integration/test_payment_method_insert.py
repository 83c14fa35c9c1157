"""Saving a payment method under a deterministic id: sent twice, or twice at once, it is
one row, the first one, and neither request fails."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from payportal.persistence import create_engine_for, directory
from payportal.persistence.sealing import open_keyring
from payportal.persistence.tables_payers import payment_methods


def _method(token: str) -> dict[str, Any]:
    return {
        "id": "pm_same", "account_id": "acct_1", "token": token, "type": "card",
        "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2031,
    }  # fmt: skip


async def test_the_same_id_saved_concurrently_is_one_row_and_no_error(database_url: str) -> None:
    engine = create_engine_for(database_url)
    await open_keyring(engine)
    try:
        # Many at once (a retried request racing its original), then once more later.
        await asyncio.gather(
            *(directory.insert_payment_method(engine, _method(f"tok_{n}")) for n in range(8))
        )
        async with engine.connect() as connection:
            first = (await connection.execute(sa.select(payment_methods))).all()
        assert len(first) == 1
        await directory.insert_payment_method(engine, _method("tok_later"))
        async with engine.connect() as connection:
            rows = (await connection.execute(sa.select(payment_methods))).all()
        assert len(rows) == 1
        assert rows[0].token == first[0].token != "tok_later"
        found = await directory.payment_method(engine, "pm_same")
        assert found is not None
        assert found.last4 == "4242"
    finally:
        await engine.dispose()
