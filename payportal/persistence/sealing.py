"""Envelope encryption of sensitive fields at rest (docs/design.md decision 12).

What is sealed: processor tokens (``payment_methods.token``), payers' and accounts'
contact data (``payers.email``, ``account_profiles.name`` / ``email``), rendered emails
waiting in the outbox, and stored idempotent responses (they repeat what a request
created: a payer's address, a card's facts). Journal rows and checkpoints hold none of
these (a payment names its method by id; the token is looked up at charge time).

The keys:

- **Key encryption keys** (KEKs) come from ``PAYPORTAL_DATA_KEYS`` (the keys, or
  ``file:`` and a path), never from the database: ``<version>:<base64 of 32 bytes>``,
  several separated by commas or newlines. The highest version wraps new data keys.
- **Data keys**, one per purpose and version, are random 256-bit AES keys stored in
  ``data_keys`` wrapped (AES-GCM) by a KEK. A dump of the database without the KEK holds
  only ciphertext.
- **The index key** (purpose ``index``) keys HMAC-SHA256 blind indexes: equality
  lookups (a payer signing in by email, the console's search by word) compare
  ``HMAC(index key, value)``, never the value.

A sealed value is ASCII: ``pp1.<purpose>.<key version>.<base64url(nonce | ciphertext |
tag)>``. AES-256-GCM with a fresh 96-bit nonce; the associated data is the header and
the column's name, so a ciphertext moved to another column fails to open. A value whose
tag does not verify raises :class:`SealedFieldError` naming the column and key version:
never garbage. The version in clear lets the rotation find the rows still under an old
key with a prefix match.

A key ring belongs to an engine (``attach`` puts it on the engine's dialect, where the
``Sealed`` column type finds it): two databases open in one process each use their own
data keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncEngine

from ._engine import READ
from .tables_keys import data_keys

__all__ = [
    "INDEX",
    "PURPOSES",
    "Keyring",
    "Sealed",
    "SealedBytes",
    "SealedFieldError",
    "SealingError",
    "attach",
    "blind_index",
    "keyring_of",
    "new_kek",
    "open_keyring",
    "parse_keks",
    "query_terms",
    "read_keks",
    "search_terms",
]  # fmt: skip

log = logging.getLogger(__name__)

SCHEME: Final = "pp1"
# How often a running process re-reads ``data_keys``: a rotation waits twice this long
# between its steps, so every process has learnt a key before it is used.
REFRESH_S: Final = 5.0
# What each data key protects; rotated separately.
PURPOSES: Final = ("token", "contact", "message", "response")
INDEX: Final = "index"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
SETTING: Final = "PAYPORTAL_DATA_KEYS"
_HEADER: Final = re.compile(r"pp1\.([a-z]+)\.([0-9]{1,9})\.")
_KEK_ENTRY: Final = re.compile(r"([0-9]{1,9}):([A-Za-z0-9+/=_-]+)")

# Key states: a pending key opens values but seals none yet (every process learns it
# before it becomes active); retired keys are destroyed (their rows were re-sealed).
PENDING: Final = "pending"
ACTIVE: Final = "active"
READABLE: Final = "readable"
RETIRED: Final = "retired"


class SealingError(Exception):
    """Keys missing or unusable: a configuration problem, not bad data."""


class SealedFieldError(Exception):
    """A stored value that does not open: tampered with, truncated, or sealed under a key
    this process does not have. Names where it is, never what it holds."""

    def __init__(self, column: str, reason: str, *, row: str | None = None) -> None:
        self.column, self.reason, self.row = column, reason, row
        where = f"{column} of row {row}" if row is not None else column
        super().__init__(f"{where}: {reason}")

    def at_row(self, row: str) -> SealedFieldError:
        return SealedFieldError(self.column, self.reason, row=row)


# -- key encryption keys ------------------------------------------------------------------


def new_kek() -> str:
    """A fresh KEK as ``PAYPORTAL_DATA_KEYS`` spells one (version 1)."""
    return "1:" + base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_keks(raw: str) -> dict[int, bytes]:
    """KEKs by version from the setting's text. Errors name the setting, never a value."""
    keks: dict[int, bytes] = {}
    for entry in filter(None, re.split(r"[\s,]+", raw.strip())):
        match = _KEK_ENTRY.fullmatch(entry)
        if match is None:
            raise SealingError(f"{SETTING}: each key is <version>:<base64 of 32 bytes>")
        try:
            key = base64.b64decode(match.group(2).replace("-", "+").replace("_", "/"),
                                   validate=True)  # fmt: skip
        except binascii.Error:
            raise SealingError(f"{SETTING}: key version {match.group(1)} is not base64") from None
        if len(key) != KEY_BYTES:
            raise SealingError(f"{SETTING}: key version {match.group(1)} is not 32 bytes")
        keks[int(match.group(1))] = key
    if not keks:
        raise SealingError(f"{SETTING} holds no key")
    return keks


def read_keks(value: str) -> dict[int, bytes]:
    """The setting's value: the keys themselves, or ``file:<path>`` to a file of them."""
    if value.startswith("file:"):
        path = Path(value[len("file:"):]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise SealingError(f"{SETTING}: cannot read {path}: {exc.strerror}") from None
        return parse_keks(text)
    return parse_keks(value)


def keks_from_environment() -> dict[int, bytes] | None:
    value = os.environ.get(SETTING)
    return read_keks(value) if value else None


# -- the key ring ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _wrap_aad(purpose: str, version: int) -> bytes:
    return f"data_key:{purpose}:{version}".encode()


def wrap(kek: bytes, purpose: str, version: int, key: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return _b64(nonce + AESGCM(kek).encrypt(nonce, key, _wrap_aad(purpose, version)))


def unwrap(kek: bytes, purpose: str, version: int, wrapped: str) -> bytes:
    raw = _unb64(wrapped)
    try:
        return AESGCM(kek).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                   _wrap_aad(purpose, version))  # fmt: skip
    except InvalidTag:
        raise SealingError(
            f"data key {purpose} v{version} does not open with its key encryption key: "
            f"wrong {SETTING}, or the data_keys row was altered"
        ) from None


def new_data_key_row(keks: Mapping[int, bytes], purpose: str, version: int, state: str
                     ) -> dict[str, Any]:  # fmt: skip
    kek_version = max(keks)
    return {
        "purpose": purpose, "version": version, "kek_version": kek_version,
        "wrapped": wrap(keks[kek_version], purpose, version, os.urandom(KEY_BYTES)),
        "state": state, "created_at": dt.datetime.now(dt.UTC),
    }  # fmt: skip


class Keyring:
    """The unwrapped data keys of one database, and what seals and opens with them."""

    def __init__(self, keks: Mapping[int, bytes]) -> None:
        self.keks = dict(keks)
        self._keys: dict[tuple[str, int], AESGCM] = {}
        self._index: dict[int, bytes] = {}
        self.active: dict[str, int] = {}
        self.states: dict[tuple[str, int], str] = {}

    # Loading ---------------------------------------------------------------------------

    def absorb(self, rows: Iterable[Any]) -> None:
        """Take the ``data_keys`` rows (all of them): unwrap what is new, drop retired."""
        active: dict[str, int] = {}
        states: dict[tuple[str, int], str] = {}
        for row in rows:
            slot = (row.purpose, row.version)
            states[slot] = row.state
            if row.state == RETIRED:
                self._keys.pop(slot, None)
                continue
            if row.state == ACTIVE:
                active[row.purpose] = max(active.get(row.purpose, 0), row.version)
            if slot in self._keys or (row.purpose == INDEX and row.version in self._index):
                continue
            kek = self.keks.get(row.kek_version)
            if kek is None:
                raise SealingError(
                    f"data key {row.purpose} v{row.version} is wrapped by key encryption "
                    f"key v{row.kek_version}, which {SETTING} does not hold"
                )
            key = unwrap(kek, row.purpose, row.version, row.wrapped)
            if row.purpose == INDEX:
                self._index[row.version] = key
            else:
                self._keys[slot] = AESGCM(key)
        self.active, self.states = active, states

    def missing_rows(self) -> list[dict[str, Any]]:
        """Version-1 rows for every purpose without an active key (a new database)."""
        return [
            new_data_key_row(self.keks, purpose, 1, ACTIVE)
            for purpose in (*PURPOSES, INDEX)
            if purpose not in self.active and not any(p == purpose for p, _ in self.states)
        ]

    async def load(self, engine: AsyncEngine) -> Keyring:
        """Read (creating on first use) the database's data keys; attach to ``engine``."""
        async with engine.execution_options(**READ).connect() as connection:
            rows = (await connection.execute(sa.select(data_keys))).all()
        self.absorb(rows)
        missing = self.missing_rows()
        if missing:
            async with engine.begin() as connection:
                # Several processes may start at once on a new database: the first wins.
                for row in missing:
                    await connection.execute(_insert_ignoring(connection, row))
            async with engine.execution_options(**READ).connect() as connection:
                self.absorb((await connection.execute(sa.select(data_keys))).all())
        attach(engine, self)
        return self

    def load_sync(self, connection: sa.Connection) -> Keyring:
        """``load`` for a synchronous connection (a migration's)."""
        self.absorb(connection.execute(sa.select(data_keys)).all())
        for row in self.missing_rows():
            connection.execute(_insert_ignoring(connection, row))
        self.absorb(connection.execute(sa.select(data_keys)).all())
        return self

    async def refresh(self, engine: AsyncEngine) -> None:
        """Learn keys added or retired since: a rotation run by another process. A
        deferred read on SQLite: a refresh must never take the shared write lock."""
        async with engine.execution_options(**READ).connect() as connection:
            self.absorb((await connection.execute(sa.select(data_keys))).all())

    # Sealing ---------------------------------------------------------------------------

    def seal(self, purpose: str, column: str, plaintext: str | bytes) -> str:
        version = self.active.get(purpose)
        if version is None:
            raise SealingError(f"no active data key for {purpose!r}: load the key ring first")
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        header = f"{SCHEME}.{purpose}.{version}."
        nonce = os.urandom(NONCE_BYTES)
        box = self._keys[purpose, version].encrypt(nonce, data, (header + column).encode())
        return header + _b64(nonce + box)

    def open(self, column: str, sealed: str) -> bytes:
        match = _HEADER.match(sealed)
        if match is None:
            raise SealedFieldError(column, "not a sealed value (no pp1 header)")
        purpose, version = match.group(1), int(match.group(2))
        key = self._keys.get((purpose, version))
        if key is None:
            state = self.states.get((purpose, version))
            reason = "retired" if state == RETIRED else "unknown to this process"
            raise SealedFieldError(column, f"sealed with {purpose} key v{version}, {reason}")
        try:
            raw = _unb64(sealed[match.end():])
        except (binascii.Error, ValueError):
            raise SealedFieldError(column, f"{purpose} key v{version}: not base64") from None
        header = sealed[: match.end()]
        try:
            return key.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], (header + column).encode())
        except (InvalidTag, ValueError):
            raise SealedFieldError(
                column, f"does not authenticate under {purpose} key v{version} (altered?)"
            ) from None

    def open_text(self, column: str, sealed: str) -> str:
        return self.open(column, sealed).decode()

    def seal_bytes(self, purpose: str, column: str, data: bytes) -> bytes:
        """``seal`` for a binary column: the same ASCII text, as bytes."""
        return self.seal(purpose, column, data).encode()

    def open_bytes(self, column: str, stored: bytes) -> bytes:
        return self.open(column, bytes(stored).decode("ascii", "replace"))

    def blind_index(self, field: str, value: str) -> str:
        """HMAC-SHA256 of ``value`` for equality lookups on ``field`` (64 hex digits)."""
        if not self._index:
            raise SealingError("no index key: load the key ring first")
        key = self._index[max(self._index)]
        return hmac.new(key, f"{field}\x00{value}".encode(), hashlib.sha256).hexdigest()


async def open_keyring(engine: AsyncEngine, keks: Mapping[int, bytes] | None = None
                       ) -> Keyring | None:  # fmt: skip
    """Load ``engine``'s data keys with ``keks`` (default: ``PAYPORTAL_DATA_KEYS``) and
    attach them. None when no KEK is configured or the database has no ``data_keys``
    table yet: the engine then refuses to read or write a sealed column
    (``SealingError``), and everything else works."""
    keks = keks or keks_from_environment()
    if not keks:
        return None
    try:
        return await Keyring(keks).load(engine)
    except sa.exc.DBAPIError:
        async with engine.connect() as connection:
            migrated = await connection.run_sync(lambda c: sa.inspect(c).has_table("data_keys"))
        if migrated:
            raise
        # A database not migrated yet (``payportal migrate`` makes the table): no keys, so
        # sealed columns refuse with SealingError; everything else works.
        return None


async def keep_fresh(keyring: Keyring, engine: AsyncEngine, every_s: float = REFRESH_S) -> None:
    """Re-read the data keys every ``every_s`` until cancelled (a rotation's new keys)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await keyring.refresh(engine)
        except Exception as error:  # the database away for a moment: try again next time
            log.warning("data keys: refresh failed (%s); the keys known stay in use",
                        type(error).__name__)  # fmt: skip


def key_version_of(sealed: str) -> tuple[str, int] | None:
    match = _HEADER.match(sealed)
    return None if match is None else (match.group(1), int(match.group(2)))


def _insert_ignoring(connection: Any, row: dict[str, Any]) -> Any:
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(data_keys).values(**row).on_conflict_do_nothing()
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(data_keys).values(**row).on_conflict_do_nothing()


# -- engines and columns --------------------------------------------------------------------

_ATTRIBUTE: Final = "payportal_keyring"


def attach(engine: AsyncEngine | sa.Engine, keyring: Keyring) -> None:
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    setattr(sync.dialect, _ATTRIBUTE, keyring)


def keyring_of(bind: Any) -> Keyring:
    """The key ring of an engine, a connection (sync or async) or a dialect."""
    if isinstance(bind, AsyncEngine):
        bind = bind.sync_engine
    dialect = getattr(bind, "dialect", bind)
    keyring = getattr(dialect, _ATTRIBUTE, None)
    if keyring is None:
        raise SealingError(
            f"this database engine has no data keys: open it through Store.connect or "
            f"load a Keyring ({SETTING})"
        )
    return keyring  # type: ignore[no-any-return]


def blind_index(bind: Any, field: str, value: str) -> str:
    return keyring_of(bind).blind_index(field, value)


_WORD: Final = re.compile(r"[^\W_]+")


def search_terms(name: str, email: str) -> set[str]:
    """The words the console's search finds an account by: each word of its name and
    email (lower-cased), and the whole address."""
    email = email.strip().lower()
    return {*_WORD.findall(name.lower()), *_WORD.findall(email), email} - {""}


def query_terms(query: str) -> set[str]:
    """The words of a search: every one must be among an account's ``search_terms``."""
    query = query.strip().lower()
    terms = set(_WORD.findall(query))
    if "@" in query and " " not in query and "." in query.split("@")[-1]:
        terms = {query}  # a whole address: exactly that one
    return terms


class _SealedType:
    """What both sealed column types hold: the data key's purpose and the column's name
    (bound into each ciphertext)."""

    def __init__(self, purpose: str, column: str) -> None:
        super().__init__()
        assert purpose in PURPOSES, purpose
        self.purpose, self.column = purpose, column


class Sealed(_SealedType, sa.types.TypeDecorator[str]):
    """A text column stored sealed: Python code reads and writes plain ``str``. Cannot be
    compared in SQL (each sealing differs): look such columns up by a blind index."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.engine.Dialect) -> str | None:
        if value is None:
            return None
        return keyring_of(dialect).seal(self.purpose, self.column, value)

    def process_result_value(self, value: str | None, dialect: sa.engine.Dialect
                             ) -> str | None:  # fmt: skip
        if value is None:
            return None
        return keyring_of(dialect).open_text(self.column, value)


class SealedBytes(_SealedType, sa.types.TypeDecorator[bytes]):
    """``Sealed`` for a binary column: Python code reads and writes ``bytes``."""

    impl = sa.LargeBinary
    cache_ok = True

    def process_bind_param(self, value: bytes | None, dialect: sa.engine.Dialect
                           ) -> bytes | None:  # fmt: skip
        if value is None:
            return None
        return keyring_of(dialect).seal_bytes(self.purpose, self.column, value)

    def process_result_value(self, value: bytes | None, dialect: sa.engine.Dialect
                             ) -> bytes | None:  # fmt: skip
        if value is None:
            return None
        return keyring_of(dialect).open_bytes(self.column, value)
