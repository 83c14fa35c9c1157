"""Checkpoints split: the account's core, and one row per payment in a table of its own.

A checkpoint was the whole account state, every payment included, rewritten in full each
time: a hot account's checkpoints grew with its history. From here a checkpoint writes
the state without its payments to ``account_checkpoints`` and only the payments changed
since the previous one to ``account_payment_checkpoints``. Nothing is converted: a
checkpoint written before this still carries its payments inline and loads as it is;
the account's next checkpoint writes all of its payments as rows.

Downgrade: code from before this revision reads a checkpoint as the whole state, so the
split ones are deleted rather than left to load without their payments; those accounts
are then rebuilt from the journal alone (the journal is the truth; it takes longer).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "account_payment_checkpoints",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint(
            "account_id", "payment_id", name=op.f("pk_account_payment_checkpoints")
        ),
    )


def downgrade() -> None:
    op.execute(
        "DELETE FROM account_checkpoints WHERE account_id IN "
        "(SELECT DISTINCT account_id FROM account_payment_checkpoints)"
    )
    op.drop_table("account_payment_checkpoints")
