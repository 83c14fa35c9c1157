"""Schema migrations: Alembic, configured from code and shipped inside the package.

``migrate(url)`` is what ``payportal migrate`` calls: upgrade to head. It is synchronous;
the migration environment runs its own event loop, so when called from inside a running
loop it runs on a worker thread instead (``asyncio.to_thread(migrate, url)`` avoids the
block). The URL may name the async drivers (``sqlite+aiosqlite``, ``postgresql+asyncpg``)
or the plain schemes, which are mapped to them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config

__all__ = ["MIGRATIONS", "alembic_config", "migrate"]

MIGRATIONS: Final = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` with this package's migrations; no .ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (default: the newest)."""
    config = alembic_config(url)
    if not _in_running_loop():
        command.upgrade(config, revision)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(command.upgrade, config, revision).result()
