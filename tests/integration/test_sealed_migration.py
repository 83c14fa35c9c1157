"""Migration 0014 seals what an existing database holds in clear, on SQLite and
PostgreSQL: a database at 0013 with payers, saved cards, account profiles, a waiting
email and a stored idempotent answer is migrated; afterwards the raw rows hold only
ciphertext, every value reads back through the store, sign-in's lookup finds the payer
and the console's search the account. Downgrading opens them again."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from payportal.mail import OutboxEmail, decode_email
from payportal.persistence import Store, alembic_config, create_engine_for, directory
from payportal.persistence.sealing import SealingError, keyring_of
from tests.databases import SQLITE, scratch_database

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
EMAIL = OutboxEmail(to=("old-payer@legacy.example",), subject="Welcome", text="Hi Old Payer.",
                    html="<p>Hi.</p>")  # fmt: skip
PLAIN = ("old-payer@legacy.example", "tok_legacy0001", "Old Customer GmbH",
         "ap@legacy.example")  # fmt: skip


async def _execute(url: str, *statements: tuple[str, dict[str, Any]]) -> None:
    engine = create_engine_for(url)
    try:
        async with engine.begin() as connection:
            for sql, params in statements:
                await connection.execute(sa.text(sql), params)
    finally:
        await engine.dispose()


async def _raw(url: str) -> str:
    engine = create_engine_for(url)
    try:
        async with engine.connect() as connection:
            parts = []
            for table in ("payers", "payment_methods", "account_profiles", "outbox",
                          "idempotency_records"):  # fmt: skip
                for row in await connection.execute(sa.text(f'SELECT * FROM "{table}"')):
                    parts += [bytes(v).decode("latin-1") if isinstance(v, bytes | memoryview)
                              else str(v) for v in row]  # fmt: skip
            return "\n".join(parts)
    finally:
        await engine.dispose()


def _upgrade(url: str, revision: str, data_keys: str | None = None) -> None:
    from alembic import command

    config = alembic_config(url)
    if data_keys is not None:
        config.attributes["data_keys"] = data_keys
    command.upgrade(config, revision)


@pytest.fixture(params=[SQLITE, pytest.param("postgres", marks=pytest.mark.postgres)])
async def legacy_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    async with scratch_database(request.param, tmp_path, request) as url:
        await asyncio.to_thread(_upgrade, url, "0013")
        await _execute(url, *[
            ("INSERT INTO payers (id, email, password_hash, created_at) "
             "VALUES ('payer_old', 'Old-Payer@Legacy.example', NULL, :now)", {"now": NOW}),
            ("INSERT INTO account_profiles (account_id, name, email, currency, created_at) "
             "VALUES ('acct_old', :name, :email, 'EUR', :now)",
             {"name": PLAIN[2], "email": PLAIN[3], "now": NOW}),
            ("INSERT INTO payment_methods (id, account_id, token, type, brand, created_at) "
             "VALUES ('pm_old', 'acct_old', :token, 'card', 'visa', :now)",
             {"token": PLAIN[1], "now": NOW}),
            ("INSERT INTO outbox (kind, dedupe_key, payload, created_at, attempts, due_at_ms) "
             "VALUES ('email', 'welcome:old', :payload, :now, 0, 0)",
             {"payload": msgspec.msgpack.encode(EMAIL), "now": NOW}),
            ("INSERT INTO idempotency_records (principal, account_id, key, request_hash, "
             "status_code, response_body, created_at) VALUES ('key_1', '', 'k1', 'h', 200, "
             ":body, :now)", {"body": b'{"email": "ap@legacy.example"}', "now": NOW}),
        ])  # fmt: skip
        yield url


async def test_an_existing_databases_rows_are_sealed_by_the_migration(legacy_url: str) -> None:
    before = await _raw(legacy_url)
    assert all(value in before for value in PLAIN[1:])

    await asyncio.to_thread(_upgrade, legacy_url, "head")

    after = await _raw(legacy_url)
    for value in (*PLAIN, "legacy.example", "Old Customer", "Hi Old Payer"):
        assert value not in after, value
    async with await Store.connect(legacy_url) as store:
        engine = store.engine
        # Addresses are stored lower-cased, as new ones are: sign-in finds it either way.
        login = await directory.payer_by_email(engine, "old-payer@legacy.example")
        assert login is not None
        assert (login.payer_id, login.email) == ("payer_old", PLAIN[0])
        profile = await directory.account_profile(engine, "acct_old")
        assert profile is not None
        assert (profile.name, profile.email) == (PLAIN[2], PLAIN[3])
        method = await directory.payment_method(engine, "pm_old")
        assert method is not None
        assert method.token == PLAIN[1]
        async with engine.connect() as connection:
            payload = (await connection.execute(sa.text(
                "SELECT payload FROM outbox WHERE dedupe_key = 'welcome:old'"))).scalar_one()
        assert decode_email(engine, payload) == EMAIL
        record = await directory.idempotency_begin(
            engine, principal="key_1", account_id="", key="k1", request_hash="h")
        assert record is not None
        assert record.response_body == b'{"email": "ap@legacy.example"}'
        keyring = keyring_of(engine)
        async with engine.connect() as connection:
            terms = (await connection.execute(sa.text(
                "SELECT account_id FROM account_search_terms WHERE term = :t"),
                {"t": keyring.blind_index("account.term", "customer")})).scalars().all()
        assert terms == ["acct_old"]

    # Down and up again: opened in clear, then sealed once more.
    await asyncio.to_thread(_downgrade, legacy_url, "0013")
    assert PLAIN[1] in await _raw(legacy_url)
    await asyncio.to_thread(_upgrade, legacy_url, "head")
    assert PLAIN[1] not in await _raw(legacy_url)


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


async def test_a_database_with_rows_to_seal_needs_the_key_encryption_keys(
    legacy_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYPORTAL_DATA_KEYS")
    with pytest.raises(SealingError, match="set PAYPORTAL_DATA_KEYS"):
        await asyncio.to_thread(_upgrade, legacy_url, "head")
    # Nothing half done: still at 0013, still readable as it was.
    assert PLAIN[1] in await _raw(legacy_url)
    monkeypatch.undo()
    await asyncio.to_thread(_upgrade, legacy_url, "head")  # sealed, for the final scan
