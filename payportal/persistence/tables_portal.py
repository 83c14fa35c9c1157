"""The browser portal's tables: signed-in browser sessions, one-time links, preferences.

The model: a payer signs in in the browser and gets a session cookie; the cookie holds a
random token and only its SHA-256 hash is stored here, so a copy of the database signs
nobody in. Password-reset and invitation links work the same way: the link carries the
token, the row its hash, an expiry and, once used, ``used_at`` (a link works once).
Rules:

- A session ends at ``expires_at`` (absolute), after ``IDLE`` without use
  (``last_seen_at``), or when ``revoked_at`` is set (sign out, sign out everywhere, a
  password change or reset).
- ``user_agent`` is kept short and only to let a payer recognise their devices on the
  security page; no address is stored.
- ``portal_preferences`` holds what a payer chooses for an account that the payment
  tables do not: the default payment method.
"""

from __future__ import annotations

import sqlalchemy as sa

from .tables import created_at_column, metadata

__all__ = ["portal_links", "portal_preferences", "portal_sessions"]

portal_sessions = sa.Table(
    "portal_sessions",
    metadata,
    # Hex SHA-256 of the cookie's token.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("payer_id", sa.String(32), nullable=False),
    created_at_column(),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("user_agent", sa.String(200), nullable=False, server_default=""),
    sa.Index(None, "payer_id"),
)

portal_links = sa.Table(
    "portal_links",
    metadata,
    # Hex SHA-256 of the link's token.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    # "reset" (forgot password) or "invite" (a payer added without a password).
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("payer_id", sa.String(32), nullable=False),
    created_at_column(),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index(None, "payer_id"),
)

portal_preferences = sa.Table(
    "portal_preferences",
    metadata,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("default_payment_method_id", sa.String(64), nullable=True),
    created_at_column(),
)
