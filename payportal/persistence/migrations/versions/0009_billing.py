"""Tables for plans, subscriptions and billing periods (issue 6).

Mirrors ``payportal/persistence/tables_billing.py`` (the migration test compares the
migrated database with the metadata). Constraint names follow ``tables.NAMING``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Registers the tables on the shared metadata wherever migrations have been loaded.
from payportal.persistence import tables_billing as _tables_billing  # noqa: F401

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created_at() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("interval", sa.String(length=8), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("payment_method_id", sa.String(length=64), nullable=True),
        sa.Column("autopay", sa.Boolean(), nullable=False),
        sa.Column("anchor_day", sa.Integer(), nullable=False),
        sa.Column("anchor_month", sa.Integer(), nullable=False),
        sa.Column("started_on", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "cancel_at_period_end", sa.Boolean(), server_default=sa.false(), nullable=False
        ),
        sa.Column("ended_on", sa.Date(), nullable=True),
        sa.Column("current_period_start", sa.Date(), nullable=True),
        sa.Column("current_period_end", sa.Date(), nullable=True),
        sa.Column("next_period_start", sa.Date(), nullable=False),
        sa.Column("credit_minor", sa.BigInteger(), server_default="0", nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_index(op.f("ix_subscriptions_account_id"), "subscriptions", ["account_id"])
    op.create_index(
        op.f("ix_subscriptions_status_next_period_start"),
        "subscriptions", ["status", "next_period_start"],
    )  # fmt: skip
    op.create_table(
        "billing_invoices",
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("service_start", sa.Date(), nullable=True),
        sa.Column("service_end", sa.Date(), nullable=True),
        sa.Column("number", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("payment_method_id", sa.String(length=64), nullable=True),
        sa.Column("charge_minor", sa.BigInteger(), nullable=True),
        sa.Column("payment_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("claimed_at_ms", sa.BigInteger(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("invoice_id", name=op.f("pk_billing_invoices")),
        sa.UniqueConstraint(
            "subscription_id", "period_start",
            name=op.f("uq_billing_invoices_subscription_id_period_start"),
        ),
    )  # fmt: skip
    op.create_index(
        op.f("ix_billing_invoices_state_lease_until_ms"),
        "billing_invoices", ["state", "lease_until_ms"],
    )  # fmt: skip
    op.create_index(op.f("ix_billing_invoices_account_id"), "billing_invoices", ["account_id"])
    op.create_index(
        op.f("ix_billing_invoices_subscription_id_outcome"),
        "billing_invoices", ["subscription_id", "outcome"],
    )  # fmt: skip
    op.create_index(op.f("ix_billing_invoices_outcome"), "billing_invoices", ["outcome"])
    op.create_table(
        "card_expiry_reminders",
        sa.Column("payment_method_id", sa.String(length=64), nullable=False),
        sa.Column("exp_year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("exp_month", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint(
            "payment_method_id", "exp_year", "exp_month", name=op.f("pk_card_expiry_reminders")
        ),
    )


def downgrade() -> None:
    for table in ("card_expiry_reminders", "billing_invoices", "subscriptions", "plans"):
        op.drop_table(table)
