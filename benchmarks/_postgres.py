"""Scratch PostgreSQL databases for benchmarks and load tests: created beside a server's
existing database, dropped afterwards, so a run never touches data it did not make.

Kept here rather than borrowed from the test suite: benchmarks run from a checkout
without importing ``tests`` (which needs pytest and the test fixtures).
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = [
    "POSTGRES_URL_DEFAULT",
    "asyncpg_dsn",
    "create_postgres_database",
    "drop_postgres_database",
    "server_url",
]

POSTGRES_URL_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    """The server scratch databases are made on (its URL names an existing database)."""
    return os.environ.get("PAYPORTAL_BENCH_POSTGRES_URL", POSTGRES_URL_DEFAULT)


def asyncpg_dsn(url: str, database: str | None = None) -> str:
    """A SQLAlchemy ``postgresql+asyncpg://`` URL as asyncpg takes it, optionally naming
    another database on the same server."""
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://"))
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


async def create_postgres_database(postgres_url: str, prefix: str = "pp") -> tuple[str, str]:
    """A new empty database beside the one ``postgres_url`` names: (its SQLAlchemy URL,
    its name)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    parts = urlsplit(postgres_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", "")), name


async def drop_postgres_database(postgres_url: str, name: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
