"""The database schema: SQLAlchemy Core tables, the one description the migrations follow.

The model: ``journal`` is the source of truth (append-only events, msgpack bytes, one row
per event); ``account_checkpoints`` and ``account_payment_checkpoints`` let recovery skip
most of the journal; everything
else is a read model rebuilt from account state, or a guard table whose unique
constraint makes an effect happen once (docs/design.md decision 4). Rules:

- Money is ``BigInteger`` minor units; never a float column.
- No card data: payment methods appear only as processor tokens' ids.
- Every constraint and index is named (``NAMING``), so Alembic's batch mode on SQLite
  can recreate tables and autogenerate compares like with like.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

__all__ = [
    "OUTBOX_CHANNEL",
    "account_checkpoints",
    "account_payment_checkpoints",
    "accounts",
    "allocations",
    "api_keys",
    "attempts",
    "idempotency_records",
    "invoices",
    "journal",
    "ledger_entries",
    "metadata",
    "outbox",
    "payments",
    "processor_callbacks",
    "projection_cursors",
]

# The processor whose charge ids the journal guards until a second processor exists; the
# attempts read model's ``processor`` column defaults to the same name.
PROCESSOR_DEFAULT: Final = "sandbox"

NAMING: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING)

# SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY (the rowid).
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Money and times in milliseconds: 64-bit integers everywhere.
_Minor = sa.BigInteger
_Ms = sa.BigInteger


def _sealed_response() -> sa.types.TypeEngine[bytes]:
    from .sealing import SealedBytes  # sealing's own table module imports this one

    return SealedBytes("response", "idempotency_records.response_body")


def created_at_column() -> sa.Column[object]:
    """When the row was written, by the database's clock; every table's same column."""
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


# -- source of truth ------------------------------------------------------------------------

journal = sa.Table(
    "journal",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("shard_id", sa.Integer, nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("at_ms", _Ms, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    created_at_column(),
    # Arbiter columns, copied out of the payload only for the events the partial unique
    # indexes below guard (NULL otherwise): the journal alone decides exactly-once, in the
    # group commit itself, while the read models are projected later.
    sa.Column("payment_id", sa.String(64), nullable=True),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("processor", sa.String(32), nullable=True),
    sa.Column("charge_id", sa.String(128), nullable=True),
    # The database refuses a second application of the same event (at-least-once delivery,
    # or a zombie shard writing after its replacement): the whole commit fails.
    sa.UniqueConstraint("account_id", "version"),
    sa.Index(None, "shard_id", "id"),
    # One payment per (account, idempotency key), ever.
    sa.Index(
        "uq_journal_payment_created_key", "account_id", "idempotency_key", unique=True,
        postgresql_where=sa.text("event_type = 'payment_created'"),
        sqlite_where=sa.text("event_type = 'payment_created'"),
    ),
    # One processor charge is captured by one attempt, ever.
    sa.Index(
        "uq_journal_attempt_succeeded_charge", "processor", "charge_id", unique=True,
        postgresql_where=sa.text("event_type = 'attempt_succeeded'"),
        sqlite_where=sa.text("event_type = 'attempt_succeeded'"),
    ),
    # A payment succeeds (and its allocations are applied) once.
    sa.Index(
        "uq_journal_attempt_succeeded_payment", "payment_id", unique=True,
        postgresql_where=sa.text("event_type = 'attempt_succeeded'"),
        sqlite_where=sa.text("event_type = 'attempt_succeeded'"),
    ),
)  # fmt: skip

# How far each shard's read models are projected: every journal row of the shard with an
# id at or below ``journal_id`` is reflected in them. Catch-up after a crash starts here.
projection_cursors = sa.Table(
    "projection_cursors",
    metadata,
    sa.Column("shard_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("journal_id", sa.BigInteger, nullable=False),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)

# An account's checkpoint: its state as of ``version`` without the payments, which have
# rows of their own below (a checkpoint written before migration 0013 still carries them
# inline, and loads as it is). Both tables only move forward, in the same statement.
account_checkpoints = sa.Table(
    "account_checkpoints",
    metadata,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)

# One payment of a checkpointed account as of ``version`` (the account version of the
# checkpoint that last wrote it; never newer than the account's). A checkpoint rewrites
# only the payments changed since the previous one, so a hot account's checkpoint costs
# what changed, not everything it ever had.
account_payment_checkpoints = sa.Table(
    "account_payment_checkpoints",
    metadata,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("payment_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
)

# -- read models (projected from account state shortly after the journal commit) ------------
#
# Each row carries ``version``: the account version it was projected from. Upserts only
# move a row forward, so a late or repeated projection never shows an older state, and
# ``accounts.version`` tells a reader how far the account's read models have come.

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("outstanding_minor", _Minor, nullable=False),
    sa.Column("credit_minor", _Minor, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)

invoices = sa.Table(
    "invoices",
    metadata,
    sa.Column("invoice_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("number", sa.String(64), nullable=False),
    sa.Column("amount_due_minor", _Minor, nullable=False),
    sa.Column("amount_paid_minor", _Minor, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("due_date", sa.Date, nullable=False),
    sa.Column("service_start", sa.Date, nullable=True),
    sa.Column("service_end", sa.Date, nullable=True),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    # The merchant's words for what it is (migration 0012); NULL when none was given.
    sa.Column("description", sa.String(500), nullable=True),
    sa.Index(None, "account_id", "due_date"),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("payment_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("amount_minor", _Minor, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("payment_method_id", sa.String(64), nullable=False),
    sa.Column("amount_applied_minor", _Minor, nullable=False),
    sa.Column("amount_unapplied_minor", _Minor, nullable=False),
    sa.Column("amount_refunded_minor", _Minor, nullable=False),
    sa.Column("created_at_ms", _Ms, nullable=False),
    sa.Column("finished_at_ms", _Ms, nullable=True),
    sa.Column("next_retry_at_ms", _Ms, nullable=True),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("description", sa.String(500), nullable=True),  # migration 0012
    sa.UniqueConstraint("account_id", "idempotency_key"),
    sa.Index(None, "account_id", "created_at_ms"),
    # The retry timer scans for due payments. Partial: only the few payments waiting for a
    # retry are in it, so projecting the rest adds no entry to it (migration 0011).
    sa.Index(
        None, "next_retry_at_ms",
        postgresql_where=sa.text("next_retry_at_ms IS NOT NULL"),
        sqlite_where=sa.text("next_retry_at_ms IS NOT NULL"),
    ),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("attempt_id", sa.String(64), primary_key=True),
    sa.Column("payment_id", sa.String(64), nullable=False),
    sa.Column("processor", sa.String(32), nullable=False, server_default="sandbox"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("decline_code", sa.String(64), nullable=True),
    sa.Column("decline_class", sa.String(32), nullable=True),
    sa.Column("charge_id", sa.String(128), nullable=True),
    sa.Column("created_at_ms", _Ms, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    # One processor charge is captured by one attempt, ever.
    sa.UniqueConstraint("processor", "charge_id"),
    sa.Index(None, "payment_id"),
)

allocations = sa.Table(
    "allocations",
    metadata,
    sa.Column("payment_id", sa.String(64), primary_key=True),
    sa.Column("invoice_id", sa.String(64), primary_key=True),
    sa.Column("amount_minor", _Minor, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index(None, "invoice_id"),
)

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    # The journal version of the event that posted the entry.
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("memo", sa.String(200), nullable=False),
    sa.Column("ledger_account", sa.String(32), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("amount_minor", _Minor, nullable=False),
    # The line's position in its entry: with (account_id, version) it names the line, so
    # projecting an entry twice writes it once.
    sa.Column("line", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("account_id", "version", "line"),
)

# -- guards and side effects (used by the HTTP layer, the gateway and the outbox worker) ----

idempotency_records = sa.Table(
    "idempotency_records",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("principal", sa.String(64), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    # NULL while the first request is in flight (a second one is answered 409).
    sa.Column("status_code", sa.Integer, nullable=True),
    # Sealed (sealing.SealedBytes): a response repeats what the request created.
    sa.Column("response_body", _sealed_response(), nullable=True),
    created_at_column(),
    sa.UniqueConstraint("principal", "account_id", "key"),
    # Records expire after 24 h at the earliest; the sweeper scans by age.
    sa.Index(None, "created_at"),
)

processor_callbacks = sa.Table(
    "processor_callbacks",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("processor", sa.String(32), nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column(
        "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.UniqueConstraint("processor", "event_id"),
)

# Emails on their way out (payportal/mail). ``kind`` says what ``payload`` holds: a
# rendered message (``email``, written by ``enqueue_email`` in its caller's transaction)
# or a payment event's facts (``payment_succeeded`` / ``payment_declined``, written by the
# journal's group commit itself), rendered when sent. A row is pending until ``sent_at``
# or ``failed_at`` (given up) is set; ``due_at_ms`` and the lease columns let any number
# of senders share the queue without sending a row twice at once.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    # Stable per effect, so a receiver (and a second write of the same effect) dedupes.
    sa.Column("dedupe_key", sa.String(255), nullable=False, unique=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    created_at_column(),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # Not before this time (unix ms): the first send, then each retry's backoff.
    sa.Column("due_at_ms", _Ms, nullable=False, server_default="0"),
    # A sender holds the row until ``lease_until_ms``; after that another may take it.
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until_ms", _Ms, nullable=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
    # The sender's scan: pending rows by due time. The only index beside the unique key:
    # the journal's group commit inserts payment emails, and every index costs it.
    sa.Index(
        "ix_outbox_pending_due_at_ms", "due_at_ms",
        postgresql_where=sa.text("sent_at IS NULL AND failed_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL AND failed_at IS NULL"),
    ),
)  # fmt: skip

# PostgreSQL: a transaction that writes pending outbox rows notifies this channel, so an
# idle sender (LISTEN) wakes at its commit instead of polling. SQLite has no equivalent.
OUTBOX_CHANNEL: Final = "payportal_outbox"

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # Hex SHA-256 of the key; the key itself is shown once and never stored.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    created_at_column(),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)
