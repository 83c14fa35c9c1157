"""Insert-or-update and insert-unless-present, written once for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["insert_ignoring_conflicts", "upsert"]


def _insert(connection: AsyncConnection, table: sa.Table) -> Any:
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def upsert(
    connection: AsyncConnection,
    table: sa.Table,
    values: Mapping[str, Any],
    *,
    keys: Sequence[str],
    update: Mapping[str, Any],
) -> None:
    statement = _insert(connection, table).values(**values)
    await connection.execute(statement.on_conflict_do_update(index_elements=keys, set_=update))


async def insert_ignoring_conflicts(
    connection: AsyncConnection,
    table: sa.Table,
    values: Mapping[str, Any],
    *,
    keys: Sequence[str] | None = None,
) -> bool:
    """Insert one row unless a unique key (``keys``, or any) already holds it; True when
    inserted. Atomic: two concurrent callers insert one row and neither fails."""
    statement = _insert(connection, table).values(**values).on_conflict_do_nothing(
        index_elements=keys
    )
    result = await connection.execute(statement)
    return bool(result.rowcount)


async def insert_all_ignoring_conflicts(
    connection: AsyncConnection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str] | None = None,
) -> None:
    """Insert many rows in one statement, skipping any a unique key (``keys``) already
    holds."""
    if not rows:
        return
    statement = _insert(connection, table).values(list(rows)).on_conflict_do_nothing(
        index_elements=keys
    )
    await connection.execute(statement)
