"""Shard benchmark: applied-and-durable payments per second through router → shards → journal.

No HTTP. A payment is two commands (create, then the processor's success), each answered
only after its events are committed. Prints, for the chosen database:
  - batched throughput (the router's defaults: ≤256 items or ≤2 ms per call),
  - one call per command (batch size 1), on fewer payments since it is slow,
  - journal group-commit time by batch size, straight into the store,
  - projection lag: how long after the last batched reply the read models caught up.

    python -m benchmarks.shards --db sqlite
    python -m benchmarks.shards --db postgres --payments 50000 --rounds 3

Wall-clock rates on a shared machine vary from run to run; the median of the rounds and
the CPU time each part of the system spent per payment (this process, the shards,
PostgreSQL, Ray's daemons) are the figures to compare.

PostgreSQL is the one in PAYPORTAL_BENCH_POSTGRES_URL (default: the local ``test``
database's server); the benchmark creates and drops a database of its own there.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from payportal.actors import ShardRouter
from payportal.actors.cluster import connect_ray, ensure_shards
from payportal.engine import (
    AccountState,
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
    Result,
    execute,
)
from payportal.gc_tuning import tune_for_throughput
from payportal.persistence import AccountChange, Store, migrate

from ._cpu import CpuMeter, report
from ._postgres import create_postgres_database, drop_postgres_database, server_url

CARD = PaymentMethodRef(id="pm_bench", brand="visa")
# Concurrent payments a benchmark client keeps open: enough to fill 256-item batches on
# every shard, as a busy front door would.
IN_FLIGHT_MAX = 8_192


async def _database(kind: str) -> tuple[str, Any]:
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="payportal-bench-")
        url = f"sqlite+aiosqlite:///{folder}/bench.db"
        await asyncio.to_thread(migrate, url)
        return url, None
    server = server_url()
    url, name = await create_postgres_database(server)
    await asyncio.to_thread(migrate, url)

    async def drop() -> None:
        await drop_postgres_database(server, name)

    return url, drop


async def _seed(router: ShardRouter, accounts: int) -> list[str]:
    account_ids = [f"acct_{i:06d}" for i in range(accounts)]
    await router.submit_many([OpenAccount(account_id=a, currency="USD") for a in account_ids])
    await router.submit_many(
        [
            IssueInvoice(
                account_id=a, invoice_id=f"inv_{a}", number="1", amount_minor=10**9,
                currency="USD", due_date=dt.date(2026, 12, 31),
            )
            for a in account_ids
        ]
    )  # fmt: skip
    return account_ids


async def _pay_all(router: ShardRouter, account_ids: list[str], payments: int, tag: str) -> float:
    rng = random.Random(7)
    gate = asyncio.Semaphore(IN_FLIGHT_MAX)

    async def pay(i: int) -> None:
        account_id = account_ids[rng.randrange(len(account_ids))]
        payment_id, attempt_id = f"pay_{tag}_{i}", f"att_{tag}_{i}"
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

    started = time.perf_counter()
    await asyncio.gather(*(pay(i) for i in range(payments)))
    return time.perf_counter() - started


async def _commit_times(url: str, sizes: list[int], repeats: int) -> list[tuple[int, float, float]]:
    """(batch size, median ms per commit, events/s) for changes of two events each."""
    store = await Store.connect(url)
    rng = random.Random(3)
    results = []
    try:
        for size in sizes:
            samples_ms = []
            for r in range(repeats):
                changes = []
                for n in range(size):
                    account_id = f"commit_{size}_{r}_{n}"
                    state: AccountState | None = None
                    events: list[Any] = []
                    entries: list[Any] = []
                    for command in (
                        OpenAccount(account_id=account_id, currency="USD"),
                        CreatePayment(
                            account_id=account_id, payment_id=f"p_{account_id}",
                            attempt_id=f"a_{account_id}", idempotency_key="k",
                            amount_minor=100, currency="USD", payment_method=CARD,
                        ),
                    ):  # fmt: skip
                        state, decision, posted = execute(state, command, 0, rng)
                        events.extend(decision.events)
                        entries.extend(posted)
                    assert state is not None
                    changes.append(
                        AccountChange(
                            account_id=account_id, version_before=0, events=events,
                            entries=entries, state=state,
                        )
                    )  # fmt: skip
                started = time.perf_counter()
                await store.commit(0, changes)
                samples_ms.append((time.perf_counter() - started) * 1000)
            median_ms = statistics.median(samples_ms)
            results.append((size, median_ms, 2 * size / (median_ms / 1000)))
    finally:
        await store.close()
    return results


async def _projection_lag_ms(url: str, shards: int, timeout_s: float = 120.0) -> float | None:
    """Milliseconds until every shard's projection cursor reaches its last journal row."""
    import sqlalchemy as sa

    from payportal.persistence import tables

    store = await Store.connect(url)
    started = time.perf_counter()
    j = tables.journal
    try:
        while time.perf_counter() - started < timeout_s:
            async with store.engine.connect() as connection:
                last = dict(
                    (await connection.execute(
                        sa.select(j.c.shard_id, sa.func.max(j.c.id)).group_by(j.c.shard_id)
                    )).all()
                )  # fmt: skip
            cursors = [await store.projection_cursor(s) for s in range(shards)]
            if all(cursors[s] >= last.get(s, 0) for s in range(shards)):
                return (time.perf_counter() - started) * 1000
            await asyncio.sleep(0.005)
        return None
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--payments", type=int, default=20_000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unbatched-payments", type=int, default=1_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--shards", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--warmup-payments", type=int, default=2_000)
    parser.add_argument("--batched-only", action="store_true",
                        help="skip the unbatched run and the group-commit timings")
    parser.add_argument("--json", action="store_true",
                        help="end with one JSON line of the figures (for make bench)")
    args = parser.parse_args()

    url, drop = await _database(args.db)
    figures: dict[str, Any] | None = None
    try:
        connect_ray(None)
        print(f"database={args.db} shards={args.shards} accounts={args.accounts}")
        deployment = uuid.uuid4().hex
        handles = ensure_shards(args.shards, url, deployment=deployment)
        router = ShardRouter(handles, queue_max=4 * IN_FLIGHT_MAX)
        account_ids = await _seed(router, args.accounts)
        await _pay_all(router, account_ids, args.warmup_payments, "warmup")
        # As ``payportal serve`` does once started.
        tune_for_throughput()

        rates = []
        # Only this process's tree (it started Ray) and its own database count: the
        # machine may be running other people's work.
        database = [] if args.db == "sqlite" else [urlsplit(url).path.lstrip("/")]
        meter = CpuMeter(roots=[os.getpid()], databases=database)
        meter.start()
        for round_number in range(args.rounds):
            elapsed_s = await _pay_all(router, account_ids, args.payments, f"batched{round_number}")
            rates.append(args.payments / elapsed_s)
            print(
                f"batched:   {args.payments} payments in {elapsed_s:.2f} s = "
                f"{rates[-1]:,.0f} durable payments/s ({2 * rates[-1]:,.0f} commands/s)"
            )
        spent = meter.stop()
        print(f"batched, median of {args.rounds} rounds: {statistics.median(rates):,.0f} "
              "durable payments/s")  # fmt: skip
        print("CPU per payment while batched (projection included):")
        payments = args.payments * args.rounds
        print("\n".join(report(spent, payments, os.cpu_count() or 1, exclude=["other"])))
        lag_ms = await _projection_lag_ms(url, args.shards)
        print(
            "projection: read models caught up "
            + (f"{lag_ms:,.0f} ms after the last reply" if lag_ms is not None else "NOT in 120 s")
        )
        if args.json:
            figures = {
                "db": args.db, "shards": args.shards, "accounts": args.accounts,
                "payments_per_round": args.payments, "rates": rates,
                "median_rate": statistics.median(rates), "projection_lag_ms": lag_ms,
                "cpu_us_per_payment": {g: 1e6 * v / payments for g, v in spent.items()
                                       if g != "other"},
            }  # fmt: skip
        if args.batched_only:
            return
        single = ShardRouter(handles, batch_max_items=1, queue_max=4 * IN_FLIGHT_MAX)
        elapsed_s = await _pay_all(single, account_ids, args.unbatched_payments, "single")
        print(
            f"unbatched: {args.unbatched_payments} payments in {elapsed_s:.2f} s = "
            f"{args.unbatched_payments / elapsed_s:,.0f} durable payments/s (one call per command)"
        )
        print("journal group commit (each change = 1 account, 2 events):")
        for size, median_ms, events_per_s in await _commit_times(url, [1, 16, 64, 256, 1024], 5):
            print(f"  batch {size:5d}: {median_ms:8.2f} ms median, {events_per_s:10,.0f} events/s")
    finally:
        if args.json and figures is not None:
            print(json.dumps(figures), flush=True)
        if drop is not None:
            import ray

            ray.shutdown()
            await drop()


if __name__ == "__main__":
    import uvloop

    # The front door runs on uvloop (``payportal serve``); so does its stand-in here.
    uvloop.run(main())
