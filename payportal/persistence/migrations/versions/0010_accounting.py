"""Tables for revenue recognition and reconciliation (issue 6).

Mirrors ``payportal/persistence/tables_accounting.py`` (the migration test compares the
migrated database with the metadata). Only new tables, so SQLite needs no batch mode.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Registers the tables on the shared metadata wherever migrations have been loaded.
from payportal.persistence import tables_accounting as _tables_accounting  # noqa: F401

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = (
    "reconciliation_exceptions", "settlement_matches", "reconciliation_runs",
    "revenue_recognition_runs",
)  # fmt: skip


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def _id() -> sa.Column[object]:
    return sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
        nullable=False,
    )  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "revenue_recognition_runs",
        sa.Column("through_date", sa.Date(), autoincrement=False, nullable=False),
        sa.Column("accounts_total", sa.Integer(), nullable=False),
        sa.Column("accounts_posted", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        _timestamp("completed_at", nullable=True),
        sa.PrimaryKeyConstraint("through_date", name=op.f("pk_revenue_recognition_runs")),
    )
    op.create_table(
        "reconciliation_runs",
        _id(),
        sa.Column("processor", sa.String(length=32), nullable=False),
        sa.Column("payouts", sa.Integer(), nullable=False),
        sa.Column("charges", sa.Integer(), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("posted", sa.Integer(), nullable=False),
        sa.Column("exceptions_new", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
    )
    op.create_table(
        "settlement_matches",
        sa.Column("processor", sa.String(length=32), nullable=False),
        sa.Column("charge_id", sa.String(length=128), nullable=False),
        sa.Column("payout_id", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("fee_minor", sa.BigInteger(), nullable=False),
        sa.Column("net_minor", sa.BigInteger(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("processor", "charge_id", name=op.f("pk_settlement_matches")),
    )
    op.create_index(
        op.f("ix_settlement_matches_payout_id"), "settlement_matches", ["payout_id"]
    )
    op.create_table(
        "reconciliation_exceptions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("processor", sa.String(length=32), nullable=False),
        sa.Column("payout_id", sa.String(length=64), nullable=True),
        sa.Column("charge_id", sa.String(length=128), nullable=True),
        sa.Column("payment_id", sa.String(length=64), nullable=True),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("expected_minor", sa.BigInteger(), nullable=True),
        sa.Column("reported_minor", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("resolution", sa.String(length=32), nullable=True),
        sa.Column("note", sa.String(length=1000), nullable=True),
        _timestamp("created_at"),
        _timestamp("resolved_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_exceptions")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_reconciliation_exceptions_dedupe_key")),
    )
    op.create_index(
        op.f("ix_reconciliation_exceptions_status_id"), "reconciliation_exceptions",
        ["status", "id"],
    )  # fmt: skip


def downgrade() -> None:
    for table in _TABLES:
        op.drop_table(table)
