"""Accounting's own tables: recognition runs, reconciliation runs, matched settlements and
the reconciliation exceptions queue.

The model: the ledger itself lives in the journal (the engine posts recognition and
settlement like any other event); these tables only record what the accounting jobs did
and what they could not match. Rules:

- ``revenue_recognition_runs`` has one row per day recognized through; ``completed_at`` is
  set once every account was asked, so the latest completed day is the day the revenue
  report (and its accuracy) is as of.
- ``reconciliation_exceptions.dedupe_key`` (kind, processor, payout, charge) is unique: a
  job that runs again finds the same mismatch and inserts nothing. An exception is
  ``open`` until a merchant resolves it with a resolution and a note.
- ``settlement_matches`` has one row per processor charge paid out and posted; its
  primary key keeps a second run from recording it twice.
- Money is ``BigInteger`` minor units. Shares ``tables.metadata`` (and its naming
  convention); migration ``0010`` creates these tables.
"""

from __future__ import annotations

import sqlalchemy as sa

from .tables import created_at_column, metadata

__all__ = [
    "reconciliation_exceptions",
    "reconciliation_runs",
    "revenue_recognition_runs",
    "settlement_matches",
]

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revenue_recognition_runs = sa.Table(
    "revenue_recognition_runs",
    metadata,
    sa.Column("through_date", sa.Date, primary_key=True, autoincrement=False),
    sa.Column("accounts_total", sa.Integer, nullable=False),
    sa.Column("accounts_posted", sa.Integer, nullable=False),
    created_at_column(),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
)

reconciliation_runs = sa.Table(
    "reconciliation_runs",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("processor", sa.String(32), nullable=False),
    sa.Column("payouts", sa.Integer, nullable=False),
    sa.Column("charges", sa.Integer, nullable=False),
    sa.Column("matched", sa.Integer, nullable=False),
    sa.Column("posted", sa.Integer, nullable=False),
    sa.Column("exceptions_new", sa.Integer, nullable=False),
    created_at_column(),
)

settlement_matches = sa.Table(
    "settlement_matches",
    metadata,
    sa.Column("processor", sa.String(32), primary_key=True),
    sa.Column("charge_id", sa.String(128), primary_key=True),
    sa.Column("payout_id", sa.String(64), nullable=False),
    sa.Column("payment_id", sa.String(64), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("fee_minor", sa.BigInteger, nullable=False),
    sa.Column("net_minor", sa.BigInteger, nullable=False),
    created_at_column(),
    sa.Index(None, "payout_id"),
)

reconciliation_exceptions = sa.Table(
    "reconciliation_exceptions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("dedupe_key", sa.String(255), nullable=False, unique=True),
    # missing_charge | unknown_charge | amount_mismatch | currency_mismatch |
    # duplicate_charge | payout_total_mismatch
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("processor", sa.String(32), nullable=False),
    sa.Column("payout_id", sa.String(64), nullable=True),
    sa.Column("charge_id", sa.String(128), nullable=True),
    sa.Column("payment_id", sa.String(64), nullable=True),
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("currency", sa.String(3), nullable=True),
    # What our records say and what the processor reported, where amounts are at issue.
    sa.Column("expected_minor", sa.BigInteger, nullable=True),
    sa.Column("reported_minor", sa.BigInteger, nullable=True),
    sa.Column("detail", sa.String(500), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | resolved
    sa.Column("resolution", sa.String(32), nullable=True),
    sa.Column("note", sa.String(1000), nullable=True),
    created_at_column(),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index(None, "status", "id"),
)
