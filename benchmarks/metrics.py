"""Metrics benchmark: what the numbers cost — the headline figures over a large payments
table, a ``/metrics`` scrape with its database cache cold and warm, and the shard's
per-event counting on the apply path.

Seeds ``--payments`` rows straight into the payments read model (statuses in a
realistic mix, finished over the last 30 days), then prints median times.

    python -m benchmarks.metrics --db sqlite
    python -m benchmarks.metrics --db postgres --payments 200000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import tempfile
import time
import timeit
from typing import Any

import sqlalchemy as sa
from prometheus_client import generate_latest

from payportal.actors import AccountShardCore, ShardRouter
from payportal.engine import CreatePayment, IssueInvoice, OpenAccount, PaymentMethodRef, decide
from payportal.engine import evolve as engine_evolve
from payportal.metrics import headline_figures
from payportal.metrics._exposition import FrontDoorMetrics
from payportal.metrics._shard import ShardMetrics
from payportal.persistence import Store, migrate
from payportal.persistence.tables import payments

POSTGRES_URL_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# A mostly healthy processor: 80 % paid, a tenth declined, a few in flight or retrying.
STATUS_MIX = (
    ["succeeded"] * 80 + ["requires_payment_method"] * 10 + ["failed"] * 3 + ["canceled"] * 3
    + ["retry_scheduled"] * 2 + ["processing"] * 2
)  # fmt: skip
REPEATS = 5
INSERT_ROWS = 5_000
SHARDS = 4


class _Snapshots:
    """``handle.metrics_snapshot.remote()`` for shards driven in this process."""

    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.metrics_snapshot = self

    async def remote(self) -> dict[str, Any]:
        return self.core.metrics_snapshot()


async def _seed(store: Store, count: int, rng: random.Random) -> None:
    now_ms = time.time_ns() // 1_000_000
    rows = []
    for n in range(count):
        status = rng.choice(STATUS_MIX)
        created_ms = now_ms - rng.randint(0, 30 * 86_400_000)
        finished_ms = None
        if status not in ("retry_scheduled", "processing"):
            finished_ms = created_ms + rng.randint(200, 5_000)
        rows.append({
            "payment_id": f"pay_{n}", "account_id": f"acct_{n % 5_000}", "amount_minor": 100,
            "currency": "USD", "status": status, "payment_method_id": "pm_1",
            "amount_applied_minor": 0, "amount_unapplied_minor": 0, "amount_refunded_minor": 0,
            "created_at_ms": created_ms, "finished_at_ms": finished_ms, "next_retry_at_ms": None,
            "idempotency_key": f"key_{n}", "version": 1,
        })  # fmt: skip
    async with store.engine.begin() as connection:
        for start in range(0, count, INSERT_ROWS):
            await connection.execute(sa.insert(payments), rows[start : start + INSERT_ROWS])


def _line(label: str, value: str) -> None:
    print(f"  {label + ':':<52}{value:>10}", flush=True)


async def _median_ms(run: Any, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def bench_database(url: str, count: int) -> None:
    await asyncio.to_thread(migrate, url)
    store = await Store.connect(url)
    try:
        await _seed(store, count, random.Random(1))
        until = dt.datetime.now(dt.UTC)
        for label, window in (("24h", dt.timedelta(hours=24)), ("30d", dt.timedelta(days=30))):
            ms = await _median_ms(lambda w=window: headline_figures(
                store.engine, since=until - w, until=until, accuracy=False))  # fmt: skip
            _line(f"headline_figures, {label} window, without accuracy", f"{ms:.1f} ms")
        ms = await _median_ms(lambda: headline_figures(
            store.engine, since=until - dt.timedelta(hours=24), until=until))  # fmt: skip
        _line("headline_figures, 24h window, with accuracy", f"{ms:.1f} ms")
        router = ShardRouter([_Snapshots(AccountShardCore(i, store)) for i in range(SHARDS)])
        metrics = FrontDoorMetrics(router=router, engine=store.engine)

        async def scrape() -> None:
            await metrics.refresh()
            generate_latest(metrics.registry)

        metrics.db_cache_s = metrics.accuracy_cache_s = 0.0
        ms = await _median_ms(scrape)
        _line("/metrics scrape, database cache cold", f"{ms:.1f} ms")
        metrics.db_cache_s = metrics.accuracy_cache_s = 3_600.0
        ms = await _median_ms(scrape, repeats=20)
        _line("/metrics scrape, database cache warm", f"{ms:.2f} ms")
    finally:
        await store.close()


def bench_shard_counting() -> None:
    """Per event, what ``ShardMetrics`` adds to the apply loop, beside the engine's decide."""
    visa = PaymentMethodRef(id="pm_1", brand="visa")
    rng = random.Random(1)
    now_ms = 1_700_000_000_000
    state: Any = None
    commands: list[Any] = [
        OpenAccount(account_id="a", currency="USD"),
        IssueInvoice(account_id="a", invoice_id="i", number="1", amount_minor=10**9,
                     currency="USD", due_date=dt.date(2026, 1, 1)),
    ]  # fmt: skip
    commands += [CreatePayment(account_id="a", payment_id=f"p{k}", attempt_id=f"t{k}",
                               idempotency_key=f"k{k}", amount_minor=100, currency="USD",
                               payment_method=visa) for k in range(100)]  # fmt: skip
    for command in commands:
        for event in decide(state, command, now_ms, rng).events:
            state, _ = engine_evolve(state, event)
    fresh = CreatePayment(account_id="a", payment_id="px", attempt_id="tx", idempotency_key="kx",
                          amount_minor=100, currency="USD", payment_method=visa)  # fmt: skip
    event = decide(state, fresh, now_ms, rng).events[0]
    metrics = ShardMetrics()

    def count() -> None:
        watched = metrics.unfinished_payment(state, event)
        if watched is not None:
            metrics.after_event(state, watched)

    n = 200_000
    per_event_ns = min(timeit.repeat(count, number=n, repeat=REPEATS)) / n * 1e9
    per_decide_ns = min(timeit.repeat(lambda: decide(state, fresh, now_ms, rng), number=20_000,
                                      repeat=REPEATS)) / 20_000 * 1e9  # fmt: skip
    _line("shard counting per event", f"{per_event_ns:.0f} ns")
    _line("the engine's decide for one payment, for scale", f"{per_decide_ns:.0f} ns")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--payments", type=int, default=100_000)
    args = parser.parse_args()
    print(f"metrics on {args.db}, {args.payments:,} payments:")
    if args.db == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            await bench_database(f"sqlite+aiosqlite:///{directory}/metrics.db", args.payments)
    else:
        from ._postgres import create_postgres_database, drop_postgres_database

        base = os.environ.get("PAYPORTAL_TEST_POSTGRES_URL", POSTGRES_URL_DEFAULT)
        url, name = await create_postgres_database(base)
        try:
            await bench_database(url, args.payments)
        finally:
            await drop_postgres_database(base, name)
    bench_shard_counting()


if __name__ == "__main__":
    asyncio.run(main())
