"""Sensitive fields sealed at rest, through the API on SQLite and PostgreSQL: what the
database holds after accounts, payers, saved cards, payments and emails; a flipped byte
named by the read and by ``check_sealed``; and a data key rotated while payments flow
(docs/design.md decision 12). Harness: ``api_harness.api``."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import shutil
import time
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from payportal.persistence import directory
from payportal.persistence._engine import create_engine_for
from payportal.persistence.rotation import SEALED_COLUMNS, check_sealed, rotate_data_key
from payportal.persistence.sealing import (
    PURPOSES,
    RETIRED,
    Keyring,
    SealedFieldError,
    keep_fresh,
    keks_from_environment,
    keyring_of,
)
from payportal.persistence.tables_keys import data_keys

from .api_harness import Api, api

__all__ = ["api"]


async def _dump(api: Api) -> str:
    """Every row of every table, as text: what a stolen dump would hold."""
    engine = api.store.engine
    parts = []
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda c: sa.inspect(c).get_table_names())
        for name in names:
            rows = await connection.execute(sa.text(f'SELECT * FROM "{name}"'))
            for row in rows:
                for value in row:
                    if isinstance(value, (bytes, memoryview)):
                        value = bytes(value).decode("utf-8", "replace")
                    parts.append(str(value))
    return "\n".join(parts)


async def _customer(api: Api, tag: str) -> tuple[str, str, str, str]:
    """An account named and addressed with ``tag``, a payer, a saved card, an invoice."""
    # With a key, the answer (name and address) is stored for replays: sealed too.
    body = await api.ok("POST", "/v1/accounts", json={
        "name": f"Erika {tag} Mustermann", "email": f"billing-{tag}@firma.example",
        "currency": "USD",
    }, headers={**api.merchant, "Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
    account_id = str(body["id"])
    await api.invoice(account_id, 5_000, dt.date(2026, 1, 31))
    payer_email = f"payer-{tag}@firma.example"
    await api.ok("POST", f"/v1/accounts/{account_id}/payers",
                 json={"email": payer_email, "password": "correct horse battery"})  # fmt: skip
    # Without a password, an invitation email waits in the outbox.
    await api.ok("POST", f"/v1/accounts/{account_id}/payers",
                 json={"email": f"invited-{tag}@firma.example"})  # fmt: skip
    method = await api.payment_method(account_id)
    return account_id, payer_email, method, f"Erika {tag} Mustermann"


async def _pg_dump(url: str) -> str:
    """The database as ``pg_dump`` writes it (data and schema), the way backups are made."""
    if shutil.which("pg_dump") is None and os.environ.get("CI") != "true":
        pytest.skip("pg_dump is not installed here")
    parts = make_url(url)
    process = await asyncio.create_subprocess_exec(
        "pg_dump", "--host", str(parts.host), "--port", str(parts.port or 5432),
        "--username", str(parts.username), "--no-password", str(parts.database),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert "COPY public.payers" in out.decode()
    return out.decode()


async def test_a_dump_holds_no_email_name_or_token_in_clear_and_the_api_reads_them(
    api: Api, database_url: str
) -> None:
    tag = uuid.uuid4().hex[:10]
    account_id, payer_email, method, name = await _customer(api, tag)
    status, body, _ = await api.pay(account_id, 2_000, method)
    assert status in (200, 201, 202), body
    token = (await directory.payment_method(api.store.engine, method)).token  # type: ignore[union-attr]

    dump = await _dump(api)
    if api.store.engine.dialect.name == "postgresql":
        dump += await _pg_dump(database_url)
    for secret in (tag, payer_email, name, token, "firma.example"):
        assert secret not in dump, secret
    # Sealed, not lost: the API and the sign-in find them.
    account = await api.ok("GET", f"/v1/accounts/{account_id}")
    assert (account["name"], account["email"]) == (name, f"billing-{tag}@firma.example")
    session = await api.ok("POST", "/v1/payer/sessions", headers={},
                           json={"email": payer_email, "password": "correct horse battery"})
    assert session["token"]
    report = await check_sealed(api.store.engine, keyring_of(api.store.engine))
    assert report.failures == []
    assert report.checked >= 7
    assert set(report.by_version) == {f"{p} v1" for p in PURPOSES}


def _flip(sealed: str) -> str:
    header_end = sealed.index(".", sealed.index(".", 4) + 1) + 1
    body = sealed[header_end:]
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[len(raw) // 2] ^= 0x40
    return sealed[:header_end] + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


async def test_a_flipped_byte_is_an_error_that_names_the_row_never_garbage(api: Api) -> None:
    account_id, _, method, _ = await _customer(api, uuid.uuid4().hex[:8])
    methods = SEALED_COLUMNS[0].table
    raw_token = sa.type_coerce(methods.c.token, sa.Text)
    async with api.store.engine.begin() as connection:
        stored = (await connection.execute(
            sa.select(raw_token).where(methods.c.id == method))).scalar_one()  # fmt: skip
        await connection.execute(sa.update(methods).where(methods.c.id == method).values(
            token=sa.literal(_flip(stored), sa.Text)))  # fmt: skip

    with pytest.raises(SealedFieldError) as raised:
        await directory.payment_method(api.store.engine, method)
    assert str(raised.value).startswith(f"payment_methods.token of row {method}: ")
    report = await check_sealed(api.store.engine, keyring_of(api.store.engine))
    assert [f for f in report.failures if method in f] == [
        f"payment_methods.token of row {method}: does not authenticate under token key v1 "
        "(altered?)"
    ]
    # Paying with it fails cleanly (the contract's 5xx shape), and charges nothing.
    charges = len(api.charges())
    status, body, _ = await api.pay(account_id, 1_000, method)
    assert status >= 500, (status, body)
    assert body["error"]["type"] == "api_error", body
    assert "tok_" not in str(body)
    assert len(api.charges()) == charges


async def test_every_data_key_rotates_while_payments_flow_and_nothing_is_lost(
    api: Api, database_url: str,
) -> None:
    engine = api.store.engine
    serving = keyring_of(engine)
    # The serving process learns key changes as a running serve does, only sooner.
    api.store._key_refresh.cancel()  # type: ignore[union-attr]
    fresh = asyncio.create_task(keep_fresh(serving, engine, every_s=0.05))
    customers = [await _customer(api, f"before{n}") for n in range(3)]
    paid: list[str] = []
    created: list[tuple[str, str, str, str]] = []
    stop = asyncio.Event()

    async def payments() -> None:
        n = 0
        while not stop.is_set():
            account_id, _, method, _ = customers[n % len(customers)]
            status, body, _ = await api.pay(account_id, 100 + n, method)
            assert status in (200, 201, 202), body
            paid.append(body["id"])
            n += 1

    async def newcomers() -> None:
        n = 0
        while not stop.is_set():
            created.append(await _customer(api, f"during{n}"))
            n += 1

    # The rotation runs as another process would: its own engine and key ring.
    rotator = create_engine_for(database_url)
    try:
        keks = keks_from_environment()
        assert keks is not None
        keyring = await Keyring(keks).load(rotator)
        load = [asyncio.create_task(payments()), asyncio.create_task(newcomers())]
        reports = []
        started = time.monotonic()
        for purpose in PURPOSES:
            reports.append(await rotate_data_key(rotator, keyring, purpose, settle_s=0.3,
                                                 batch=7))  # fmt: skip
        took = time.monotonic() - started
        stop.set()
        await asyncio.gather(*load)
        fresh.cancel()
        resealed = sum(sum(r.resealed.values()) for r in reports)
        print(f"rotated {len(PURPOSES)} data keys in {took:.1f} s: {resealed} values re-sealed "
              f"while {len(paid)} payments and {len(created)} new customers went through")

        assert paid, "no payment went through during the rotation"
        assert created, "no customer was created during the rotation"
        assert [(r.purpose, r.version, r.retired) for r in reports] == [
            (p, 2, [1]) for p in PURPOSES
        ]
        async with rotator.connect() as connection:
            keys = (await connection.execute(sa.select(data_keys))).all()
        old = [k for k in keys if k.purpose in PURPOSES and k.version == 1]
        assert len(old) == len(PURPOSES)
        assert all(k.state == RETIRED and k.wrapped == "" for k in old)

        # A process started now has only the new keys: it opens every value.
        newcomer = create_engine_for(database_url)
        try:
            report = await check_sealed(newcomer, await Keyring(keks).load(newcomer))
        finally:
            await newcomer.dispose()
        assert report.failures == []
        assert set(report.by_version) == {f"{p} v2" for p in PURPOSES}, report.by_version
        # Nothing lost: every payment acknowledged is there, every newcomer reads back.
        for payment_id in paid:
            found = await api.ok("GET", f"/v1/payments/{payment_id}")
            assert found["id"] == payment_id
        for account_id, payer_email, method, name in [*customers, *created]:
            account = await api.ok("GET", f"/v1/accounts/{account_id}")
            assert account["name"] == name
            login = await directory.payer_by_email(engine, payer_email)
            assert login is not None
            assert login.email == payer_email
            row = await directory.payment_method(engine, method)
            assert row is not None
            assert row.token.startswith("tok_")
    finally:
        stop.set()
        fresh.cancel()
        await rotator.dispose()

