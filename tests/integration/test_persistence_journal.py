"""A group commit is durable, all-or-nothing and replayable: accounts driven through the
real engine are committed, then loaded back (from the journal, and from a checkpoint plus
newer events) and compared with the live state, on SQLite and PostgreSQL."""

from __future__ import annotations

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from payportal.engine import (
    AccountOpened,
    AccountState,
    CreditApplied,
    InvoiceIssued,
    OutcomeKind,
)
from payportal.persistence import AccountChange, Store, tables

from .conftest import AccountDriver

COUNTED = (
    tables.journal, tables.ledger_entries, tables.accounts, tables.invoices, tables.payments,
    tables.attempts, tables.allocations, tables.account_checkpoints,
)  # fmt: skip


async def _row_counts(store: Store) -> dict[str, int]:
    async with store.engine.connect() as connection:
        return {
            table.name: (
                await connection.execute(sa.select(sa.func.count()).select_from(table))
            ).scalar_one()
            for table in COUNTED
        }


def _busy_account(new_account: type[AccountDriver], account_id: str) -> AccountDriver:
    account = new_account(account_id)
    account.open()
    account.invoice(10_000, due_in_days=1)
    account.invoice(5_000, due_in_days=2)
    account.pay(12_000)
    account.pay(1_000, outcome=OutcomeKind.declined, decline_code="insufficient_funds")
    return account


async def test_committed_account_loads_equal_to_the_live_state(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _busy_account(new_account, "acct_a")
    await store.commit(0, [account.change()])

    loaded = await store.load_account("acct_a")

    assert loaded == account.state
    assert loaded is not None
    assert loaded.version == 7


async def test_an_unknown_account_loads_as_none(store: Store) -> None:
    assert await store.load_account("acct_never") is None


async def test_several_commits_replay_in_version_order(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    await store.commit(0, [account.change()])
    account.invoice(3_000)
    await store.commit(0, [account.change()])
    account.pay(1_000)
    account.pay(5_000)
    await store.commit(0, [account.change()])

    assert await store.load_account("acct_a") == account.state


async def test_checkpoint_plus_newer_events_replays_to_the_same_state(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _busy_account(new_account, "acct_a")
    await store.commit(0, [account.change(checkpoint=True)])
    checkpoint_version = account.version_committed
    account.invoice(2_000)
    account.pay(2_500)
    await store.commit(0, [account.change()])

    assert await store.load_account("acct_a") == account.state
    # Prove the checkpoint was used: without the journal before it, the load still works.
    async with store.engine.begin() as connection:
        await connection.execute(
            sa.delete(tables.journal).where(tables.journal.c.version <= checkpoint_version)
        )
    assert await store.load_account("acct_a") == account.state


async def test_checkpoint_only_change_writes_the_state_and_no_journal_rows(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _busy_account(new_account, "acct_a")
    await store.commit(0, [account.change()])
    before = await _row_counts(store)

    await store.commit(0, [account.change(checkpoint=True)])

    after = await _row_counts(store)
    assert after["journal"] == before["journal"]
    assert after["account_checkpoints"] == before["account_checkpoints"] + 1
    assert await store.load_account("acct_a") == account.state


async def test_recommit_of_the_same_change_is_refused_and_leaves_nothing(
    store: Store, new_account: type[AccountDriver]
) -> None:
    first = _busy_account(new_account, "acct_a")
    change = first.change(checkpoint=True)
    await store.commit(0, [change])
    before = await _row_counts(store)
    # A batch with a new account and the already-committed change, as a retried batch
    # after a lost reply would be: nothing of it may stay.
    second = _busy_account(new_account, "acct_b")

    with pytest.raises(IntegrityError):
        await store.commit(0, [second.change(checkpoint=True), change])

    assert await _row_counts(store) == before
    assert await store.load_account("acct_b") is None
    assert await store.load_account("acct_a") == first.state


async def test_a_stale_writer_cannot_append_a_version_already_taken(
    store: Store, new_account: type[AccountDriver]
) -> None:
    live = new_account("acct_a")
    live.open()
    await store.commit(0, [live.change()])
    live.invoice(1_000)
    await store.commit(0, [live.change()])
    # A zombie shard that missed the invoice decides something else at the same version.
    zombie = new_account("acct_a")
    zombie.open()
    zombie.change()
    zombie.invoice(9_999)

    with pytest.raises(IntegrityError):
        await store.commit(1, [zombie.change()])

    assert await store.load_account("acct_a") == live.state


async def test_checkpoint_never_moves_back_to_an_older_version(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    account.invoice(1_000)
    await store.commit(0, [account.change(checkpoint=True)])
    stale = msgspec.msgpack.decode(msgspec.msgpack.encode(account.state), type=AccountState)
    account.pay(400)
    await store.commit(0, [account.change(checkpoint=True)])
    # A late checkpoint-only write of the older state, as a delayed flush would send.
    stale_change = AccountChange(
        account_id="acct_a", version_before=stale.version, events=[], entries=[], state=stale,
        checkpoint=True,
    )  # fmt: skip

    await store.commit(0, [stale_change])
    await store.project_pending(0)

    async with store.engine.connect() as connection:
        version = (
            await connection.execute(sa.select(tables.account_checkpoints.c.version))
        ).scalar_one()
        read_model_version = (
            await connection.execute(sa.select(tables.accounts.c.version))
        ).scalar_one()
    assert version == account.state.version
    assert read_model_version == account.state.version
    assert await store.load_account("acct_a") == account.state


async def test_journal_lists_events_by_account_and_by_shard(
    store: Store, new_account: type[AccountDriver]
) -> None:
    a = new_account("acct_a")
    a.open()
    a.invoice(1_000)
    b = new_account("acct_b")
    b.open()
    await store.commit(3, [a.change(), b.change()])
    c = new_account("acct_c")
    c.open()
    await store.commit(4, [c.change()])

    by_account = await store.journal(account_id="acct_a")
    assert [(account_id, version) for account_id, version, _ in by_account] == [
        ("acct_a", 1), ("acct_a", 2),
    ]  # fmt: skip
    assert isinstance(by_account[0][2], AccountOpened)
    assert isinstance(by_account[1][2], InvoiceIssued)
    by_shard = await store.journal(shard_id=3)
    assert [(account_id, version) for account_id, version, _ in by_shard] == [
        ("acct_a", 1), ("acct_a", 2), ("acct_b", 1),
    ]  # fmt: skip
    assert len(await store.journal()) == 4
    assert await store.journal(account_id="acct_c", shard_id=3) == []


async def test_an_overpayment_then_new_invoice_replays_credit_application(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    account.pay(7_000)  # no invoice yet: all of it becomes credit
    account.invoice(5_000)  # credit is applied at once
    change = account.change()
    assert any(isinstance(e, CreditApplied) for e in change.events)

    await store.commit(0, [change])

    loaded = await store.load_account("acct_a")
    assert loaded == account.state
    assert loaded is not None
    assert loaded.credit_minor == 2_000
