"""Every command type through the router to a real shard on local Ray and into the
database, then the shard is killed and the recovered account must equal the one it had."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import uuid

import msgspec
import pytest

from payportal.actors import Reply, ShardRouter
from payportal.actors.cluster import ensure_shards
from payportal.engine import (
    AccountState,
    Allocation,
    CancelPayment,
    CreatePayment,
    DisputePayment,
    InvoiceStatus,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    PaymentStatus,
    RecordOutcome,
    RefundPayment,
    Rejection,
    ReplacePaymentMethod,
    Result,
    ServicePeriod,
    StartRetry,
    VoidInvoice,
    evolve,
)
from payportal.engine.messages import Command
from payportal.persistence import Store

pytestmark = [
    pytest.mark.ray,
    # tests.databases' scratch database, on both kinds (PostgreSQL not marked "postgres" here).
    pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True),
]

ACCOUNT = "acct_paths"
VISA = PaymentMethodRef(id="pm_visa", brand="visa")
MASTERCARD = PaymentMethodRef(id="pm_mc", brand="mastercard")


def _pay(n: int, amount_minor: int, **kw: object) -> CreatePayment:
    return CreatePayment(
        account_id=ACCOUNT, payment_id=f"pay_{n}", attempt_id=f"att_{n}",
        idempotency_key=f"key_{n}", amount_minor=amount_minor, currency="USD",
        payment_method=kw.pop("payment_method", VISA), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _outcome(
    n: int, outcome: OutcomeKind, attempt: str | None = None, **kw: object
) -> RecordOutcome:
    return RecordOutcome(
        account_id=ACCOUNT, payment_id=f"pay_{n}", attempt_id=attempt or f"att_{n}",
        outcome=outcome, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_every_command_path_is_durable_and_survives_a_killed_shard(
    local_ray: None, database_url: str
) -> None:
    handles = ensure_shards(1, database_url, deployment=uuid.uuid4().hex)
    router = ShardRouter(handles)
    shard = handles[0]
    clock_ms = await shard.advance_clock.remote(0)

    async def send(command: Command, expected: Result = Result.ok) -> Reply:
        reply = await router.submit(command)
        assert reply.outcome.result is expected, (command, reply.outcome)
        return reply

    await send(OpenAccount(account_id=ACCOUNT, currency="USD"))
    await send(OpenAccount(account_id=ACCOUNT, currency="USD"), Result.exists)
    for n, due in enumerate(("2026-01-01", "2026-02-01", "2026-03-01")):
        await send(
            IssueInvoice(
                account_id=ACCOUNT, invoice_id=f"inv_{n}", number=f"{n}", amount_minor=10_000,
                currency="USD", due_date=dt.date.fromisoformat(due),
                service_period=ServicePeriod(start=dt.date(2026, 1, 1), end=dt.date(2026, 1, 31))
                if n == 2 else None,
            )
        )  # fmt: skip
    voided = await send(VoidInvoice(account_id=ACCOUNT, invoice_id="inv_1"))
    assert voided.invoice is not None
    assert voided.invoice.status is InvoiceStatus.void

    # Success with an explicit allocation, then a partial refund and a dispute.
    await send(_pay(1, 12_000, allocations=(Allocation(invoice_id="inv_2", amount_minor=10_000),)))
    captured = await send(_outcome(1, OutcomeKind.succeeded, charge_id="ch_1"))
    assert captured.payment is not None
    assert captured.payment.allocations == (
        Allocation(invoice_id="inv_2", amount_minor=10_000),
        Allocation(invoice_id="inv_0", amount_minor=2_000),
    )
    await send(_outcome(1, OutcomeKind.succeeded, charge_id="ch_1"), Result.exists)
    refund = RefundPayment(
        account_id=ACCOUNT, payment_id="pay_1", refund_id="re_1", amount_minor=500
    )
    await send(refund)
    await send(refund, Result.exists)
    await send(DisputePayment(account_id=ACCOUNT, payment_id="pay_1"))

    # Soft decline, retry when due (the shard's clock is moved, not waited for), success.
    await send(_pay(2, 1_000))
    declined = await send(_outcome(2, OutcomeKind.declined, decline_code="insufficient_funds"))
    assert declined.payment is not None
    assert declined.payment.status is PaymentStatus.retry_scheduled
    assert declined.payment.next_retry_at_ms is not None
    early = await router.submit(
        StartRetry(account_id=ACCOUNT, payment_id="pay_2", attempt_id="att_2b")
    )
    assert early.outcome.rejection is Rejection.retry_must_be_due
    await shard.advance_clock.remote(declined.payment.next_retry_at_ms - clock_ms + 1)
    await send(StartRetry(account_id=ACCOUNT, payment_id="pay_2", attempt_id="att_2b"))
    await send(_outcome(2, OutcomeKind.succeeded, attempt="att_2b", charge_id="ch_2"))

    # Hard decline, another method, success; a technical error then an unknown outcome.
    await send(_pay(3, 700))
    await send(_outcome(3, OutcomeKind.declined, decline_code="do_not_honor"))
    await send(
        ReplacePaymentMethod(
            account_id=ACCOUNT, payment_id="pay_3", attempt_id="att_3b", payment_method=MASTERCARD
        )
    )
    await send(_outcome(3, OutcomeKind.succeeded, attempt="att_3b", charge_id="ch_3"))
    await send(_pay(4, 300))
    await send(_outcome(4, OutcomeKind.errored, decline_code="processing_error"))
    await send(_pay(5, 200))
    unknown = await send(_outcome(5, OutcomeKind.unknown))
    assert unknown.payment is not None
    assert unknown.payment.status is PaymentStatus.processing

    # Cancel after a soft decline.
    await send(_pay(6, 100))
    await send(_outcome(6, OutcomeKind.declined, decline_code="insufficient_funds"))
    canceled = await send(CancelPayment(account_id=ACCOUNT, payment_id="pay_6"))
    assert canceled.payment is not None
    assert canceled.payment.status is PaymentStatus.canceled

    live = await send(OpenAccount(account_id=ACCOUNT, currency="USD"), Result.exists)
    os.kill(await shard.pid.remote(), signal.SIGKILL)
    after = await send(OpenAccount(account_id=ACCOUNT, currency="USD"), Result.exists)
    assert after.balance == live.balance
    assert after.version == live.version

    store = await Store.connect(database_url)
    try:
        recovered = await store.load_account(ACCOUNT)
        journal = await store.journal(account_id=ACCOUNT)
    finally:
        await store.close()
    assert recovered is not None
    assert recovered.version == live.version == len(journal)
    rebuilt: AccountState | None = None
    for _, _, event in journal:
        rebuilt, _ = evolve(rebuilt, event)
    assert msgspec.msgpack.encode(rebuilt) == msgspec.msgpack.encode(recovered)
    statuses = {p.payment_id: p.status for p in recovered.payments.values()}
    assert statuses == {
        "pay_1": PaymentStatus.disputed,
        "pay_2": PaymentStatus.succeeded,
        "pay_3": PaymentStatus.succeeded,
        "pay_4": PaymentStatus.retry_scheduled,
        "pay_5": PaymentStatus.processing,
        "pay_6": PaymentStatus.canceled,
    }


async def test_a_front_door_follows_balances_another_one_changed_on_ray(
    local_ray: None, database_url: str
) -> None:
    handles = ensure_shards(2, database_url, deployment=uuid.uuid4().hex)
    mine, theirs = ShardRouter(handles), ShardRouter(handles)
    mine.follow_balances()
    try:
        await theirs.submit(OpenAccount(account_id=ACCOUNT, currency="USD"))
        await theirs.submit(IssueInvoice(
            account_id=ACCOUNT, invoice_id="inv_followed", number="F-1", amount_minor=4_200,
            currency="USD", due_date=dt.date(2026, 1, 1),
        ))  # fmt: skip

        async with asyncio.timeout(10):
            while (known := mine.balances.get(ACCOUNT)) is None or known[0] < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert known[1].outstanding_minor == 4_200
    finally:
        await mine.close()
        await theirs.close()
