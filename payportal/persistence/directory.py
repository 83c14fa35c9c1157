"""The front door's own rows: account profiles, payers and sessions, payment methods and
idempotency records. Small synchronous writes the HTTP layer makes before it answers.

The model: none of these are read models of the journal, so reading them back never
lags. Each function is one short transaction on the store's engine. The idempotency
record's UNIQUE (principal, account_id, key) is what makes a key's first request the
only one to run (docs/design.md decision 4): the insert of the in-flight row either wins or
tells the caller what the winner left.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ._engine import READ
from .sealing import SealedFieldError, blind_index, keyring_of, search_terms
from .tables import idempotency_records
from .tables_payers import (
    account_profiles,
    account_search_terms,
    payer_accounts,
    payer_sessions,
    payers,
    payment_methods,
)
from .upserts import insert_ignoring_conflicts

__all__ = [
    "AccountProfile",
    "IdempotencyRecord",
    "PayerLogin",
    "PaymentMethodRow",
    "SessionRow",
    "account_profile",
    "delete_payment_method",
    "idempotency_abandon",
    "idempotency_begin",
    "idempotency_finish",
    "insert_account_profile",
    "insert_payer_session",
    "insert_payment_method",
    "link_payer",
    "payer_account_ids",
    "payer_by_email",
    "payer_owns_account",
    "payer_session",
    "payment_method",
]


class AccountProfile(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    name: str
    email: str
    currency: str
    external_ref: str | None
    created_at: dt.datetime


class PayerLogin(msgspec.Struct, frozen=True, kw_only=True):
    payer_id: str
    email: str
    password_hash: str | None


class SessionRow(msgspec.Struct, frozen=True, kw_only=True):
    payer_id: str
    expires_at: dt.datetime
    revoked_at: dt.datetime | None


class PaymentMethodRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    account_id: str
    token: str
    type: str
    brand: str
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    wallet: str | None
    created_at: dt.datetime
    deleted_at: dt.datetime | None


class IdempotencyRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_hash: str
    # None while the first request is still in flight.
    status_code: int | None
    response_body: bytes | None


def utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes for timezone-aware columns; they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _reader(engine: AsyncEngine) -> AsyncEngine:
    return engine.execution_options(**READ)


async def _first(engine: AsyncEngine, query: Any) -> Any:
    async with _reader(engine).connect() as connection:
        return (await connection.execute(query)).first()


# -- account profiles -------------------------------------------------------------------------


async def insert_account_profile(engine: AsyncEngine, profile: dict[str, Any]) -> None:
    """The profile (its name and email sealed by the column type) and the blind-index
    words the console's search finds it by."""
    keyring = keyring_of(engine)
    terms = search_terms(profile["name"], profile["email"])
    async with engine.begin() as connection:
        await connection.execute(sa.insert(account_profiles).values(**profile))
        if terms:
            await connection.execute(sa.insert(account_search_terms), [
                {"term": keyring.blind_index("account.term", t),
                 "account_id": profile["account_id"]} for t in sorted(terms)
            ])  # fmt: skip


async def account_profile(engine: AsyncEngine, account_id: str) -> AccountProfile | None:
    try:
        row = await _first(
            engine, sa.select(account_profiles).where(account_profiles.c.account_id == account_id)
        )
    except SealedFieldError as error:
        raise error.at_row(account_id) from None
    if row is None:
        return None
    return AccountProfile(**{**row._mapping, "created_at": utc(row.created_at)})


# -- payers -----------------------------------------------------------------------------------


def email_index(bind: Any, email: str) -> str:
    """The blind index payers are found by (``email`` as stored: lower-cased)."""
    return blind_index(bind, "payers.email", email)


async def payer_by_email(engine: AsyncEngine, email: str) -> PayerLogin | None:
    row = await _first(
        engine,
        sa.select(payers.c.id, payers.c.email, payers.c.password_hash).where(
            payers.c.email_index == email_index(engine, email)
        ),
    )
    if row is None:
        return None
    return PayerLogin(payer_id=row.id, email=row.email, password_hash=row.password_hash)


async def link_payer(
    engine: AsyncEngine, *, new_payer_id: str, email: str, password_hash: str | None,
    account_id: str,
) -> tuple[str, bool]:  # fmt: skip
    """The payer with ``email`` (created with ``new_payer_id`` if there is none) now owns
    ``account_id``. Returns (payer id, whether the payer was created). An existing payer's
    password is set only if it had none."""
    async with engine.begin() as connection:
        row = (
            await connection.execute(
                sa.select(payers.c.id, payers.c.password_hash).where(
                    payers.c.email_index == email_index(engine, email)
                )
            )
        ).first()
        created = row is None
        if row is None:
            payer_id = new_payer_id
            await connection.execute(
                sa.insert(payers).values(id=payer_id, email=email, password_hash=password_hash,
                                         email_index=email_index(engine, email))
            )
        else:
            payer_id = row.id
            if row.password_hash is None and password_hash is not None:
                await connection.execute(
                    sa.update(payers)
                    .where(payers.c.id == payer_id)
                    .values(password_hash=password_hash)
                )
        linked = (
            await connection.execute(
                sa.select(payer_accounts.c.payer_id).where(
                    payer_accounts.c.payer_id == payer_id,
                    payer_accounts.c.account_id == account_id,
                )
            )
        ).first()
        if linked is None:
            await connection.execute(
                sa.insert(payer_accounts).values(payer_id=payer_id, account_id=account_id)
            )
    return payer_id, created


async def payer_owns_account(engine: AsyncEngine, payer_id: str, account_id: str) -> bool:
    row = await _first(
        engine,
        sa.select(payer_accounts.c.payer_id).where(
            payer_accounts.c.payer_id == payer_id, payer_accounts.c.account_id == account_id
        ),
    )
    return row is not None


async def payer_account_ids(engine: AsyncEngine, payer_id: str) -> list[str]:
    async with _reader(engine).connect() as connection:
        result = await connection.execute(
            sa.select(payer_accounts.c.account_id)
            .where(payer_accounts.c.payer_id == payer_id)
            .order_by(payer_accounts.c.account_id)
        )
        return [row.account_id for row in result]


async def insert_payer_session(
    engine: AsyncEngine, *, token_hash: str, payer_id: str, expires_at: dt.datetime
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            sa.insert(payer_sessions).values(
                token_hash=token_hash, payer_id=payer_id, expires_at=expires_at
            )
        )


async def payer_session(engine: AsyncEngine, token_hash: str) -> SessionRow | None:
    row = await _first(
        engine,
        sa.select(payer_sessions.c.payer_id, payer_sessions.c.expires_at,
                  payer_sessions.c.revoked_at)
        .where(payer_sessions.c.token_hash == token_hash),
    )  # fmt: skip
    if row is None:
        return None
    revoked_at = utc(row.revoked_at) if row.revoked_at is not None else None
    return SessionRow(payer_id=row.payer_id, expires_at=utc(row.expires_at), revoked_at=revoked_at)


# -- payment methods --------------------------------------------------------------------------


def _payment_method(row: Any) -> PaymentMethodRow:
    values = dict(row._mapping)
    values["created_at"] = utc(values["created_at"])
    if values["deleted_at"] is not None:
        values["deleted_at"] = utc(values["deleted_at"])
    return PaymentMethodRow(**values)


async def insert_payment_method(engine: AsyncEngine, values: dict[str, Any]) -> None:
    """Insert; an existing row with the same id (a deterministic id sent again) is kept,
    also when two requests send it at once."""
    async with engine.begin() as connection:
        await insert_ignoring_conflicts(connection, payment_methods, values, keys=["id"])


async def payment_method(engine: AsyncEngine, payment_method_id: str) -> PaymentMethodRow | None:
    try:
        row = await _first(
            engine, sa.select(payment_methods).where(payment_methods.c.id == payment_method_id)
        )
    except SealedFieldError as error:
        raise error.at_row(payment_method_id) from None
    return None if row is None else _payment_method(row)


async def delete_payment_method(engine: AsyncEngine, payment_method_id: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(payment_methods)
            .where(
                payment_methods.c.id == payment_method_id, payment_methods.c.deleted_at.is_(None)
            )
            .values(deleted_at=sa.func.now())
        )


# -- idempotency records ----------------------------------------------------------------------


def _record_key(principal: str, account_id: str, key: str) -> Any:
    r = idempotency_records.c
    return sa.and_(r.principal == principal, r.account_id == account_id, r.key == key)


async def idempotency_begin(
    engine: AsyncEngine, *, principal: str, account_id: str, key: str, request_hash: str
) -> IdempotencyRecord | None:
    """Insert the in-flight record. None: this request won and must run. Otherwise the
    record another request left (maybe still in flight: ``status_code`` None)."""
    try:
        async with engine.begin() as connection:
            await connection.execute(
                sa.insert(idempotency_records).values(
                    principal=principal, account_id=account_id, key=key,
                    request_hash=request_hash,
                )
            )  # fmt: skip
        return None
    except sa.exc.IntegrityError:
        pass
    r = idempotency_records.c
    row = await _first(
        engine,
        sa.select(r.request_hash, r.status_code, r.response_body, r.created_at).where(
            _record_key(principal, account_id, key)
        ),
    )
    if (
        row is not None
        and row.status_code is None
        and row.request_hash == request_hash
        and await _idempotency_take_over(engine, principal, account_id, key)
    ):
        return None
    if row is None:
        # The winner abandoned its record (a 5xx) between our insert and our read.
        return IdempotencyRecord(request_hash=request_hash, status_code=None, response_body=None)
    return IdempotencyRecord(
        request_hash=row.request_hash, status_code=row.status_code, response_body=row.response_body
    )


# A request holds its key at most this long. One whose process died mid-way would
# otherwise answer 409 forever; after this the same request may run again, which is safe:
# the engine answers a repeated payment with the original, and the processor dedupes the
# charge by the attempt id.
IDEMPOTENCY_LOCK_TIMEOUT = dt.timedelta(seconds=60)


async def _idempotency_take_over(
    engine: AsyncEngine, principal: str, account_id: str, key: str
) -> bool:
    """Claim an in-flight record older than the lock timeout; True for exactly one of
    several claimants (the claim renews it, so the next one finds it fresh)."""
    now = dt.datetime.now(dt.UTC)
    async with engine.begin() as connection:
        result = await connection.execute(
            sa.update(idempotency_records)
            .where(
                _record_key(principal, account_id, key),
                idempotency_records.c.status_code.is_(None),
                idempotency_records.c.created_at < now - IDEMPOTENCY_LOCK_TIMEOUT,
            )
            .values(created_at=now)
        )
    return bool(result.rowcount == 1)


async def idempotency_finish(
    engine: AsyncEngine, *, principal: str, account_id: str, key: str, status_code: int,
    response_body: bytes,
) -> None:  # fmt: skip
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(idempotency_records)
            .where(
                _record_key(principal, account_id, key),
                idempotency_records.c.status_code.is_(None),
            )
            .values(status_code=status_code, response_body=response_body)
        )


async def idempotency_abandon(
    engine: AsyncEngine, *, principal: str, account_id: str, key: str
) -> None:
    """Forget an in-flight record whose request failed on our side, so a retry runs."""
    async with engine.begin() as connection:
        await connection.execute(
            sa.delete(idempotency_records).where(
                _record_key(principal, account_id, key),
                idempotency_records.c.status_code.is_(None),
            )
        )
