"""The data keys that seal sensitive fields (``payportal.persistence.sealing``), each
wrapped by a key encryption key that lives outside the database. Migration ``0014``
creates the table."""

from __future__ import annotations

import sqlalchemy as sa

from .tables import metadata

__all__ = ["data_keys"]

data_keys = sa.Table(
    "data_keys",
    metadata,
    sa.Column("purpose", sa.String(16), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    # Which key encryption key (PAYPORTAL_DATA_KEYS version) wrapped this one.
    sa.Column("kek_version", sa.Integer, nullable=False),
    # AES-GCM of the key under the KEK; emptied when the key is retired (destroyed).
    sa.Column("wrapped", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
)
