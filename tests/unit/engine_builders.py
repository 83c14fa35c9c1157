"""Small builders for engine unit tests: an account driven command by command."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import msgspec

from payportal.engine import (
    AccountState,
    Allocation,
    CreatePayment,
    Decision,
    Entry,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
    Result,
    check_invariants,
    execute,
)
from payportal.engine.messages import Command

VISA = PaymentMethodRef(id="pm_visa", brand="visa")
MASTERCARD = PaymentMethodRef(id="pm_mc", brand="mastercard")


class Ledgerbook:
    """One account, a clock and a seeded random source; every step checks invariants."""

    def __init__(self, currency: str = "USD", seed: int = 0) -> None:
        self.account_id = "acct_test"
        self.now_ms = 1_700_000_000_000
        self.rng = random.Random(seed)
        self.state: AccountState | None = None
        self.entries: list[Entry] = []
        self._ids = itertools.count(1)
        self.run(OpenAccount(account_id=self.account_id, currency=currency))

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    @property
    def account(self) -> AccountState:
        assert self.state is not None
        return self.state

    def run(self, command: Command) -> Decision:
        before = msgspec.msgpack.encode(self.state)
        self.state, decision, entries = execute(self.state, command, self.now_ms, self.rng)
        if decision.outcome.result is not Result.ok:
            # Rejections and replays leave no trace.
            assert msgspec.msgpack.encode(self.state) == before
            assert not decision.events
        self.entries.extend(entries)
        if self.state is not None:
            check_invariants(self.state)
        return decision

    def invoice(
        self, amount_minor: int, due: str = "2026-01-31", number: str | None = None, **kw: object
    ) -> str:
        invoice_id = self.next_id("inv")
        decision = self.run(
            IssueInvoice(
                account_id=self.account_id,
                invoice_id=invoice_id,
                number=number or invoice_id,
                amount_minor=amount_minor,
                currency=self.account.currency,
                due_date=dt.date.fromisoformat(due),
                **kw,  # type: ignore[arg-type]
            )
        )
        assert decision.outcome.result is Result.ok, decision
        return invoice_id

    def create_payment(
        self,
        amount_minor: int,
        *,
        allocations: tuple[Allocation, ...] = (),
        method: PaymentMethodRef = VISA,
        key: str | None = None,
        **kw: object,
    ) -> Decision:
        return self.run(
            CreatePayment(
                account_id=self.account_id,
                payment_id=self.next_id("pay"),
                attempt_id=self.next_id("att"),
                idempotency_key=key or self.next_id("key"),
                amount_minor=amount_minor,
                currency=self.account.currency,
                payment_method=method,
                allocations=allocations,
                **kw,  # type: ignore[arg-type]
            )
        )

    def outcome(self, payment_id: str, outcome: OutcomeKind, **kw: object) -> Decision:
        attempt_id = self.account.payments[payment_id].current_attempt.attempt_id
        return self.run(
            RecordOutcome(
                account_id=self.account_id,
                payment_id=payment_id,
                attempt_id=attempt_id,
                outcome=outcome,
                **kw,  # type: ignore[arg-type]
            )
        )

    def pay(self, amount_minor: int, **kw: object) -> str:
        """A payment that succeeds at once; returns its id."""
        decision = self.create_payment(amount_minor, **kw)  # type: ignore[arg-type]
        assert decision.outcome.result is Result.ok, decision
        payment_id = decision.outcome.payment_id
        assert payment_id is not None
        succeeded = self.outcome(payment_id, OutcomeKind.succeeded, charge_id=f"ch_{payment_id}")
        assert succeeded.outcome.result is Result.ok, succeeded
        return payment_id
