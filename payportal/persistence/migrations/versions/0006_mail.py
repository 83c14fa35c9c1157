"""The email outbox's sending columns (due time, lease, last error, given-up time) and its
one scan index.

Mirrors the ``outbox`` table in ``payportal/persistence/tables.py`` (the migration test
compares the migrated database with the metadata). On SQLite ``env.py`` runs this in
batch mode (copy and rename), the only way SQLite adds columns with their defaults and
constraints in one step.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = "sent_at IS NULL AND failed_at IS NULL"


def upgrade() -> None:
    # Replaced by the partial index below, which is all the sender scans.
    op.drop_index("ix_outbox_sent_at_id", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("due_at_ms", sa.BigInteger(), server_default="0",
                                   nullable=False))  # fmt: skip
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_until_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_error", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_outbox_pending_due_at_ms", "outbox", ["due_at_ms"],
        postgresql_where=sa.text(_PENDING), sqlite_where=sa.text(_PENDING),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_outbox_pending_due_at_ms", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        for column in ("failed_at", "last_error", "lease_until_ms", "lease_owner", "due_at_ms"):
            batch.drop_column(column)
    op.create_index("ix_outbox_sent_at_id", "outbox", ["sent_at", "id"])
