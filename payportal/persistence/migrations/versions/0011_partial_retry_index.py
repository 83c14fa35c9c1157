"""The payments' retry-time index holds only payments waiting for a retry.

Every projected payment row used to add an entry to ``ix_payments_next_retry_at_ms``,
though the retry timer only ever asks for rows with a retry time. Partial on both
databases (the timer's ``next_retry_at_ms <= now`` implies the predicate, so both
planners use it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ix_payments_next_retry_at_ms"
_WAITING = sa.text("next_retry_at_ms IS NOT NULL")


def upgrade() -> None:
    op.drop_index(_NAME, table_name="payments")
    op.create_index(
        _NAME, "payments", ["next_retry_at_ms"], postgresql_where=_WAITING, sqlite_where=_WAITING
    )


def downgrade() -> None:
    op.drop_index(_NAME, table_name="payments")
    op.create_index(_NAME, "payments", ["next_retry_at_ms"])
