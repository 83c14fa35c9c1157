"""Merchant API keys verify only as issued and are kept only as hashes: keys are created
through the same functions the CLI and the front door use, then checked against right,
wrong and revoked keys and against the raw table, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib

import sqlalchemy as sa

from payportal.persistence import Store, create_api_key, tables, verify_api_key


async def test_a_created_key_verifies_and_a_wrong_key_does_not(
    migrated_url: str, store: Store
) -> None:
    key = await asyncio.to_thread(create_api_key, migrated_url, "erp")

    key_id = await verify_api_key(store, key)

    assert key.startswith("sk_")
    assert key_id is not None
    assert await verify_api_key(store.engine, key) == key_id
    assert await verify_api_key(store, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await verify_api_key(store, "sk_") is None
    assert await verify_api_key(store, "") is None


async def test_each_key_is_distinct_and_names_its_own_id(migrated_url: str, store: Store) -> None:
    first = await asyncio.to_thread(create_api_key, migrated_url, "erp")
    second = await asyncio.to_thread(create_api_key, migrated_url, "erp")

    assert first != second
    assert await verify_api_key(store, first) != await verify_api_key(store, second)


async def test_the_database_holds_only_the_hash(migrated_url: str, store: Store) -> None:
    key = await asyncio.to_thread(create_api_key, migrated_url, "erp")

    async with store.engine.connect() as connection:
        rows = list(await connection.execute(sa.select(tables.api_keys)))

    assert len(rows) == 1
    assert rows[0].key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert rows[0].name == "erp"
    assert all(key not in str(value) for value in rows[0])
    assert all(key[3:] not in str(value) for value in rows[0])


async def test_a_revoked_key_no_longer_verifies(migrated_url: str, store: Store) -> None:
    key = await asyncio.to_thread(create_api_key, migrated_url, "erp")
    key_id = await verify_api_key(store, key)

    async with store.engine.begin() as connection:
        await connection.execute(
            sa.update(tables.api_keys)
            .where(tables.api_keys.c.id == key_id)
            .values(revoked_at=sa.func.now())
        )

    assert await verify_api_key(store, key) is None
