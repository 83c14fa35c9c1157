"""The janitor's inquiry schedule: one row per unresolved attempt.

Mirrors ``payportal/persistence/tables_janitor.py`` (the migration test compares the
migrated database with the metadata). Constraint names follow ``tables.NAMING``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Registers the table on the shared metadata wherever migrations have been loaded, so the
# schema comparison sees it even in a process that imported nothing else of the janitor.
# Meant to move to ``persistence/__init__`` beside ``tables_payers`` (the DDL below stays
# explicit either way).
from payportal.persistence import tables_janitor as _tables_janitor  # noqa: F401

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "attempt_inquiries",
        sa.Column("attempt_id", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("inquiries_made", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_inquiry_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_inquiry_at_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("attempt_id", name=op.f("pk_attempt_inquiries")),
    )
    op.create_index(
        op.f("ix_attempt_inquiries_next_inquiry_at_ms"),
        "attempt_inquiries",
        ["next_inquiry_at_ms"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_attempt_inquiries_next_inquiry_at_ms"), table_name="attempt_inquiries")
    op.drop_table("attempt_inquiries")
