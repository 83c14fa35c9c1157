"""Alembic environment for payportal: async engines, configured from code, not an .ini file.

``payportal.persistence.migrate(url)`` passes the URL in ``config.attributes["url"]``
(an .ini would mangle ``%`` in passwords). The async drivers (aiosqlite, asyncpg) run
the migrations through ``run_sync``. On SQLite, tables are altered in batch mode
(copy and rename), the only way SQLite can change most of a table, and DDL runs inside
the BEGIN IMMEDIATE transaction the engine opens, so a failed migration leaves nothing.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from payportal.persistence._engine import async_url, create_engine_for
from payportal.persistence.tables import metadata

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: call payportal.persistence.migrate(url)")
    return str(url)


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=metadata, compare_type=True, **kwargs)  # type: ignore[arg-type]


def run_migrations_offline() -> None:
    url = async_url(_url())
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine_for(_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
