"""Several writers share one SQLite file safely: two OS processes (and two engines in one
process) commit batches concurrently, and every row of every batch is present afterwards,
with no ``database is locked`` — the job of WAL, busy_timeout and BEGIN IMMEDIATE."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import sqlalchemy as sa

from payportal.persistence import Store, migrate, tables

from .conftest import AccountDriver

ROOT = Path(__file__).resolve().parents[2]
BATCHES = 40
ACCOUNTS_PER_BATCH = 16
# Per account: opened, invoice issued, payment created, attempt succeeded.
EVENTS_PER_ACCOUNT = 4

_WRITER = textwrap.dedent(
    """
    import asyncio, json, pathlib, sys, time
    from tests.integration.conftest import AccountDriver
    from payportal.persistence import Store

    async def main(url, writer, batches, accounts, barrier):
        store = await Store.connect(url)
        # Start together: process start-up takes longer than the writing itself.
        barrier = pathlib.Path(barrier)
        (barrier / str(writer)).touch()
        deadline = time.monotonic() + 60
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        started = time.monotonic()
        try:
            for batch in range(batches):
                changes = []
                for n in range(accounts):
                    account = AccountDriver(f"acct_{writer}_{batch}_{n}")
                    account.open()
                    account.invoice(1_000)
                    account.pay(1_000)
                    changes.append(account.change(checkpoint=n % 2 == 0))
                await store.commit(writer, changes)
        finally:
            await store.close()
        print(json.dumps({"started": started, "finished": time.monotonic()}))

    url, writer, batches, accounts, barrier = sys.argv[1:]
    asyncio.run(main(url, int(writer), int(batches), int(accounts), barrier))
    """
)


def _url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/var/payportal.db"


async def _journal_counts(url: str) -> dict[int, int]:
    store = await Store.connect(url)
    try:
        async with store.engine.connect() as connection:
            j = tables.journal
            result = await connection.execute(
                sa.select(j.c.shard_id, sa.func.count()).group_by(j.c.shard_id)
            )
            return {shard_id: count for shard_id, count in result}
    finally:
        await store.close()


async def _count(url: str, table: sa.Table) -> int:
    store = await Store.connect(url)
    try:
        async with store.engine.connect() as connection:
            count = await connection.execute(sa.select(sa.func.count()).select_from(table))
            return int(count.scalar_one())
    finally:
        await store.close()


async def test_two_processes_writing_one_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    url = _url(tmp_path)
    await asyncio.to_thread(migrate, url)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    arguments = [str(BATCHES), str(ACCOUNTS_PER_BATCH), str(barrier)]
    pipe = asyncio.subprocess.PIPE

    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WRITER,
            url,
            str(writer),
            *arguments,
            cwd=ROOT,
            stdout=pipe,
            stderr=pipe,
        )
        for writer in (1, 2)
    ]
    outputs = [await w.communicate() for w in writers]

    for writer, (_, stderr) in zip(writers, outputs, strict=True):
        assert b"database is locked" not in stderr, stderr.decode()
        assert writer.returncode == 0, stderr.decode()
    windows = [json.loads(stdout) for stdout, _ in outputs]
    # The two writers really overlapped in time (else this proves nothing).
    assert max(w["started"] for w in windows) < min(w["finished"] for w in windows)
    expected = BATCHES * ACCOUNTS_PER_BATCH * EVENTS_PER_ACCOUNT
    assert await _journal_counts(url) == {1: expected, 2: expected}
    # Each writer's store projected its read models before it closed.
    assert await _count(url, tables.accounts) == 2 * BATCHES * ACCOUNTS_PER_BATCH
    assert await _count(url, tables.payments) == 2 * BATCHES * ACCOUNTS_PER_BATCH
    assert await _count(url, tables.account_checkpoints) == BATCHES * ACCOUNTS_PER_BATCH


async def test_two_engines_in_one_process_commit_concurrently(tmp_path: Path) -> None:
    url = _url(tmp_path)
    await asyncio.to_thread(migrate, url)
    stores = [await Store.connect(url), await Store.connect(url)]

    async def write(shard_id: int, store: Store) -> None:
        for batch in range(BATCHES):
            changes = []
            for n in range(ACCOUNTS_PER_BATCH):
                account = AccountDriver(f"acct_{shard_id}_{batch}_{n}")
                account.open()
                account.invoice(1_000)
                account.pay(1_000)
                changes.append(account.change())
            await store.commit(shard_id, changes)

    try:
        # Each store also runs several commits at once over its own pool.
        await asyncio.gather(
            *(write(shard, store) for shard, store in ((1, stores[0]), (2, stores[1]))),
            *(write(shard, store) for shard, store in ((3, stores[0]), (4, stores[1]))),
        )
        reloaded = await stores[1].load_account("acct_1_0_0")
    finally:
        for store in stores:
            await store.close()

    expected = BATCHES * ACCOUNTS_PER_BATCH * EVENTS_PER_ACCOUNT
    assert await _journal_counts(url) == {1: expected, 2: expected, 3: expected, 4: expected}
    assert reloaded is not None
    assert reloaded.version == EVENTS_PER_ACCOUNT


async def test_sqlite_connections_use_wal_busy_timeout_and_normal_sync(tmp_path: Path) -> None:
    url = _url(tmp_path)
    store = await Store.connect(url)
    try:
        async with store.engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert (await pragma("PRAGMA journal_mode")).scalar_one() == "wal"
            assert (await pragma("PRAGMA busy_timeout")).scalar_one() == 30_000
            assert (await pragma("PRAGMA synchronous")).scalar_one() == 1  # NORMAL
            assert (await pragma("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        await store.close()


def test_the_writer_script_builds_the_changes_the_counts_assume() -> None:
    account = AccountDriver("acct_x")
    account.open()
    account.invoice(1_000)
    account.pay(1_000)
    assert len(account.change().events) == EVENTS_PER_ACCOUNT
