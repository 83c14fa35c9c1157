"""Merchant API keys: shown once, stored only as a SHA-256 hash.

A key is ``sk_`` + 32 random bytes (url-safe base64): too much entropy to guess, so an
unsalted SHA-256 is enough to make a leaked table useless, and it lets verification
look the key up by its hash in one indexed read. A revoked key no longer verifies.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ._engine import READ, create_engine_for
from ._store import Store
from .tables import api_keys

__all__ = ["KEY_PREFIX", "create_api_key", "create_api_key_async", "hash_api_key", "verify_api_key"]

KEY_PREFIX: Final = "sk_"
# 32 bytes = 256 bits, as Stripe's secret keys and the secrets module recommend.
KEY_BYTES: Final = 32


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _engine_of(store_or_engine: Store | AsyncEngine) -> AsyncEngine:
    return store_or_engine.engine if isinstance(store_or_engine, Store) else store_or_engine


async def create_api_key_async(store_or_engine: Store | AsyncEngine, name: str) -> str:
    """Store a new key's hash and return the key (the only time it exists in clear)."""
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    key_id = "key_" + secrets.token_hex(8)
    async with _engine_of(store_or_engine).begin() as connection:
        await connection.execute(
            sa.insert(api_keys).values(id=key_id, name=name, key_hash=hash_api_key(key))
        )
    return key


def create_api_key(url: str, name: str) -> str:
    """Synchronous ``create_api_key_async`` on a short-lived engine (``payportal keys create``)."""

    async def run() -> str:
        engine = create_engine_for(url)
        try:
            return await create_api_key_async(engine, name)
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def verify_api_key(store_or_engine: Store | AsyncEngine, key: str) -> str | None:
    """The key's id if ``key`` is a live API key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_hash = hash_api_key(key)
    engine = _engine_of(store_or_engine).execution_options(**READ)
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                sa.select(api_keys.c.id, api_keys.c.key_hash).where(
                    api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
                )
            )
        ).first()
    # The lookup already matched; the constant-time compare keeps that an invariant.
    if row is None or not hmac.compare_digest(row.key_hash, key_hash):
        return None
    return str(row.id)
