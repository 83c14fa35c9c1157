"""The status publisher's own table: how far each shard's journal has been published.

The model: live status (``GET /v1/…/events``) is fed by a publisher that reads the
durable journal and appends payment status changes to per-account streams
(``payportal.live``). Like the read-model projector it keeps a per-shard cursor, but
its own one, because the two advance independently. Rules:

- ``journal_id`` only moves forward, and only after every row up to it was appended, so
  a crash between an append and the cursor save re-publishes — which the streams refuse
  as a duplicate, since the journal id is the stream entry id — and never skips.
- The table shares ``tables.metadata`` (and its naming convention) so Alembic sees one
  schema; migration ``0005`` creates it.
"""

from __future__ import annotations

import sqlalchemy as sa

from .tables import metadata

__all__ = ["status_cursors"]

status_cursors = sa.Table(
    "status_cursors",
    metadata,
    sa.Column("shard_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("journal_id", sa.BigInteger, nullable=False),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)
