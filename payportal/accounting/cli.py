"""``payportal revenue recognize|report`` and ``payportal reconcile``: the accounting jobs by
hand. Each starts (or, with ``PAYPORTAL_RAY_ADDRESS``, joins) Ray and gets the shards the
way ``payportal demo seed`` does, runs the job once and prints what it did. Against a
local ``payportal serve`` already running, set ``PAYPORTAL_RAY_ADDRESS=auto`` so the job
goes through serve's shards instead of starting its own (serve runs both jobs by itself).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import sqlalchemy as sa

from payportal.persistence import tables

from .recognition import recognize_revenue, render_revenue_csv, revenue_report
from .reconciliation import reconcile

__all__ = ["recognize_once", "reconcile_once", "report"]

T = TypeVar("T")


@asynccontextmanager
async def _shards(settings: Any) -> AsyncIterator[tuple[Any, Any]]:
    from payportal.actors import ShardRouter
    from payportal.actors.cluster import connect_ray_for_command, ensure_shards
    from payportal.persistence import Store, migrate

    await asyncio.to_thread(migrate, settings.database_url)
    joined = connect_ray_for_command(settings.ray_address, settings.var_dir)
    handles = ensure_shards(settings.shards, settings.database_url, detached=joined)
    store = await Store.connect(settings.database_url)
    router = ShardRouter(handles)
    try:
        yield router, store
    finally:
        await router.drain()
        await store.close()


def _run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


def recognize_once(settings: Any, through: dt.date | None) -> None:
    """Recognize every account's revenue through ``through`` (default: yesterday, UTC)."""
    from tqdm import tqdm

    async def main() -> Any:
        async with _shards(settings) as (router, store):
            counted = sa.select(sa.func.count()).select_from(tables.accounts)
            async with store.engine.connect() as connection:
                total = (await connection.execute(counted)).scalar_one()
            with tqdm(total=total, unit="account", file=sys.stderr,
                      disable=not sys.stderr.isatty()) as bar:  # fmt: skip
                return await recognize_revenue(router, store.engine, through=through,
                                               progress=bar.update)  # fmt: skip

    run = _run(main)
    print(f"recognized through {run.through.isoformat()}: {run.accounts_posted} of "
          f"{run.accounts_total} accounts had revenue to recognize")  # fmt: skip


def report(settings: Any, start: dt.date | None, end: dt.date | None) -> None:
    """Print the revenue report as CSV (accuracy per month in the last column)."""
    from payportal.persistence import create_engine_for

    async def main() -> str:
        engine = create_engine_for(settings.database_url)
        try:
            found = await revenue_report(engine, start=start, end=end)
        finally:
            await engine.dispose()
        if found.accuracy != 1:
            print(f"revenue recognition accuracy {found.accuracy} (must be 1); differing: "
                  + ", ".join(f"{d.invoice_id} {d.month}" for d in found.differing_invoices),
                  file=sys.stderr)  # fmt: skip
        return render_revenue_csv(found)

    sys.stdout.write(_run(main))


def reconcile_once(settings: Any) -> None:
    """Reconcile the sandbox processor's settlement reports once."""
    from payportal.processors.sandbox_client import SandboxProcessor

    async def main() -> Any:
        async with _shards(settings) as (router, store):
            processor = SandboxProcessor(settings.sandbox_url, ca_file=settings.tls_ca_file)
            try:
                return await reconcile(router, store.engine, processor)
            finally:
                await processor.close()

    from payportal.processors import ProcessorRequestError

    try:
        run = _run(main)
    except ProcessorRequestError as error:
        print(f"payportal reconcile: the processor's reports are unavailable ({error}); "
              "is payportal serve (and its sandbox) running?", file=sys.stderr)  # fmt: skip
        raise SystemExit(1) from None
    kinds = ", ".join(f"{k} {n}" for k, n in run.exceptions_by_kind.items()) or "none"
    print(f"payouts {run.payouts}, settled charges {run.charges}, matched {run.matched}, "
          f"posted now {run.posted}, new exceptions {run.exceptions_new} ({kinds})")
