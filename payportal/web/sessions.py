"""Browser sessions and one-time links (password reset, invitation), stored hashed.

The model: the session cookie and a link's token are 256-bit random strings shown to
the browser (or mailed) once; the database keeps their SHA-256 (``tables_portal``).
Rules:

- A session lasts at most ``SESSION_TTL`` and ends after ``SESSION_IDLE`` without a
  request; ``last_seen_at`` is written at most once per ``TOUCH_EVERY`` so browsing
  costs no write per page.
- Signing in always starts a new session (the id rotates); signing out revokes it;
  "sign out everywhere", a password change and a password reset revoke every other
  browser session of the payer and every API session (``payer_sessions``) too.
- A link is used at most once: the first use marks it used in the same statement that
  checks it was unused and unexpired (``UPDATE … WHERE used_at IS NULL``), so two
  concurrent uses cannot both win. Using it sets the password in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Final, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payportal.persistence.directory import utc
from payportal.persistence.tables_payers import payer_accounts, payer_sessions, payers
from payportal.persistence.tables_portal import portal_links, portal_preferences, portal_sessions

__all__ = [
    "SESSION_TTL",
    "BrowserSession",
    "LinkPurpose",
    "end_all_sessions",
    "end_session",
    "issue_link",
    "link_is_usable",
    "list_sessions",
    "load_session",
    "start_session",
    "token_hash",
    "use_link",
]

# A working day: long enough for a payer's errands, short enough that a forgotten
# shared computer does not stay signed in overnight.
SESSION_TTL: Final = dt.timedelta(hours=12)
# Idle sessions end: someone walking away from a browser is signed out soon after.
SESSION_IDLE: Final = dt.timedelta(minutes=30)
TOUCH_EVERY: Final = dt.timedelta(minutes=1)
# A reset link is used within minutes of asking for it; an hour forgives a slow inbox.
RESET_TTL: Final = dt.timedelta(hours=1)
# An invitation may wait for the payer's next working week.
INVITE_TTL: Final = dt.timedelta(days=7)
TOKEN_BYTES: Final = 32
USER_AGENT_LENGTH_MAX: Final = 200

LinkPurpose = Literal["reset", "invite"]
_LINK_TTL: Final[dict[str, dt.timedelta]] = {"reset": RESET_TTL, "invite": INVITE_TTL}
_LINK_PREFIX: Final[dict[str, str]] = {"reset": "rs_", "invite": "iv_"}


class BrowserSession(msgspec.Struct, frozen=True, kw_only=True):
    token_hash: str
    payer_id: str
    email: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    user_agent: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def start_session(engine: AsyncEngine, payer_id: str, user_agent: str) -> str:
    """A new session for ``payer_id``; returns the cookie's token (stored hashed)."""
    token = "ps_" + secrets.token_urlsafe(TOKEN_BYTES)
    now = _now()
    async with engine.begin() as connection:
        await connection.execute(
            sa.insert(portal_sessions).values(
                token_hash=token_hash(token), payer_id=payer_id, last_seen_at=now,
                expires_at=now + SESSION_TTL, user_agent=user_agent[:USER_AGENT_LENGTH_MAX],
            )
        )  # fmt: skip
    return token


async def load_session(engine: AsyncEngine, token: str) -> BrowserSession | None:
    """The live session the cookie names, or None (unknown, revoked, expired or idle)."""
    if not token.startswith("ps_") or len(token) > 100:
        return None
    digest = token_hash(token)
    query = (
        sa.select(portal_sessions, payers.c.email)
        .join(payers, payers.c.id == portal_sessions.c.payer_id)
        .where(portal_sessions.c.token_hash == digest)
    )
    async with engine.connect() as connection:
        row = (await connection.execute(query)).first()
    if row is None or row.revoked_at is not None:
        return None
    now = _now()
    last_seen_at = utc(row.last_seen_at)
    if utc(row.expires_at) <= now or last_seen_at + SESSION_IDLE <= now:
        return None
    if now - last_seen_at >= TOUCH_EVERY:
        async with engine.begin() as connection:
            await connection.execute(
                sa.update(portal_sessions)
                .where(portal_sessions.c.token_hash == digest)
                .values(last_seen_at=now)
            )
        last_seen_at = now
    return BrowserSession(
        token_hash=digest, payer_id=row.payer_id, email=row.email,
        created_at=utc(row.created_at), last_seen_at=last_seen_at, user_agent=row.user_agent,
    )  # fmt: skip


async def end_session(engine: AsyncEngine, digest: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(portal_sessions)
            .where(portal_sessions.c.token_hash == digest, portal_sessions.c.revoked_at.is_(None))
            .values(revoked_at=_now())
        )


async def _end_all(connection: AsyncConnection, payer_id: str, keep: str | None) -> int:
    now = _now()
    browser = sa.update(portal_sessions).where(
        portal_sessions.c.payer_id == payer_id, portal_sessions.c.revoked_at.is_(None)
    )
    if keep is not None:
        browser = browser.where(portal_sessions.c.token_hash != keep)
    ended = (await connection.execute(browser.values(revoked_at=now))).rowcount
    api = (
        await connection.execute(
            sa.update(payer_sessions)
            .where(payer_sessions.c.payer_id == payer_id, payer_sessions.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    ).rowcount
    return int(ended or 0) + int(api or 0)


async def end_all_sessions(engine: AsyncEngine, payer_id: str, *, keep: str | None = None) -> int:
    """Revoke every session of the payer (browser and API) but ``keep``; how many ended."""
    async with engine.begin() as connection:
        return await _end_all(connection, payer_id, keep)


async def list_sessions(engine: AsyncEngine, payer_id: str) -> list[BrowserSession]:
    now = _now()
    query = (
        sa.select(portal_sessions, payers.c.email)
        .join(payers, payers.c.id == portal_sessions.c.payer_id)
        .where(portal_sessions.c.payer_id == payer_id, portal_sessions.c.revoked_at.is_(None))
        .order_by(portal_sessions.c.last_seen_at.desc())
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return [
        BrowserSession(
            token_hash=r.token_hash, payer_id=r.payer_id, email=r.email,
            created_at=utc(r.created_at), last_seen_at=utc(r.last_seen_at),
            user_agent=r.user_agent,
        )
        for r in rows
        if utc(r.expires_at) > now and utc(r.last_seen_at) + SESSION_IDLE > now
    ]  # fmt: skip


async def set_password(engine: AsyncEngine, payer_id: str, password_hash: str, *,
                       keep: str | None) -> None:  # fmt: skip
    """A new password ends every other session: whoever knew the old one is out."""
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(payers).where(payers.c.id == payer_id).values(password_hash=password_hash)
        )
        await _end_all(connection, payer_id, keep)


async def issue_link(connection: AsyncConnection, purpose: LinkPurpose, payer_id: str) -> str:
    """A one-time link token, written in the caller's transaction (beside its email)."""
    token = _LINK_PREFIX[purpose] + secrets.token_urlsafe(TOKEN_BYTES)
    await connection.execute(
        sa.insert(portal_links).values(
            token_hash=token_hash(token), purpose=purpose, payer_id=payer_id,
            expires_at=_now() + _LINK_TTL[purpose],
        )
    )  # fmt: skip
    return token


def _usable(purpose: LinkPurpose, token: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        portal_links.c.token_hash == token_hash(token),
        portal_links.c.purpose == purpose,
        portal_links.c.used_at.is_(None),
        portal_links.c.expires_at > _now(),
    )


async def link_is_usable(engine: AsyncEngine, purpose: LinkPurpose, token: str) -> bool:
    if not token.startswith(_LINK_PREFIX[purpose]) or len(token) > 100:
        return False
    async with engine.connect() as connection:
        row = (await connection.execute(sa.select(portal_links.c.payer_id)
                                        .where(_usable(purpose, token)))).first()  # fmt: skip
    return row is not None


async def use_link(
    engine: AsyncEngine, purpose: LinkPurpose, token: str, password_hash: str
) -> str | None:
    """Spend the link and set the payer's password; the payer id, or None if the link is
    unknown, expired or already used. Every session of the payer ends."""
    if not token.startswith(_LINK_PREFIX[purpose]) or len(token) > 100:
        return None
    async with engine.begin() as connection:
        row = (
            await connection.execute(
                sa.select(portal_links.c.payer_id).where(_usable(purpose, token))
            )
        ).first()
        if row is None:
            return None
        spent = await connection.execute(
            sa.update(portal_links).where(_usable(purpose, token)).values(used_at=_now())
        )
        if spent.rowcount != 1:  # a concurrent use won
            return None
        await connection.execute(
            sa.update(payers).where(payers.c.id == row.payer_id)
            .values(password_hash=password_hash)
        )  # fmt: skip
        await _end_all(connection, row.payer_id, None)
        return str(row.payer_id)


async def payer_accounts_of(engine: AsyncEngine, payer_id: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            sa.select(payer_accounts.c.account_id)
            .where(payer_accounts.c.payer_id == payer_id)
            .order_by(payer_accounts.c.account_id)
        )
        return [r.account_id for r in rows]


async def default_method(engine: AsyncEngine, account_id: str) -> str | None:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                sa.select(portal_preferences.c.default_payment_method_id).where(
                    portal_preferences.c.account_id == account_id
                )
            )
        ).first()
    return None if row is None else row.default_payment_method_id


async def set_default_method(engine: AsyncEngine, account_id: str, method_id: str | None) -> None:
    async with engine.begin() as connection:
        updated = await connection.execute(
            sa.update(portal_preferences)
            .where(portal_preferences.c.account_id == account_id)
            .values(default_payment_method_id=method_id)
        )
        if updated.rowcount == 0:
            await connection.execute(
                sa.insert(portal_preferences).values(
                    account_id=account_id, default_payment_method_id=method_id
                )
            )
