"""The billing year's smaller variant end to end: subscriptions created over HTTP against
account shards on local Ray, then four months of billing runs (two schedulers at once at
every step, one of them killed mid-run now and then) charging through the gateway and the
sandbox processor over HTTP. Every period the calendar says is due is invoiced once,
every autopay period with a good card is captured once by the processor, and a declined
card leaves its subscription past due."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from payportal.actors import ShardRouter
from payportal.actors.cluster import ensure_shards
from payportal.billing import BillingRunner, InvoiceOutcome
from payportal.billing import _records as records
from payportal.engine import InvoiceIssued
from payportal.http import create_app
from payportal.http.typedefs import GATEWAY
from payportal.persistence import Store, migrate
from payportal.persistence.keys import create_api_key_async
from payportal.persistence.tables_billing import billing_invoices
from payportal.processors.sandbox import SANDBOX, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor

pytestmark = [pytest.mark.ray]

SECRET = "whsec_" + base64.b64encode(b"billing-on-ray-test-secret-32byt").decode()
CARDS = {"good": "4242424242424242", "hard": "4000000000000002"}
SUBSCRIPTIONS = 24
WEEKS = 18


class Crash(BaseException):
    """A scheduler killed mid-run."""


def _is_period_start(day: dt.date, interval: str, anchor_day: int, anchor_month: int) -> bool:
    last_of_month = (day + dt.timedelta(days=1)).month != day.month
    on_day = day.day == anchor_day or (last_of_month and day.day < anchor_day)
    return on_day and (interval == "month" or day.month == anchor_month)


async def test_subscriptions_over_http_are_billed_once_per_period_by_two_schedulers_on_ray(
    local_ray: None, tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/payportal.db"
    await asyncio.to_thread(migrate, url)
    sandbox_app = create_sandbox_app(callback_url=None, webhook_secret=SECRET)
    sandbox = await aiohttp_server(sandbox_app, host="127.0.0.1")
    processor = SandboxProcessor(str(sandbox.make_url("")).rstrip("/"))
    router = ShardRouter(ensure_shards(2, url, deployment=uuid.uuid4().hex))
    store = await Store.connect(url)
    app = create_app(router=router, store=store, processor=processor)
    client = await aiohttp_client(app)
    merchant = {"Authorization": f"Bearer {await create_api_key_async(store, 'billing')}"}
    rng = random.Random(6)

    async def ok(method: str, path: str, **kwargs: Any) -> Any:
        response = await client.request(method, path, headers=merchant, **kwargs)
        body = await response.json()
        assert response.status == 200, body
        return body

    try:
        plans = {
            interval: (await ok("POST", "/v1/plans", json={
                "name": interval, "amount": amount, "currency": "USD", "interval": interval,
            }))["id"]
            for interval, amount in (("month", 1_500), ("year", 15_000))
        }  # fmt: skip
        subscriptions = []
        for n in range(SUBSCRIPTIONS):
            profile = {"name": f"Payer {n}", "email": f"p{n}@example.com", "currency": "USD"}
            account = (await ok("POST", "/v1/accounts", json=profile))["id"]
            card = "hard" if n % 8 == 7 else "good"
            token = await processor.tokenize_test_card(CARDS[card])
            method = (await ok("POST", f"/v1/accounts/{account}/payment_methods",
                               json={"token": token}))["id"]  # fmt: skip
            payload: dict[str, Any] = {
                "plan": plans["year" if n % 6 == 5 else "month"], "payment_method": method,
                "autopay": n % 5 != 4,
            }  # fmt: skip
            if n % 3:
                payload["anchor_day"] = [29, 30, 31, 1, 15][n % 5]
            subscriptions.append(
                await ok("POST", f"/v1/accounts/{account}/subscriptions", json=payload)
            )

        gateway = app[GATEWAY]
        start = dt.date.fromisoformat(subscriptions[0]["started_on"])
        crashes = runs = 0
        for week in range(1, WEEKS + 1):
            when = dt.datetime.combine(start + dt.timedelta(days=7 * week), dt.time(12),
                                       tzinfo=dt.UTC)  # fmt: skip
            now_ms = int(when.timestamp() * 1000)

            def fault(point: str) -> None:
                if rng.random() < 0.05:
                    raise Crash(point)

            async def run(crashing: bool, now_ms: int = now_ms, fault: Any = fault) -> None:
                nonlocal crashes, runs
                runs += 1
                runner = BillingRunner(router, store.engine, gateway, lease_ms=60_000,
                                       fault=fault if crashing else None)  # fmt: skip
                try:
                    await runner.run_once(now_ms=now_ms)
                except* Crash:
                    crashes += 1

            await asyncio.gather(run(True), run(False))
        # A last run past every lease, with no crash, finishes what a killed run left.
        final_ms = now_ms + 120_000
        await BillingRunner(router, store.engine, gateway).run_once(now_ms=final_ms)
        await router.drain()
        last_day = dt.datetime.fromtimestamp(final_ms / 1000, tz=dt.UTC).date()

        async with store.engine.connect() as connection:
            billed = [records.invoice_row(r) for r in
                      (await connection.execute(sa.select(billing_invoices))).all()]  # fmt: skip
        journal = await store.journal()
        issued = Counter(e.invoice_id for _, _, e in journal if isinstance(e, InvoiceIssued))
        captures = Counter(c.idempotency_key for c in sandbox_app[SANDBOX].charges.values()
                           if c.status == "succeeded")  # fmt: skip
        expected = missed = extra = 0
        for sub in subscriptions:
            started = dt.date.fromisoformat(sub["started_on"])
            starts = {started} | {
                started + dt.timedelta(days=d) for d in range(1, (last_day - started).days + 1)
                if _is_period_start(started + dt.timedelta(days=d), sub["plan"]["interval"],
                                    sub["anchor_day"], sub["anchor_month"])
            }  # fmt: skip
            got = {r.period_start for r in billed if r.subscription_id == sub["id"]}
            expected += len(starts)
            missed += len(starts - got)
            extra += len(got - starts)
        paid = [r for r in billed if r.outcome is InvoiceOutcome.paid and r.payment_id]
        unpaid = [r for r in billed if r.outcome is InvoiceOutcome.unpaid]
        duplicates = sum(n - 1 for n in issued.values() if n > 1)
        print(f"\nbilling on Ray: subscriptions={len(subscriptions)} periods expected={expected} "
              f"billed={len(billed)} missed={missed} extra={extra} duplicates={duplicates} "
              f"paid by autopay={len(paid)} unpaid={len(unpaid)} captures={sum(captures.values())} "
              f"runs={runs} crashed={crashes}")  # fmt: skip
        assert missed == 0
        assert extra == 0
        assert duplicates == 0
        assert all(issued[r.invoice_id] == 1 for r in billed)
        assert max(captures.values()) == 1
        assert sum(captures.values()) == len(paid)
        assert unpaid
        for sub in subscriptions:
            fetched = await ok("GET", f"/v1/subscriptions/{sub['id']}")
            has_unpaid = any(r.subscription_id == sub["id"] for r in unpaid)
            assert (fetched["status"] == "past_due") == has_unpaid, fetched
    finally:
        await client.close()
        await router.drain()
        await processor.close()
        await store.close()
