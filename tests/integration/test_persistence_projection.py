"""The read models are a projection of the journal that always catches up, and the journal
alone arbitrates exactly-once: a writer process is killed between its journal commits
and its projection, then a fresh store catches up and every read model is compared with
the live state; journal rows that break an arbiter are written directly and refused."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from payportal.engine import OutcomeKind
from payportal.persistence import Store, tables

from .conftest import AccountDriver

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = 6
SHARD = 3

# Commits three rounds per account, the middle one with checkpoints (so a checkpoint is
# newer than anything projected), then dies without projecting: no close, no flush.
_CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    from tests.integration.test_persistence_projection import drive, step
    from payportal.persistence import Store

    async def main(url, shard_id):
        store = await Store.connect(url)
        accounts = drive()
        for round_ in range(3):
            changes = [step(account, round_) for account in accounts]
            await store.commit(shard_id, [c for c in changes if c is not None])
        print("committed", flush=True)
        os._exit(9)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def drive() -> list[AccountDriver]:
    return [AccountDriver(f"acct_{n}", seed=n) for n in range(ACCOUNTS)]


def step(account: AccountDriver, round_: int) -> Any:
    """Round 0 opens and invoices, round 1 pays (checkpointed), round 2 declines and
    pays again; deterministic, so the test rebuilds the writer's states itself."""
    if round_ == 0:
        account.open()
        account.invoice(5_000, due_in_days=1)
        account.invoice(3_000, due_in_days=5)
        return account.change()
    if round_ == 1:
        account.pay(6_000)
        return account.change(checkpoint=True)
    account.pay(1_000, outcome=OutcomeKind.declined, decline_code="insufficient_funds")
    account.invoice(2_000, due_in_days=9)
    account.pay(4_000)
    return account.change()


async def _rows(store: Store, table: sa.Table) -> list[sa.Row[Any]]:
    async with store.engine.connect() as connection:
        return list(await connection.execute(sa.select(table)))


async def _assert_read_models_match(store: Store, accounts: list[AccountDriver]) -> None:
    rows = {r.account_id: r for r in await _rows(store, tables.accounts)}
    invoices = {r.invoice_id: r for r in await _rows(store, tables.invoices)}
    payments = {r.payment_id: r for r in await _rows(store, tables.payments)}
    attempts = {r.attempt_id: r for r in await _rows(store, tables.attempts)}
    allocations = {
        (r.payment_id, r.invoice_id): r.amount_minor for r in await _rows(store, tables.allocations)
    }
    ledger = await _rows(store, tables.ledger_entries)
    assert set(rows) == {a.account_id for a in accounts}
    for account in accounts:
        state = account.state
        assert state is not None
        row = rows[account.account_id]
        assert (row.outstanding_minor, row.credit_minor) == (
            state.outstanding_minor, state.credit_minor,
        )  # fmt: skip
        assert row.version == state.version
        for invoice_id, invoice in state.invoices.items():
            assert invoices[invoice_id].amount_paid_minor == invoice.amount_paid_minor
            assert invoices[invoice_id].status == invoice.status.value
            assert invoices[invoice_id].version == state.version
        expected_allocations = {}
        for payment_id, payment in state.payments.items():
            assert payments[payment_id].status == payment.status.value
            assert payments[payment_id].amount_applied_minor == payment.amount_applied_minor
            assert payments[payment_id].next_retry_at_ms == payment.next_retry_at_ms
            for attempt in payment.attempts:
                assert attempts[attempt.attempt_id].status == attempt.status.value
                assert attempts[attempt.attempt_id].charge_id == attempt.charge_id
            for allocation in payment.allocations:
                expected_allocations[(payment_id, allocation.invoice_id)] = allocation.amount_minor
        assert {
            k: v for k, v in allocations.items() if k[0] in state.payments
        } == expected_allocations
        balances: dict[str, int] = {}
        for line in ledger:
            if line.account_id == account.account_id:
                signed = line.amount_minor if line.side == "debit" else -line.amount_minor
                balances[line.ledger_account] = balances.get(line.ledger_account, 0) + signed
        assert {k: v for k, v in balances.items() if v} == {
            k.value: v for k, v in state.ledger.items() if v
        }


async def test_a_crash_between_journal_commit_and_projection_is_caught_up(
    migrated_url: str,
) -> None:
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_WRITER, migrated_url, str(SHARD), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await writer.communicate()
    assert writer.returncode == 9, stderr.decode()
    assert stdout.strip() == b"committed"
    accounts = drive()
    for round_ in range(3):
        for account in accounts:
            step(account, round_)

    async with await Store.connect(migrated_url) as store:
        assert await _rows(store, tables.accounts) == []  # acknowledged, not yet projected
        through = await store.project_pending(SHARD)

        await _assert_read_models_match(store, accounts)
        journal = await store.journal(shard_id=SHARD)
        assert through > 0
        assert await store.projection_cursor(SHARD) == through
        assert len(journal) == sum(a.version_committed for a in accounts)
        lines = len(await _rows(store, tables.ledger_entries))

    # A second catch-up over the same journal (the cursor moved back, as if its write
    # were lost) changes nothing: every projected row is idempotent.
    async with await Store.connect(migrated_url) as store:
        async with store.engine.begin() as connection:
            await connection.execute(sa.update(tables.projection_cursors).values(journal_id=0))
        await store.project_pending(SHARD)
        await _assert_read_models_match(store, accounts)
        assert len(await _rows(store, tables.ledger_entries)) == lines


async def test_read_models_follow_commits_after_project_pending(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    account.invoice(3_000)
    await store.commit(0, [account.change()])
    assert await store.project_pending(0) > 0
    account.pay(1_000)
    await store.commit(0, [account.change()])
    assert store.projection_backlog(0) > 0

    await store.project_pending(0)

    assert store.projection_backlog(0) == 0
    await _assert_read_models_match(store, [account])


def _journal_row(account_id: str, version: int, event_type: str, **arbiters: Any) -> Any:
    return {
        "shard_id": 0, "account_id": account_id, "version": version, "event_type": event_type,
        "at_ms": 0, "payload": b"\x80", "payment_id": None, "idempotency_key": None,
        "processor": None, "charge_id": None, **arbiters,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            _journal_row("acct_a", 1, "payment_created", payment_id="p1", idempotency_key="k"),
            _journal_row("acct_a", 2, "payment_created", payment_id="p2", idempotency_key="k"),
            id="second-payment-with-one-key",
        ),
        pytest.param(
            _journal_row(
                "acct_a",
                1,
                "attempt_succeeded",
                payment_id="p1",
                processor="sandbox",
                charge_id="ch",
            ),
            _journal_row(
                "acct_b",
                1,
                "attempt_succeeded",
                payment_id="p2",
                processor="sandbox",
                charge_id="ch",
            ),
            id="second-capture-of-one-charge",
        ),
        pytest.param(
            _journal_row(
                "acct_a",
                1,
                "attempt_succeeded",
                payment_id="p1",
                processor="sandbox",
                charge_id="ch_1",
            ),
            _journal_row(
                "acct_a",
                2,
                "attempt_succeeded",
                payment_id="p1",
                processor="sandbox",
                charge_id="ch_2",
            ),
            id="second-success-of-one-payment",
        ),
    ],
)
async def test_the_journal_refuses_a_second_effect_even_written_directly(
    store: Store, first: dict[str, Any], second: dict[str, Any]
) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(sa.insert(tables.journal), [first])

    with pytest.raises(IntegrityError):
        async with store.engine.begin() as connection:
            await connection.execute(sa.insert(tables.journal), [second])


async def test_the_arbiters_guard_only_their_own_event_type(store: Store) -> None:
    rows = [
        _journal_row("acct_a", 1, "payment_created", payment_id="p1", idempotency_key="k"),
        _journal_row("acct_a", 2, "attempt_succeeded", payment_id="p1", processor="sandbox",
                     charge_id="ch"),
        # The same values on other event types are no second effect.
        _journal_row("acct_a", 3, "payment_refunded", payment_id="p1", idempotency_key="k",
                     processor="sandbox", charge_id="ch"),
        _journal_row("acct_a", 4, "attempt_declined", payment_id="p1", charge_id="ch"),
    ]  # fmt: skip
    async with store.engine.begin() as connection:
        await connection.execute(sa.insert(tables.journal), rows)

    assert len(await _rows(store, tables.journal)) == len(rows)
