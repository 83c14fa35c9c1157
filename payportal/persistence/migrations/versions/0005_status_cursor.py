"""The status publisher's per-shard cursor: ``status_cursors``.

Mirrors ``payportal/persistence/tables_status.py`` (the migration test compares the
migrated database with the metadata). Only a new table, so SQLite needs no batch
operation (``env.py`` turns batch mode on there for any later ALTER).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Registers the table on the shared metadata wherever migrations have been loaded.
from payportal.persistence import tables_status as _tables_status  # noqa: F401

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "status_cursors",
        sa.Column("shard_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("journal_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("shard_id", name=op.f("pk_status_cursors")),
    )


def downgrade() -> None:
    op.drop_table("status_cursors")
