"""A scratch PostgreSQL database per fault test, beside the ``postgres_url`` one: serve
runs on it, the audit reads it, the final scan gets its rows, and it is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.databases import (
    create_postgres_database,
    drop_postgres_database,
    dump_postgres_database,
)


@pytest.fixture
def scratch_postgres(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    url, name = asyncio.run(create_postgres_database(postgres_url))
    try:
        yield url
    finally:
        try:
            asyncio.run(dump_postgres_database(postgres_url, name, request.node.nodeid))
        finally:
            asyncio.run(drop_postgres_database(postgres_url, name))
