"""The retry and inquiry janitor's own table: when each unresolved attempt is next asked about.

The model: an attempt whose outcome is unknown (a timeout, a dropped connection) or that
has sat in ``processing`` far longer than any charge takes is resolved by status
inquiry, never by a new charge (docs/design.md 6). The schedule (1 min, 5 min, 1 h, then
daily: ``engine.retry_policy.inquiry_delay_ms``) must survive a restart, so it lives
here, not in a janitor's memory. Rules:

- One row per attempt; ``inquiries_made`` only grows, and a janitor claims an inquiry by
  moving it forward with a compare-and-set, so two janitors never ask twice in one slot.
- The row is deleted once the attempt is resolved, so an attempt that becomes unknown
  again (after a re-send) starts a fresh schedule.
- The table shares ``tables.metadata`` (and its naming convention) so Alembic sees one
  schema; migration ``0004`` creates it.
"""

from __future__ import annotations

import sqlalchemy as sa

from .tables import metadata

__all__ = ["attempt_inquiries"]

attempt_inquiries = sa.Table(
    "attempt_inquiries",
    metadata,
    sa.Column("attempt_id", sa.String(64), primary_key=True),
    sa.Column("payment_id", sa.String(64), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("inquiries_made", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_inquiry_at_ms", sa.BigInteger, nullable=False),
    sa.Column("last_inquiry_at_ms", sa.BigInteger, nullable=True),
    # The janitor scans for due inquiries.
    sa.Index(None, "next_inquiry_at_ms"),
)
