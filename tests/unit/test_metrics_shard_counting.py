"""What a shard counts for /metrics, driven through ``AccountShardCore`` with an in-memory
store and a clock the test moves: a payment is counted when it first finishes, with its
exact processing time; retries are counted; a replay of the same command counts nothing;
histogram buckets are inclusive upper bounds."""

from __future__ import annotations

import datetime as dt
from typing import Any

from payportal.actors import AccountShardCore
from payportal.actors.protocol import BATCH_ENCODER, REPLIES_DECODER
from payportal.engine import (
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
)
from payportal.engine.messages import ReplacePaymentMethod, StartRetry
from payportal.metrics._shard import Buckets

CARD = PaymentMethodRef(id="pm_1", brand="visa")
OTHER_CARD = PaymentMethodRef(id="pm_2", brand="visa")
ACCOUNT = "acct_m"


class MemoryStore:
    async def load_account(self, account_id: str) -> Any:
        return None

    async def commit(self, shard_id: int, changes: list[Any]) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now_ms


async def _send(core: AccountShardCore, *commands: Any) -> list[Any]:
    return list(REPLIES_DECODER.decode(await core.apply(BATCH_ENCODER.encode(list(commands)))))


def _pay(n: int) -> CreatePayment:
    return CreatePayment(account_id=ACCOUNT, payment_id=f"pay_{n}", attempt_id=f"att_{n}",
                         idempotency_key=f"key_{n}", amount_minor=1_000, currency="USD",
                         payment_method=CARD)  # fmt: skip


def _outcome(n: int, outcome: OutcomeKind, attempt: str | None = None, **kw: Any
             ) -> RecordOutcome:  # fmt: skip
    return RecordOutcome(account_id=ACCOUNT, payment_id=f"pay_{n}",
                         attempt_id=attempt or f"att_{n}", outcome=outcome, **kw)  # fmt: skip


async def test_payments_are_counted_once_when_they_finish_with_their_processing_time() -> None:
    clock = Clock()
    core = AccountShardCore(0, MemoryStore(), clock_ms=clock)
    await _send(core, OpenAccount(account_id=ACCOUNT, currency="USD"),
                IssueInvoice(account_id=ACCOUNT, invoice_id="inv_1", number="1",
                             amount_minor=100_000, currency="USD",
                             due_date=dt.date(2026, 1, 31)))  # fmt: skip

    # Paid after 1.5 s.
    await _send(core, _pay(1))
    clock.now_ms += 1_500
    await _send(core, _outcome(1, OutcomeKind.succeeded, charge_id="ch_1"))
    # The same outcome again (a duplicate callback) changes and counts nothing.
    await _send(core, _outcome(1, OutcomeKind.succeeded, charge_id="ch_1"))

    # Soft decline: not finished; retried when due (counted), then paid.
    created_2 = clock.now_ms
    await _send(core, _pay(2))
    [declined] = await _send(core, _outcome(2, OutcomeKind.declined,
                                            decline_code="insufficient_funds"))  # fmt: skip
    assert declined.payment.next_retry_at_ms is not None
    clock.now_ms = declined.payment.next_retry_at_ms + 1
    await _send(core, StartRetry(account_id=ACCOUNT, payment_id="pay_2", attempt_id="att_2b"))
    await _send(core, _outcome(2, OutcomeKind.succeeded, attempt="att_2b", charge_id="ch_2"))
    retry_ms = clock.now_ms - created_2

    # Hard decline finishes processing; a new card starts a new measurement that finishes too.
    await _send(core, _pay(3))
    clock.now_ms += 200
    await _send(core, _outcome(3, OutcomeKind.declined, decline_code="do_not_honor"))
    replace = ReplacePaymentMethod(account_id=ACCOUNT, payment_id="pay_3", attempt_id="att_3b",
                                   payment_method=OTHER_CARD)  # fmt: skip
    await _send(core, replace)
    [again] = await _send(core, _outcome(3, OutcomeKind.succeeded, attempt="att_3b",
                                         charge_id="ch_3"))  # fmt: skip

    snapshot = core.metrics_snapshot()
    assert snapshot["payments_finished"] == {"succeeded": 3, "requires_payment_method": 1}
    assert snapshot["retries"] == 1
    processing = snapshot["processing_seconds"]
    assert sum(processing["counts"]) == 4
    expected_s = 1.5 + retry_ms / 1000 + 0.2 + again.payment.processing_ms / 1000
    assert abs(processing["sum"] - expected_s) < 1e-9
    batches = snapshot["batch_commands"]
    assert sum(batches["counts"]) == snapshot["batches"] == 12
    assert batches["sum"] == snapshot["commands"] == 13
    assert sum(snapshot["commit_seconds"]["counts"]) >= 1
    assert snapshot["accounts_in_memory"] == 1


def test_buckets_are_inclusive_upper_bounds_with_an_overflow() -> None:
    buckets = Buckets((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 2.5):
        buckets.observe(value)
    assert buckets.counts == [2, 2, 1]
    assert buckets.total == 7.5
