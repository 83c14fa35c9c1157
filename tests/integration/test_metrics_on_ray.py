"""Shard metrics through real Ray actors: after traffic through the router, the front
door's collector gathers every shard's batch sizes, commit times and finished payments
over ``metrics_snapshot`` and exposes them as parseable Prometheus families."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from payportal.actors import ShardRouter
from payportal.actors.cluster import ensure_shards
from payportal.engine import (
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
    Result,
)
from payportal.metrics._exposition import FrontDoorMetrics
from payportal.persistence import Store

pytestmark = [
    pytest.mark.ray,
    pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True),
]

SHARDS = 2
ACCOUNTS = 6
VISA = PaymentMethodRef(id="pm_visa", brand="visa")


async def test_shard_batch_and_commit_metrics_are_gathered_from_ray(
    local_ray: None, database_url: str
) -> None:
    handles = ensure_shards(SHARDS, database_url, deployment=uuid.uuid4().hex)
    router = ShardRouter(handles)
    store = await Store.connect(database_url)
    try:
        accounts = [f"acct_m{i}" for i in range(ACCOUNTS)]
        commands: list[object] = []

        async def send(batch: list[object]) -> None:
            commands.extend(batch)
            replies = await router.submit_many(batch)  # type: ignore[arg-type]
            assert all(r.outcome.result is Result.ok for r in replies), replies

        await send([OpenAccount(account_id=a, currency="USD") for a in accounts])
        await send([
            IssueInvoice(account_id=a, invoice_id=f"inv_{a}", number="1", amount_minor=5_000,
                         currency="USD", due_date=dt.date(2026, 1, 31))
            for a in accounts
        ])  # fmt: skip
        await send([
            CreatePayment(account_id=a, payment_id=f"pay_{a}", attempt_id=f"att_{a}",
                          idempotency_key=f"key_{a}", amount_minor=1_000, currency="USD",
                          payment_method=VISA)
            for a in accounts
        ])  # fmt: skip
        outcomes = [OutcomeKind.succeeded] * (ACCOUNTS - 2) + [OutcomeKind.declined] * 2
        await send([
            RecordOutcome(account_id=a, payment_id=f"pay_{a}", attempt_id=f"att_{a}",
                          outcome=o, charge_id=f"ch_{a}" if o is OutcomeKind.succeeded else None,
                          decline_code=None if o is OutcomeKind.succeeded else "do_not_honor")
            for a, o in zip(accounts, outcomes, strict=True)
        ])  # fmt: skip

        metrics = FrontDoorMetrics(router=router, engine=store.engine)
        await metrics.refresh()
        text = generate_latest(metrics.registry).decode()
    finally:
        await router.drain()
        await store.close()

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def total(name: str, **labels: str) -> float:
        return sum(v for ls, v in samples.get(name, []) if labels.items() <= ls.items())

    assert sorted(ls["shard"] for ls, v in samples["payportal_shard_up"] if v == 1) == ["0", "1"]
    # Every command was in exactly one batch: the histogram's sum is the command count.
    assert total("payportal_shard_batch_commands_sum") == len(commands)
    assert total("payportal_shard_batch_commands_count") >= 4
    assert total("payportal_shard_batch_commands_bucket", le="+Inf") == total(
        "payportal_shard_batch_commands_count"
    )
    assert total("payportal_journal_commit_seconds_count") >= 4
    assert total("payportal_journal_commit_seconds_sum") > 0
    assert total("payportal_payments_finished_total", status="succeeded") == ACCOUNTS - 2
    assert total("payportal_payments_finished_total", status="requires_payment_method") == 2
    assert total("payportal_payment_processing_seconds_count") == ACCOUNTS
    assert total("payportal_journal_events_total") > 0
    assert total("payportal_shard_accounts_in_memory") == ACCOUNTS
    assert {ls["shard"] for ls, _ in samples["payportal_shard_batch_commands_count"]} == {"0", "1"}
