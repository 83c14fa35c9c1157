"""The Alembic migrations build exactly the schema ``tables.py`` describes and unwind
cleanly, checked by migrating fresh SQLite and PostgreSQL databases and comparing the
result with the metadata through Alembic's own autogenerate comparison."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from payportal.persistence import alembic_config, create_engine_for, migrate
from payportal.persistence.tables import metadata


async def _inspect(url: str, look: Any) -> Any:
    engine = create_engine_for(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(look)
    finally:
        await engine.dispose()


def _table_names(connection: sa.Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


def _current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _schema_differences(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, metadata)


def _head(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


async def test_migrate_on_an_empty_database_upgrades_to_head(empty_database_url: str) -> None:
    await asyncio.to_thread(migrate, empty_database_url)

    assert await _inspect(empty_database_url, _current_revision) == _head(empty_database_url)
    tables = await _inspect(empty_database_url, _table_names)
    assert tables == set(metadata.tables) | {"alembic_version"}


async def test_migrate_creates_the_sqlite_directory(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/not/yet/here/payportal.db"

    await asyncio.to_thread(migrate, url)

    assert (tmp_path / "not/yet/here/payportal.db").is_file()


async def test_migrate_twice_changes_nothing(migrated_url: str) -> None:
    await asyncio.to_thread(migrate, migrated_url)

    assert await _inspect(migrated_url, _current_revision) == _head(migrated_url)


async def test_downgrade_to_base_then_upgrade_again_is_clean(migrated_url: str) -> None:
    config = alembic_config(migrated_url)

    await asyncio.to_thread(command.downgrade, config, "base")
    assert await _inspect(migrated_url, _table_names) == {"alembic_version"}
    assert await _inspect(migrated_url, _current_revision) is None

    await asyncio.to_thread(command.upgrade, config, "head")
    assert await _inspect(migrated_url, _current_revision) == _head(migrated_url)
    assert await _inspect(migrated_url, _schema_differences) == []


async def test_migrated_schema_matches_the_metadata(migrated_url: str) -> None:
    assert await _inspect(migrated_url, _schema_differences) == []


def test_migrate_works_from_inside_a_running_event_loop(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/payportal.db"

    async def main() -> None:
        migrate(url)  # blocks the loop on purpose: it is the synchronous entry point

    asyncio.run(main())
    assert asyncio.run(_inspect(url, _current_revision)) == _head(url)
