"""Journal-only group commit: exactly-once arbiters on the journal, read models projected.

The group commit now writes journal rows (and coalesced checkpoints) only, so the unique
guards that used to sit on the read models move onto the journal as partial unique
indexes over arbiter columns copied out of the payload. The read models are projected
afterwards: each row carries the account version it came from, ledger lines are named
by (account, version, line), and ``projection_cursors`` records how far each shard's
projection has come. Existing rows are brought along: arbiter columns are backfilled
from the payloads, ledger lines numbered, and every shard's cursor set to its last
journal row (the read models were written in the same commit until now).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The processor named on journal rows written before the column existed.
_PROCESSOR_DEFAULT = "sandbox"
_VERSIONED = ("invoices", "payments", "attempts", "allocations")
_ARBITERS = (
    ("uq_journal_payment_created_key", ["account_id", "idempotency_key"], "payment_created"),
    ("uq_journal_attempt_succeeded_charge", ["processor", "charge_id"], "attempt_succeeded"),
    ("uq_journal_attempt_succeeded_payment", ["payment_id"], "attempt_succeeded"),
)


def _backfill_arbiters() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT id, event_type, payload FROM journal "
            "WHERE event_type IN ('payment_created', 'attempt_succeeded')"
        )
    ).fetchall()
    update = sa.text(
        "UPDATE journal SET payment_id = :payment_id, idempotency_key = :idempotency_key, "
        "processor = :processor, charge_id = :charge_id WHERE id = :id"
    )
    values: list[dict[str, Any]] = []
    for row in rows:
        event = msgspec.msgpack.decode(row.payload)
        succeeded = row.event_type == "attempt_succeeded"
        values.append({
            "id": row.id,
            "payment_id": event.get("payment_id"),
            "idempotency_key": None if succeeded else event.get("idempotency_key"),
            "processor": _PROCESSOR_DEFAULT if succeeded else None,
            "charge_id": event.get("charge_id") if succeeded else None,
        })  # fmt: skip
    if values:
        connection.execute(update, values)


def upgrade() -> None:
    with op.batch_alter_table("journal") as batch:
        batch.add_column(sa.Column("payment_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("processor", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("charge_id", sa.String(length=128), nullable=True))
    _backfill_arbiters()
    for name, columns, event_type in _ARBITERS:
        where = sa.text(f"event_type = '{event_type}'")
        op.create_index(
            name, "journal", columns, unique=True, postgresql_where=where, sqlite_where=where
        )

    op.create_table(
        "projection_cursors",
        sa.Column("shard_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("journal_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("shard_id", name=op.f("pk_projection_cursors")),
    )
    op.execute(
        "INSERT INTO projection_cursors (shard_id, journal_id) "
        "SELECT shard_id, max(id) FROM journal GROUP BY shard_id"
    )

    for table in _VERSIONED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("version", sa.BigInteger(), server_default="0", nullable=False)
            )

    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(sa.Column("line", sa.Integer(), server_default="0", nullable=False))
    # Number the lines of each entry in the order they were written.
    op.execute(
        "UPDATE ledger_entries SET line = numbered.line FROM ("
        " SELECT id, row_number() OVER (PARTITION BY account_id, version ORDER BY id) - 1"
        " AS line FROM ledger_entries) AS numbered WHERE ledger_entries.id = numbered.id"
    )
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_index("ix_ledger_entries_account_id_version")
        batch.create_unique_constraint(
            op.f("uq_ledger_entries_account_id_version_line"), ["account_id", "version", "line"]
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_constraint(op.f("uq_ledger_entries_account_id_version_line"), type_="unique")
        batch.create_index("ix_ledger_entries_account_id_version", ["account_id", "version"])
        batch.drop_column("line")
    for table in reversed(_VERSIONED):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("version")
    op.drop_table("projection_cursors")
    for name, _, _ in reversed(_ARBITERS):
        op.drop_index(name, table_name="journal")
    with op.batch_alter_table("journal") as batch:
        batch.drop_column("charge_id")
        batch.drop_column("processor")
        batch.drop_column("idempotency_key")
        batch.drop_column("payment_id")
