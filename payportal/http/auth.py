"""Who is calling: merchants by API key, payers by session token; and what they may see.

The model: a bearer credential names a ``Principal``. ``sk_…`` is a merchant API key
(verified by its hash in ``api_keys``); ``pt_…`` is a payer session (its SHA-256 hash in
``payer_sessions``; the token itself is shown once). Verified credentials are cached
for ``CACHE_TTL_S`` so a busy client costs no database read per request; revoking a key
or a session therefore takes effect within that time.

Access rule (docs/api.md): a merchant sees every account; a payer only the accounts linked
to them. Anything else — another payer's account, or a merchant-only operation — is
answered 404, never 403, so a response never confirms that an object exists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
import time
from typing import Final, Literal

import msgspec
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from payportal.persistence import Store, directory, verify_api_key

from .errors import authentication_failed, not_found
from .typedefs import AUTHENTICATOR, PRINCIPAL

__all__ = [
    "PAYER_TOKEN_PREFIX",
    "Authenticator",
    "Principal",
    "authenticate",
    "authorize_account",
    "hash_password",
    "issue_payer_session",
    "verify_password",
]

PAYER_TOKEN_PREFIX: Final = "pt_"  # noqa: S105 - a prefix, not a secret
MERCHANT_KEY_PREFIX: Final = "sk_"
# Long enough to spare the database on a busy client, short enough that a revoked key
# stops working before anyone could do much with it.
CACHE_TTL_S: Final = 5.0
CACHE_ENTRIES_MAX: Final = 10_000
# A mobile session lasts a working day; the app logs in again after that.
SESSION_TTL: Final = dt.timedelta(hours=12)
# 32 bytes, as for API keys: unguessable, so an unsalted SHA-256 suffices to store it.
TOKEN_BYTES: Final = 32

# A bearer credential is visible ASCII (RFC 6750's b64token is a subset of it).
_CREDENTIAL: Final = re.compile(r"[!-~]+")
# Argon2id with the library's defaults (RFC 9106's second recommended option).
_HASHER: Final = PasswordHasher()
# Verified when the email is unknown, so a login's duration does not reveal whether an
# account exists.
_DUMMY_HASH: Final = _HASHER.hash("not a password of anyone")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["merchant", "payer"]
    # "merchant" for every API key (one merchant per deployment; idempotency keys are
    # the merchant's, whichever of its keys sent them), else the payer's id.
    id: str

    @property
    def is_merchant(self) -> bool:
        return self.kind == "merchant"


MERCHANT: Final = Principal(kind="merchant", id="merchant")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[Principal, float]] = {}
        # (payer id, account id) → until: that a payer may see an account changes as
        # seldom as a session and is cached the same way (``CACHE_TTL_S``). Only a yes is
        # kept, so an account just linked to a payer is theirs at once.
        self._owns: dict[tuple[str, str], float] = {}

    async def payer_owns(self, payer_id: str, account_id: str) -> bool:
        now = time.monotonic()
        until = self._owns.get((payer_id, account_id))
        if until is not None and until > now:
            return True
        owns = await directory.payer_owns_account(self._store.engine, payer_id, account_id)
        if owns:
            if len(self._owns) >= CACHE_ENTRIES_MAX:
                self._owns.clear()
            self._owns[(payer_id, account_id)] = now + CACHE_TTL_S
        return owns

    async def principal_for(self, credential: str) -> Principal | None:
        digest = token_hash(credential)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await self._verify(credential, digest)
        if principal is not None:
            if len(self._cache) >= CACHE_ENTRIES_MAX:
                self._cache.clear()
            self._cache[digest] = (principal, now + CACHE_TTL_S)
        return principal

    async def _verify(self, credential: str, digest: str) -> Principal | None:
        if credential.startswith(MERCHANT_KEY_PREFIX):
            key_id = await verify_api_key(self._store, credential)
            return MERCHANT if key_id is not None else None
        if credential.startswith(PAYER_TOKEN_PREFIX):
            session = await directory.payer_session(self._store.engine, digest)
            if session is None or session.revoked_at is not None:
                return None
            if session.expires_at <= dt.datetime.now(dt.UTC):
                return None
            return Principal(kind="payer", id=session.payer_id)
        return None


async def authenticate(request: web.Request) -> Principal:
    """The request's principal, or 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    # Only HTTP's own spaces around the token: str.strip() also drops "\x0b", "\x85" or
    # "\u2028", and a valid key followed by one of them was accepted.
    credential = credential.strip(" \t")
    if scheme.lower() != "bearer" or _CREDENTIAL.fullmatch(credential) is None:
        raise authentication_failed()
    principal = await request.app[AUTHENTICATOR].principal_for(credential)
    if principal is None:
        raise authentication_failed()
    request[PRINCIPAL] = principal
    return principal


async def authorize_account(
    request: web.Request, principal: Principal, account_id: str, *, merchant_only: bool = False,
    param: str = "id",
) -> None:  # fmt: skip
    """404 unless ``principal`` may act on ``account_id`` (existence is the shard's say)."""
    if principal.is_merchant:
        return
    if merchant_only:
        raise not_found(param, "account")
    if not await request.app[AUTHENTICATOR].payer_owns(principal.id, account_id):
        raise not_found(param, "account")


# -- passwords and sessions -------------------------------------------------------------------


async def hash_password(password: str) -> str:
    # Argon2 takes tens of milliseconds of CPU on purpose: not on the event loop.
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _HASHER.verify(password_hash or _DUMMY_HASH, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


async def issue_payer_session(store: Store, payer_id: str) -> tuple[str, dt.datetime]:
    """A new session token (returned once) and its expiry; only the hash is stored."""
    token = PAYER_TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + SESSION_TTL
    await directory.insert_payer_session(
        store.engine, token_hash=token_hash(token), payer_id=payer_id, expires_at=expires_at
    )
    return token, expires_at
