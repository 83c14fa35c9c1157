"""Payers, their accounts and sessions; payment methods; account profiles.

Mirrors ``payportal/persistence/tables_payers.py`` (the migration test compares the
migrated database with the metadata). Constraint names follow ``tables.NAMING``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "payers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payers")),
        sa.UniqueConstraint("email", name=op.f("uq_payers_email")),
    )
    op.create_table(
        "payer_accounts",
        sa.Column("payer_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("payer_id", "account_id", name=op.f("pk_payer_accounts")),
    )
    op.create_index(op.f("ix_payer_accounts_account_id"), "payer_accounts", ["account_id"])
    op.create_table(
        "payer_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("payer_id", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _timestamp("created_at"),
        _timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_payer_sessions")),
    )
    op.create_index(op.f("ix_payer_sessions_payer_id"), "payer_sessions", ["payer_id"])
    op.create_table(
        "payment_methods",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("token", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("brand", sa.String(length=32), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=True),
        sa.Column("exp_month", sa.Integer(), nullable=True),
        sa.Column("exp_year", sa.Integer(), nullable=True),
        sa.Column("wallet", sa.String(length=32), nullable=True),
        _timestamp("created_at"),
        _timestamp("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_methods")),
    )
    op.create_index(
        op.f("ix_payment_methods_account_id_id"), "payment_methods", ["account_id", "id"]
    )
    op.create_table(
        "account_profiles",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("external_ref", sa.String(length=200), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_profiles")),
    )


def downgrade() -> None:
    for table in (
        "account_profiles", "payment_methods", "payer_sessions", "payer_accounts", "payers",
    ):  # fmt: skip
        op.drop_table(table)
