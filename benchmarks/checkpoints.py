"""Checkpoint benchmark: one hot account's throughput over a long run, and what its
checkpoints cost.

A shard (in this process, no Ray) with a real store takes payments for ``--accounts``
accounts, a fraction ``--hot`` of them for one account, as a peak-season payer with one
huge customer would see. A payment is two commands (create, then the processor's
success), each answered only once durable. Every ``--interval`` payments it prints the
rate over that interval, the checkpoint bytes written per payment and this process's CPU
per payment. If a checkpoint costs in proportion to everything the hot account ever had,
the rate falls as the run goes on; if it costs what changed since the last one, the
rate stays flat.

    python -m benchmarks.checkpoints --db postgres
    python -m benchmarks.checkpoints --db sqlite --payments 40000 --hot 0.4

PostgreSQL is the one in PAYPORTAL_BENCH_POSTGRES_URL (default: the local ``test``
database's server); the benchmark creates and drops a database of its own there.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

from payportal.actors import AccountShardCore, ShardOptions, ShardRouter
from payportal.engine import (
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
    Result,
)
from payportal.gc_tuning import tune_for_throughput
from payportal.persistence import Store, migrate

from ._cpu import CpuMeter, report

POSTGRES_URL_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
CARD = PaymentMethodRef(id="pm_bench", brand="visa")
# Payments kept open at once: enough to fill the router's 256-command batches.
IN_FLIGHT_MAX = 2_048


class _Handle:
    """The shard core where a Ray actor handle would be (``handle.apply.remote(batch)``)."""

    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = self

    def remote(self, batch: bytes) -> Any:
        return self.core.apply(batch)


class _CheckpointBytes:
    """Counts the checkpoint rows and bytes each commit the store prepares will write."""

    def __init__(self, store: Store) -> None:
        self.rows = 0
        self.bytes = 0
        prepare = store.prepare

        def counting(shard_id: int, changes: list[Any]) -> Any:
            prepared = prepare(shard_id, changes)
            # Every keyed collection of checkpoint rows the commit carries, whatever the
            # format: the whole state per account, or a core plus changed payments.
            for name in dir(prepared):
                rows = getattr(prepared, name)
                if "checkpoint" in name and isinstance(rows, dict):
                    self.rows += len(rows)
                    self.bytes += sum(
                        len(value)
                        for row in rows.values()
                        for value in row
                        if isinstance(value, bytes)
                    )
            return prepared

        store.prepare = counting  # type: ignore[method-assign]


async def _database(kind: str) -> tuple[str, Any]:
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="payportal-bench-")
        url = f"sqlite+aiosqlite:///{folder}/bench.db"
        await asyncio.to_thread(migrate, url)
        return url, None
    sys.path.insert(0, os.getcwd())
    from tests.integration.shard_support import create_postgres_database, drop_postgres_database

    server_url = os.environ.get("PAYPORTAL_BENCH_POSTGRES_URL", POSTGRES_URL_DEFAULT)
    url, name = await create_postgres_database(server_url)
    await asyncio.to_thread(migrate, url)

    async def drop() -> None:
        await drop_postgres_database(server_url, name)

    return url, drop


async def _pay(
    router: ShardRouter, account_ids: list[str], hot: float, numbers: range, rng: random.Random
) -> int:
    """Pay ``numbers`` payments; returns how many went to the hot account (the first)."""
    gate = asyncio.Semaphore(IN_FLIGHT_MAX)
    chosen = [
        account_ids[0] if rng.random() < hot else account_ids[rng.randrange(1, len(account_ids))]
        for _ in numbers
    ]

    async def pay(account_id: str, n: int) -> None:
        payment_id, attempt_id = f"pay_{n}", f"att_{n}"
        async with gate:
            created = await router.submit(
                CreatePayment(
                    account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                    idempotency_key=payment_id, amount_minor=100, currency="USD",
                    payment_method=CARD,
                )
            )  # fmt: skip
            assert created.outcome.result is Result.ok, created.outcome
            captured = await router.submit(
                RecordOutcome(
                    account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                    outcome=OutcomeKind.succeeded, charge_id=f"ch_{payment_id}",
                )
            )  # fmt: skip
            assert captured.outcome.result is Result.ok, captured.outcome

    await asyncio.gather(*(pay(a, n) for a, n in zip(chosen, numbers, strict=True)))
    return sum(a == account_ids[0] for a in chosen)


async def _report_load(store: Store, account_id: str, payments: int) -> None:
    """How long recovering the hot account takes: checkpoint, then the journal past it."""
    import sqlalchemy as sa

    from payportal.persistence import tables

    cp = tables.account_checkpoints
    async with store.engine.connect() as connection:
        found = await connection.execute(
            sa.select(cp.c.version).where(cp.c.account_id == account_id)
        )
        checkpoint_version = int(found.scalar() or 0)
    samples_ms = []
    for _ in range(3):
        started = time.perf_counter()
        state = await store.load_account(account_id)
        samples_ms.append((time.perf_counter() - started) * 1000)
        assert state is not None
        assert len(state.payments) == payments, (len(state.payments), payments)
    print(f"loading the hot account ({payments} payments, "
          f"{state.version - checkpoint_version} events past its checkpoint): "
          f"{statistics.median(samples_ms):,.0f} ms (median of 3)")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--payments", type=int, default=60_000)
    parser.add_argument("--interval", type=int, default=5_000, help="payments per line")
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--hot", type=float, default=0.4, help="share of the hot account")
    parser.add_argument(
        "--checkpoint-every", type=int, default=ShardOptions().checkpoint_every_events,
        help="ShardOptions.checkpoint_every_events",
    )  # fmt: skip
    args = parser.parse_args()
    assert args.accounts >= 2, args.accounts
    assert 0 <= args.hot <= 1, args.hot

    url, drop = await _database(args.db)
    store = await Store.connect(url)
    try:
        counted = _CheckpointBytes(store)
        options = ShardOptions(checkpoint_every_events=args.checkpoint_every)
        core = AccountShardCore(0, store, options=options)
        router = ShardRouter([_Handle(core)], queue_max=4 * IN_FLIGHT_MAX)
        account_ids = [f"acct_{i:06d}" for i in range(args.accounts)]
        await router.submit_many([OpenAccount(account_id=a, currency="USD") for a in account_ids])
        await router.submit_many([
            IssueInvoice(
                account_id=a, invoice_id=f"inv_{a}", number="1", amount_minor=10**12,
                currency="USD", due_date=dt.date(2026, 12, 31),
            )
            for a in account_ids
        ])  # fmt: skip
        tune_for_throughput()
        print(f"database={args.db} accounts={args.accounts} hot={args.hot:.0%} "
              f"checkpoint_every_events={args.checkpoint_every}")  # fmt: skip
        print(f"{'payments':>9} {'hot acct':>9} {'payments/s':>11} {'ckpt rows':>10} "
              f"{'ckpt KB':>10} {'ckpt B/pay':>11} {'CPU µs/pay':>11}")  # fmt: skip
        rng = random.Random(11)
        done = hot_total = 0
        meter = CpuMeter()
        meter.start()
        run_started = time.perf_counter()
        while done < args.payments:
            numbers = range(done, min(done + args.interval, args.payments))
            rows_before, bytes_before = counted.rows, counted.bytes
            cpu_before = time.process_time()
            started = time.perf_counter()
            hot_total += await _pay(router, account_ids, args.hot, numbers, rng)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_before
            done = numbers.stop
            written = counted.bytes - bytes_before
            print(
                f"{done:9d} {hot_total:9d} {len(numbers) / elapsed:11,.0f} "
                f"{counted.rows - rows_before:10d} {written / 1024:10,.0f} "
                f"{written / len(numbers):11,.0f} {cpu / len(numbers) * 1e6:11,.0f}",
                flush=True,
            )
        total_s = time.perf_counter() - run_started
        spent = meter.stop()
        print(f"all: {args.payments} payments in {total_s:.1f} s = "
              f"{args.payments / total_s:,.0f} payments/s; checkpoints wrote "
              f"{counted.bytes / 1e6:,.1f} MB "
              f"({counted.bytes / args.payments:,.0f} B/payment)")  # fmt: skip
        print("CPU per payment (the shard and its store run in this process):")
        print("\n".join(report(spent, args.payments, os.cpu_count() or 1)))
        await _report_load(store, account_ids[0], hot_total)
    finally:
        await store.close()
        if drop is not None:
            await drop()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
