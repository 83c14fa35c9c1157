"""Scratch databases for tests: a SQLite file under the test's tmp_path, or a fresh PostgreSQL
database created beside the one at ``postgres_url`` and dropped afterwards.

``database_url`` is the one fixture that hands a test a migrated scratch database; it is
parametrized over SQLite and PostgreSQL (the latter marked ``postgres``). A module that wants
other kinds parametrizes it indirectly, e.g.
``@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from payportal.persistence import migrate
from tests import artifacts

SQLITE = "sqlite"
POSTGRES = "postgres"


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://"))
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


async def create_postgres_database(postgres_url: str) -> tuple[str, str]:
    """A new empty database beside the test one; returns (its SQLAlchemy URL, its name)."""
    name = f"pp_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    parts = urlsplit(postgres_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", "")), name


async def dump_postgres_database(postgres_url: str, name: str, label: str) -> None:
    """Every row of the database, as text, for the final secrets scan (``tests.artifacts``)."""
    connection = await asyncpg.connect(_asyncpg_dsn(postgres_url, name))
    try:
        tables = [r["table_name"] for r in await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        rows = {t: [dict(r) for r in await connection.fetch(f'SELECT * FROM "{t}"')]
                for t in tables}  # fmt: skip
    finally:
        await connection.close()
    artifacts.dump_rows(f"{label}-{name}", rows)


async def drop_postgres_database(postgres_url: str, name: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@asynccontextmanager
async def scratch_database(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, *, sqlite_file: str = "payportal.db"
) -> AsyncIterator[str]:
    """The URL of an empty database of ``kind`` (``"sqlite"`` or ``"postgres"``).

    SQLite: ``tmp_path/sqlite_file``, not created yet. PostgreSQL: a new database beside the
    one of the ``postgres_url`` fixture (skipped when unreachable), dropped on exit.
    """
    if kind == SQLITE:
        artifacts.register_database(tmp_path / sqlite_file)
        yield f"sqlite+aiosqlite:///{tmp_path}/{sqlite_file}"
        return
    if kind != POSTGRES:
        raise ValueError(f"unknown database kind {kind!r}")
    postgres_url: str = request.getfixturevalue("postgres_url")
    url, name = await create_postgres_database(postgres_url)
    try:
        yield url
    finally:
        try:
            await dump_postgres_database(postgres_url, name, request.node.nodeid)
        finally:
            await drop_postgres_database(postgres_url, name)


@pytest.fixture(params=[SQLITE, pytest.param(POSTGRES, marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A scratch database migrated to head, for one test."""
    async with scratch_database(request.param, tmp_path, request) as url:
        await asyncio.to_thread(migrate, url)
        yield url
