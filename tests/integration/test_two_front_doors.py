"""Two front-door processes pay the same account at once through the same named shards:
the journal shows one gap-free order of events and money allocated exactly once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from payportal.actors import ShardRouter
from payportal.actors.cluster import ensure_shards
from payportal.engine import PaymentStatus
from payportal.persistence import Store, migrate

from .shard_support import audit_journal, run_python, seed_accounts

pytestmark = [pytest.mark.ray]

PAYMENTS_PER_FRONT_DOOR = 300


async def _front_door(address: str, deployment: str, account_id: str, tag: str) -> dict[str, Any]:
    return await run_python(
        "-m", "tests.integration.front_door_client",
        address, deployment, "2", account_id, tag, str(PAYMENTS_PER_FRONT_DOOR),
    )  # fmt: skip


async def test_two_front_doors_paying_one_account_are_serialized(
    local_ray: None, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/payportal.db"
    await asyncio.to_thread(migrate, url)
    deployment = uuid.uuid4().hex
    router = ShardRouter(ensure_shards(2, url, deployment=deployment))
    [account_id] = await seed_accounts(router, 1, invoices_per_account=50, amount_minor=5_000)
    address = ray.get_runtime_context().gcs_address

    results = await asyncio.gather(
        _front_door(address, deployment, account_id, "a"),
        _front_door(address, deployment, account_id, "b"),
    )
    assert [r["acknowledged"] for r in results] == [PAYMENTS_PER_FRONT_DOOR] * 2

    store = await Store.connect(url)
    try:
        audit, rebuilt = await audit_journal(store, [account_id])
    finally:
        await store.close()
    state = rebuilt[account_id]
    captured = [p for p in state.payments.values() if p.status is PaymentStatus.succeeded]
    assert len(captured) == 2 * PAYMENTS_PER_FRONT_DOOR
    assert audit.version_gaps == 0
    assert audit.double_applied == 0
    # Allocation happened in one serial order: each invoice got exactly what was paid on it.
    allocated_minor: dict[str, int] = {}
    for payment in captured:
        for allocation in payment.allocations:
            allocated_minor[allocation.invoice_id] = (
                allocated_minor.get(allocation.invoice_id, 0) + allocation.amount_minor
            )
    for invoice in state.invoices.values():
        assert allocated_minor.get(invoice.invoice_id, 0) == invoice.amount_paid_minor
        assert invoice.amount_paid_minor <= invoice.amount_due_minor
    paid_total_minor = sum(p.amount_minor for p in captured)
    assert state.outstanding_minor - state.credit_minor == 50 * 5_000 - paid_total_minor
