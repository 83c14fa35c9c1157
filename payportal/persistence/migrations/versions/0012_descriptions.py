"""Invoices and payments keep the description the merchant gave them.

The API accepted ``description`` on invoices and payments and dropped it. It now rides on
the journal's events (``InvoiceIssued``, ``PaymentCreated``; older events have none) and
is projected into these nullable columns; rows projected before have none.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("invoices", "payments")


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(table, sa.Column("description", sa.String(500), nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        # batch: SQLite drops a column by copying the table.
        with op.batch_alter_table(table) as batch:
            batch.drop_column("description")
