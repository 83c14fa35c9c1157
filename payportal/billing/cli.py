"""``payportal billing run``: one billing run by hand, with a progress bar on a terminal.

It joins (or starts) Ray and the shards as ``payportal demo seed`` does, charges through
the processor the settings name, and prints one summary line. ``--dry-run`` only reads:
it needs no shards and changes nothing. Running it beside ``payportal serve``'s own
scheduler is safe (the claims make two schedulers safe); with the embedded local Ray,
point ``PAYPORTAL_RAY_ADDRESS`` at the server's Ray so both use the same shards.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["run_billing", "start_billing_scheduler"]


def run_billing(settings: Any, *, now_ms: int | None, dry_run: bool) -> str:
    """One run as of ``now_ms`` (default: now); returns the summary line."""
    return asyncio.run(_run(settings, now_ms=now_ms, dry_run=dry_run))


async def _run(settings: Any, *, now_ms: int | None, dry_run: bool) -> str:
    from tqdm import tqdm

    from payportal.persistence import Store, migrate

    from .run import BillingRunner

    settings.resolve_data_keys()
    await asyncio.to_thread(migrate, settings.database_url)
    store = await Store.connect(settings.database_url)
    zone = ZoneInfo(settings.billing_timezone)
    processor: Any = None
    try:
        if dry_run:
            runner = BillingRunner(None, store.engine, None, zone=zone)
            report = await runner.run_once(now_ms=now_ms, dry_run=True)
            return report.summary()
        from payportal.actors import ShardRouter
        from payportal.actors.cluster import connect_ray_for_command, ensure_shards
        from payportal.http.gateway import Gateway
        from payportal.persistence import directory

        joined = connect_ray_for_command(settings.ray_address, settings.var_dir)
        handles = ensure_shards(settings.shards, settings.database_url, detached=joined)
        router = ShardRouter(handles, batch_max_items=settings.batch_max_items,
                             batch_max_wait_ms=settings.batch_max_wait_ms)  # fmt: skip
        if settings.processor == "sandbox":
            from payportal.processors.sandbox_client import SandboxProcessor

            processor = SandboxProcessor.from_settings(settings)

        async def token_for(method_id: str) -> str | None:
            row = await directory.payment_method(store.engine, method_id)
            return None if row is None else row.token

        runner = BillingRunner(router, store.engine, Gateway(router, processor, token_for),
                               zone=zone)  # fmt: skip
        # The bar only on a terminal: a scheduled or piped run logs one summary line.
        with tqdm(desc="billing", unit="item", disable=not sys.stderr.isatty(),
                  file=sys.stderr) as bar:  # fmt: skip

            def on_total(total: int) -> None:
                bar.reset(total=total)

            report = await runner.run_once(now_ms=now_ms, on_total=on_total,
                                           on_advance=bar.update)  # fmt: skip
        await router.drain()
        return report.summary()
    finally:
        if processor is not None:
            await processor.close()
        await store.close()


def start_billing_scheduler(
    settings: Any, router: Any, store: Any, processor: Any
) -> tuple[asyncio.Task[None] | None, str]:
    """``payportal serve``'s scheduler: a billing run every ``billing_interval_s`` in this
    process (a second server's scheduler beside it is safe). Returns the task (None when
    the interval is 0) and a line for the banner."""
    if settings.billing_interval_s == 0:
        return None, "billing      scheduler off (PAYPORTAL_BILLING_INTERVAL_S=0)"
    from payportal.http.gateway import Gateway
    from payportal.persistence import directory

    from .run import BillingRunner

    async def token_for(method_id: str) -> str | None:
        row = await directory.payment_method(store.engine, method_id)
        return None if row is None else row.token

    runner = BillingRunner(router, store.engine, Gateway(router, processor, token_for),
                           zone=ZoneInfo(settings.billing_timezone))  # fmt: skip
    task = asyncio.get_running_loop().create_task(
        runner.run_forever(settings.billing_interval_s), name="billing"
    )
    return task, (
        f"billing      due subscription periods invoiced and charged every "
        f"{settings.billing_interval_s} s ({settings.billing_timezone} dates)"
    )
