"""PostgreSQL drops every connection of serve's database, again and again, under load.

``pg_terminate_backend`` ends the server side of every session on the scratch database
(shards' group commits, read-model projection, the front doors' reads, the mail sender's
LISTEN) at random points: mid-transaction, mid-commit, idle in a pool. The server itself
keeps running, as other databases on it are in use. Requests that fail are resent with
the same key; afterwards the audit holds: nothing acknowledged lost, no key or payment
applied twice, nothing captured twice, the ledger balanced and every balance equal to
its journal's replay.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.databases import _asyncpg_dsn

from .harness import ROUNDS, Load, audit, portal, settle

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

BEFORE = 100  # payments acknowledged before the first drop
DROPS = 5 * ROUNDS
BETWEEN_DROPS_S = 1.0
AFTER_S = 3.0


async def _terminate(postgres_url: str, database: str) -> int:
    """End every session on ``database``; how many there were."""
    connection = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        ended: int = await connection.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()) AS ended",
            database,
        )
    finally:
        await connection.close()
    return ended


def test_dropped_database_connections_lose_nothing_acknowledged(
    tmp_path: Path, scratch_postgres: str, postgres_url: str
) -> None:
    database = urlsplit(scratch_postgres).path.lstrip("/")
    with portal(tmp_path, scratch_postgres) as running:
        running.add_card(running.served.sandbox_port)
        load = Load(running).start()
        try:
            load.wait_for(BEFORE)
            first_drop = time.monotonic()
            ended = 0
            for _ in range(DROPS):
                ended += asyncio.run(_terminate(postgres_url, database))
                last_drop = time.monotonic()
                time.sleep(BETWEEN_DROPS_S)
            deadline = time.monotonic() + 60
            while (back := load.first_success_after(last_drop)) is None:
                assert time.monotonic() < deadline, "no payment succeeded after the drops"
                time.sleep(0.1)
            time.sleep(AFTER_S)
        finally:
            load.stop()
        assert ended, "no connection was dropped"
        assert not load.gave_up, f"{load.gave_up} payments never answered"
        unknown, resolved_s, states = settle(tmp_path, load)
        window = [answered - sent for sent, answered, _, _, _ in load.timeline
                  if first_drop <= sent <= last_drop + BETWEEN_DROPS_S]  # fmt: skip
    audit(
        "PostgreSQL connections dropped",
        load,
        back - last_drop,
        f"{ended} sessions ended in {DROPS} drops over {last_drop - first_drop:.1f} s, "
        f"the slowest answer meanwhile {max(window, default=0):.1f} s; "
        f"{len(load.interrupted_answers(first_drop))} payments answered after resending; "
        f"{unknown} left unknown, resolved in {resolved_s:.1f} s to {dict(sorted(states.items()))}",
    )
