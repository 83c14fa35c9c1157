"""The front door's own tables: payers and their logins, payment methods, account profiles.

The model: these rows are written by the HTTP layer itself, synchronously, before it
answers (they are not read models of the journal, so they never lag). They share
``tables.metadata`` so Alembic sees one schema. Rules:

- No secrets in clear: passwords are Argon2id hashes, session tokens SHA-256 hashes;
  tokens, email addresses and names are sealed (``sealing``: AES-GCM under a data key),
  and looked up by a keyed blind index, never by value.
- No card data: a payment method holds the processor's token and what the card network
  lets anyone print (brand, last 4, expiry) — never a number or a CVC (docs/design.md 9).
- Deleting a payment method sets ``deleted_at``; the row stays for payment history.
"""

from __future__ import annotations

import sqlalchemy as sa

from .sealing import Sealed
from .tables import created_at_column, metadata

__all__ = [
    "account_profiles", "account_search_terms", "payer_accounts", "payer_sessions", "payers",
    "payment_methods",
]  # fmt: skip


payers = sa.Table(
    "payers",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    # Lower-cased before sealing, so one person cannot hold two logins by changing case.
    sa.Column("email", Sealed("contact", "payers.email"), nullable=False),
    # HMAC of the lower-cased address (sealing.blind_index "payers.email"): sign-in's lookup.
    sa.Column("email_index", sa.String(64), nullable=False, unique=True),
    # NULL until the payer sets a password through an invitation.
    sa.Column("password_hash", sa.String(255), nullable=True),
    created_at_column(),
)

payer_accounts = sa.Table(
    "payer_accounts",
    metadata,
    sa.Column("payer_id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Index(None, "account_id"),
)

payer_sessions = sa.Table(
    "payer_sessions",
    metadata,
    # Hex SHA-256 of the bearer token; the token itself is shown once.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("payer_id", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    created_at_column(),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index(None, "payer_id"),
)

payment_methods = sa.Table(
    "payment_methods",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    # The processor's token: useless without the processor's secret, never a card number.
    sa.Column("token", Sealed("token", "payment_methods.token"), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("brand", sa.String(32), nullable=False),
    sa.Column("last4", sa.String(4), nullable=True),
    sa.Column("exp_month", sa.Integer, nullable=True),
    sa.Column("exp_year", sa.Integer, nullable=True),
    sa.Column("wallet", sa.String(32), nullable=True),
    created_at_column(),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index(None, "account_id", "id"),
)

# What a merchant says about an account beyond its money (the engine keeps only the
# currency): written before the account is opened in its shard.
account_profiles = sa.Table(
    "account_profiles",
    metadata,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("name", Sealed("contact", "account_profiles.name"), nullable=False),
    sa.Column("email", Sealed("contact", "account_profiles.email"), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("external_ref", sa.String(200), nullable=True),
    created_at_column(),
)

# The console's search over sealed names and addresses: one row per word (and whole
# address) of an account's name and email, as a blind index ("account.term"). A search
# finds accounts holding every word asked for; a substring of a word finds nothing.
account_search_terms = sa.Table(
    "account_search_terms",
    metadata,
    sa.Column("term", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Index(None, "account_id"),
)
