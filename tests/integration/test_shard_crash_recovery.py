"""Kill -9 account shards while 5,000 payments are in flight on local Ray, then prove from the
durable journal alone that every acknowledged payment exists exactly once, none was applied
twice, the ledger balances and every balance matches an independent replay."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid

import msgspec
import pytest
from ray.exceptions import RayError

from payportal.actors import Overloaded, Reply, ShardRouter, shard_for
from payportal.actors.cluster import ensure_shards
from payportal.engine import (
    CreatePayment,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    PaymentStatus,
    RecordOutcome,
    Result,
)
from payportal.engine.messages import Command
from payportal.persistence import Store

from .shard_support import audit_journal, seed_accounts

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    # tests.databases' scratch database, on both kinds (PostgreSQL not marked "postgres" here).
    pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True),
]

PAYMENTS = 5_000
ACCOUNTS = 100
SHARDS = 2
# Kills happen once this many payments have been acknowledged, one per shard.
KILL_AFTER_ACKNOWLEDGED = (1_000, 3_000)
# A client gives up on one command after this long; far above any recovery seen.
CLIENT_PATIENCE_S = 120.0


async def _submit_until_answered(router: ShardRouter, command: Command) -> Reply:
    """What a client does: on any failure, send the same command (same ids) again."""
    deadline = time.monotonic() + CLIENT_PATIENCE_S
    while True:
        try:
            return await router.submit(command)
        except (RayError, Overloaded):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_killed_shards_recover_every_acknowledged_payment_exactly_once(
    local_ray: None, database_url: str
) -> None:
    handles = ensure_shards(SHARDS, database_url, deployment=uuid.uuid4().hex)
    router = ShardRouter(handles, queue_max=4 * PAYMENTS)
    account_ids = await seed_accounts(router, ACCOUNTS, invoices_per_account=3, amount_minor=20_000)
    rng = random.Random(1)
    amounts_minor = [rng.randint(1, 9_000) for _ in range(PAYMENTS)]
    acknowledged: dict[str, tuple[str, int]] = {}
    kill_now = {threshold: asyncio.Event() for threshold in KILL_AFTER_ACKNOWLEDGED}
    card = PaymentMethodRef(id="pm_card", brand="visa")

    async def pay(i: int) -> None:
        account_id = account_ids[i % ACCOUNTS]
        create = CreatePayment(
            account_id=account_id, payment_id=f"pay_{i}", attempt_id=f"att_{i}",
            idempotency_key=f"key_{i}", amount_minor=amounts_minor[i], currency="USD",
            payment_method=card,
        )  # fmt: skip
        created = await _submit_until_answered(router, create)
        assert created.outcome.result in (Result.ok, Result.exists), created.outcome
        captured = await _submit_until_answered(
            router,
            RecordOutcome(
                account_id=account_id, payment_id=f"pay_{i}", attempt_id=f"att_{i}",
                outcome=OutcomeKind.succeeded, charge_id=f"ch_{i}",
            ),
        )  # fmt: skip
        assert captured.outcome.result in (Result.ok, Result.exists), captured.outcome
        assert captured.payment is not None
        assert captured.payment.status is PaymentStatus.succeeded
        acknowledged[f"pay_{i}"] = (account_id, amounts_minor[i])
        if len(acknowledged) in kill_now:
            kill_now[len(acknowledged)].set()

    recovery_s: list[float] = []

    async def kill_shards() -> None:
        for shard_id, threshold in enumerate(KILL_AFTER_ACKNOWLEDGED):
            await kill_now[threshold].wait()
            pid = await handles[shard_id].pid.remote()
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            # Recovered = the shard answers a command for one of its accounts again.
            probe_account = next(a for a in account_ids if shard_for(a, SHARDS) == shard_id)
            probe = OpenAccount(account_id=probe_account, currency="USD")
            reply = await _submit_until_answered(router, probe)
            assert reply.outcome.result is Result.exists
            recovery_s.append(time.monotonic() - killed_at)
            assert await handles[shard_id].pid.remote() != pid

    await asyncio.gather(kill_shards(), *(pay(i) for i in range(PAYMENTS)))

    store = await Store.connect(database_url)
    try:
        audit, rebuilt = await audit_journal(store, account_ids)
        lost = 0
        for payment_id, (account_id, _) in acknowledged.items():
            payment = rebuilt[account_id].payments.get(payment_id)
            if payment is None or payment.status is not PaymentStatus.succeeded:
                lost += 1
        # The independent recomputation: what was invoiced less what was paid, per account.
        paid_minor: dict[str, int] = dict.fromkeys(account_ids, 0)
        for account_id, amount_minor in acknowledged.values():
            paid_minor[account_id] += amount_minor
        balance_mismatches = 0
        for account_id in account_ids:
            state = rebuilt[account_id]
            expected_net_minor = 3 * 20_000 - paid_minor[account_id]
            if state.outstanding_minor - state.credit_minor != expected_net_minor:
                balance_mismatches += 1
            recovered = await store.load_account(account_id)
            if msgspec.msgpack.encode(recovered) != msgspec.msgpack.encode(state):
                balance_mismatches += 1
        live = await router.submit_many(
            [OpenAccount(account_id=a, currency="USD") for a in account_ids]
        )
        for account_id, reply in zip(account_ids, live, strict=True):
            assert reply.balance is not None
            if reply.balance.outstanding_minor != rebuilt[account_id].outstanding_minor:
                balance_mismatches += 1
    finally:
        await store.close()

    print(
        f"\npayments={PAYMENTS} acknowledged={len(acknowledged)} kills={len(recovery_s)} "
        f"lost={lost} double_applied={audit.double_applied} "
        f"journal_events={audit.events} version_gaps={audit.version_gaps} "
        f"balance_mismatches={balance_mismatches} "
        f"recovery_s={','.join(f'{s:.2f}' for s in recovery_s)} db={database_url.split(':')[0]}"
    )
    assert len(acknowledged) == PAYMENTS
    assert len(recovery_s) == len(KILL_AFTER_ACKNOWLEDGED)
    assert lost == 0
    assert audit.double_applied == 0
    assert audit.payments_created == PAYMENTS
    assert audit.captures == PAYMENTS
    assert audit.version_gaps == 0
    assert balance_mismatches == 0
