"""Fixtures for the integration tests: a fresh database per test on SQLite and PostgreSQL
(``database_url`` from ``tests.databases``), and a driver that produces real account events
through the engine."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from payportal.engine import (
    AccountState,
    Allocation,
    CreatePayment,
    Decision,
    Entry,
    Event,
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
from payportal.persistence import AccountChange, Store, migrate
from tests.databases import database_url as database_url  # the fixture, for this directory
from tests.databases import scratch_database

VISA = PaymentMethodRef(id="pm_visa", brand="visa")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of a database with nothing in it (SQLite: its directory does not exist yet)."""
    async with scratch_database(
        request.param, tmp_path, request, sqlite_file="var/payportal.db"
    ) as url:
        yield url


@pytest.fixture
async def migrated_url(empty_database_url: str) -> str:
    await asyncio.to_thread(migrate, empty_database_url)
    return empty_database_url


@pytest.fixture
async def store(migrated_url: str) -> AsyncIterator[Store]:
    store = await Store.connect(migrated_url)
    try:
        yield store
    finally:
        await store.close()


class AccountDriver:
    """One account driven through the engine; ``change()`` hands over what happened since
    the last change, as a shard would."""

    def __init__(self, account_id: str, *, currency: str = "USD", seed: int = 0) -> None:
        self.account_id = account_id
        self.currency = currency
        self.now_ms = 1_700_000_000_000
        self.rng = random.Random(seed)
        self.state: AccountState | None = None
        self.version_committed = 0
        self.events: list[Event] = []
        self.entries: list[Entry] = []
        self._ids = itertools.count(1)

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{self.account_id}_{next(self._ids)}"

    def run(self, command: Command) -> Decision:
        self.state, decision, entries = execute(self.state, command, self.now_ms, self.rng)
        assert decision.outcome.result is Result.ok, decision.outcome
        assert self.state is not None
        check_invariants(self.state)
        self.events.extend(decision.events)
        self.entries.extend(entries)
        self.now_ms += 1_000
        return decision

    def open(self) -> None:
        self.run(OpenAccount(account_id=self.account_id, currency=self.currency))

    def invoice(self, amount_minor: int, *, due_in_days: int = 30) -> str:
        invoice_id = self.next_id("inv")
        self.run(
            IssueInvoice(
                account_id=self.account_id, invoice_id=invoice_id, number=invoice_id[-4:],
                amount_minor=amount_minor, currency=self.currency,
                due_date=dt.date(2026, 1, 1) + dt.timedelta(days=due_in_days),
            )
        )  # fmt: skip
        return invoice_id

    def pay(
        self,
        amount_minor: int,
        *,
        outcome: OutcomeKind = OutcomeKind.succeeded,
        decline_code: str | None = None,
        allocations: tuple[Allocation, ...] = (),
        charge_id: str | None = None,
    ) -> str:
        payment_id = self.next_id("pay")
        attempt_id = self.next_id("att")
        self.run(
            CreatePayment(
                account_id=self.account_id, payment_id=payment_id, attempt_id=attempt_id,
                idempotency_key=f"key-{payment_id}", amount_minor=amount_minor,
                currency=self.currency, payment_method=VISA, allocations=allocations,
            )
        )  # fmt: skip
        if outcome is OutcomeKind.succeeded and charge_id is None:
            charge_id = f"ch_{attempt_id}"
        self.run(
            RecordOutcome(
                account_id=self.account_id, payment_id=payment_id, attempt_id=attempt_id,
                outcome=outcome, charge_id=charge_id, decline_code=decline_code,
            )
        )  # fmt: skip
        return payment_id

    def change(self, *, checkpoint: bool = False) -> AccountChange:
        assert self.state is not None
        change = AccountChange(
            account_id=self.account_id, version_before=self.version_committed,
            events=self.events, entries=self.entries, state=self.state, checkpoint=checkpoint,
        )  # fmt: skip
        self.version_committed = self.state.version
        self.events, self.entries = [], []
        return change


@pytest.fixture
def new_account() -> type[AccountDriver]:
    return AccountDriver
