"""Tables for the browser portal's sessions, one-time links and preferences (issue 5).

Mirrors ``payportal/persistence/tables_portal.py`` (the migration test compares the
migrated database with the metadata). Only new tables, so SQLite needs no batch mode.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Registers the tables on the shared metadata wherever migrations have been loaded.
from payportal.persistence import tables_portal as _tables_portal  # noqa: F401

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "portal_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("payer_id", sa.String(length=32), nullable=False),
        _timestamp("created_at"),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _timestamp("revoked_at", nullable=True),
        sa.Column("user_agent", sa.String(length=200), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_portal_sessions")),
    )
    op.create_index(op.f("ix_portal_sessions_payer_id"), "portal_sessions", ["payer_id"])
    op.create_table(
        "portal_links",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("payer_id", sa.String(length=32), nullable=False),
        _timestamp("created_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _timestamp("used_at", nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_portal_links")),
    )
    op.create_index(op.f("ix_portal_links_payer_id"), "portal_links", ["payer_id"])
    op.create_table(
        "portal_preferences",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("default_payment_method_id", sa.String(length=64), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_portal_preferences")),
    )


def downgrade() -> None:
    for table in ("portal_preferences", "portal_links", "portal_sessions"):
        op.drop_table(table)
