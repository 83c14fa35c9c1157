"""The read models and ledger rows say what the account state says: accounts driven
through the engine are committed, the projection is brought up to the journal, then
every table is read back and compared field by field with the live state, on SQLite
and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from payportal.engine import Allocation, OutcomeKind, PaymentStatus
from payportal.persistence import Store, tables

from .conftest import AccountDriver


async def _rows(store: Store, table: sa.Table, *where: Any) -> list[sa.Row[Any]]:
    """The table's rows once every shard's projection has caught up with its journal."""
    for shard_id in (0, 1):
        await store.project_pending(shard_id)
    async with store.engine.connect() as connection:
        return list(await connection.execute(sa.select(table).where(*where)))


async def test_account_row_has_the_outstanding_balance_credit_and_version(
    store: Store, new_account: type[AccountDriver]
) -> None:
    owing = new_account("acct_owing")
    owing.open()
    owing.invoice(10_000)
    owing.pay(4_000)
    in_credit = new_account("acct_credit")
    in_credit.open()
    in_credit.invoice(1_000)
    in_credit.pay(1_500)
    await store.commit(0, [owing.change(), in_credit.change()])

    rows = {r.account_id: r for r in await _rows(store, tables.accounts)}

    assert owing.state is not None
    assert in_credit.state is not None
    assert (rows["acct_owing"].outstanding_minor, rows["acct_owing"].credit_minor) == (6_000, 0)
    assert rows["acct_owing"].outstanding_minor == owing.state.outstanding_minor
    assert (rows["acct_credit"].outstanding_minor, rows["acct_credit"].credit_minor) == (0, 500)
    assert rows["acct_credit"].credit_minor == in_credit.state.credit_minor
    assert rows["acct_credit"].version == in_credit.state.version
    assert rows["acct_credit"].currency == "USD"


async def test_invoice_rows_follow_payments_across_commits(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    older = account.invoice(3_000, due_in_days=1)
    newer = account.invoice(5_000, due_in_days=9)
    await store.commit(0, [account.change()])
    account.pay(4_000)  # the older invoice first, the rest to the newer one
    await store.commit(0, [account.change()])

    rows = {r.invoice_id: r for r in await _rows(store, tables.invoices)}

    assert account.state is not None
    for invoice_id in (older, newer):
        invoice = account.state.invoices[invoice_id]
        row = rows[invoice_id]
        assert row.account_id == "acct_a"
        assert row.number == invoice.number
        assert row.amount_due_minor == invoice.amount_due_minor
        assert row.amount_paid_minor == invoice.amount_paid_minor
        assert row.status == invoice.status.value
        assert row.due_date == invoice.due_date
    assert (rows[older].status, rows[older].amount_paid_minor) == ("paid", 3_000)
    assert (rows[newer].status, rows[newer].amount_paid_minor) == ("open", 1_000)


async def test_payment_attempt_and_allocation_rows_match_the_state(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    first = account.invoice(3_000, due_in_days=1)
    second = account.invoice(5_000, due_in_days=9)
    paid = account.pay(6_000, allocations=(Allocation(invoice_id=second, amount_minor=5_000),))
    declined = account.pay(1_000, outcome=OutcomeKind.declined, decline_code="insufficient_funds")
    hard = account.pay(1_000, outcome=OutcomeKind.declined, decline_code="do_not_honor")
    await store.commit(0, [account.change()])

    payments = {r.payment_id: r for r in await _rows(store, tables.payments)}
    attempts = {r.payment_id: r for r in await _rows(store, tables.attempts)}
    allocations = {
        (r.payment_id, r.invoice_id): r.amount_minor for r in await _rows(store, tables.allocations)
    }

    assert account.state is not None
    for payment_id, payment in account.state.payments.items():
        row = payments[payment_id]
        assert row.status == payment.status.value
        assert row.amount_minor == payment.amount_minor
        assert row.amount_applied_minor == payment.amount_applied_minor
        assert row.amount_unapplied_minor == payment.amount_unapplied_minor
        assert row.next_retry_at_ms == payment.next_retry_at_ms
        assert row.finished_at_ms == payment.finished_at_ms
        assert row.payment_method_id == payment.payment_method.id
        assert row.idempotency_key == payment.idempotency_key
        attempt = payment.current_attempt
        assert attempts[payment_id].attempt_id == attempt.attempt_id
        assert attempts[payment_id].status == attempt.status.value
        assert attempts[payment_id].decline_code == attempt.decline_code
        assert attempts[payment_id].charge_id == attempt.charge_id
        assert attempts[payment_id].processor == "sandbox"
    assert payments[paid].status == PaymentStatus.succeeded.value
    assert payments[declined].status == PaymentStatus.retry_scheduled.value
    assert payments[declined].next_retry_at_ms is not None
    assert payments[hard].status == PaymentStatus.requires_payment_method.value
    assert attempts[hard].decline_class is not None
    # Explicit allocation first, the rest oldest due date first.
    assert allocations == {(paid, second): 5_000, (paid, first): 1_000}


async def test_ledger_rows_balance_and_name_the_event_that_posted_them(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = new_account("acct_a")
    account.open()
    account.invoice(2_000)
    account.pay(2_500)
    change = account.change()
    posted_lines = sum(len(e.lines) for e in change.entries)
    await store.commit(0, [change])

    rows = await _rows(store, tables.ledger_entries)
    journal = {v: e for _, v, e in await store.journal(account_id="acct_a")}

    assert len(rows) == posted_lines
    signed = [r.amount_minor if r.side == "debit" else -r.amount_minor for r in rows]
    assert sum(signed) == 0
    assert account.state is not None
    balances: dict[str, int] = {}
    for row, amount in zip(rows, signed, strict=True):
        balances[row.ledger_account] = balances.get(row.ledger_account, 0) + amount
    nonzero = {k: v for k, v in balances.items() if v}
    assert nonzero == {k.value: v for k, v in account.state.ledger.items() if v}
    tags = {type(journal[r.version]).__name__ for r in rows}
    assert tags == {"InvoiceIssued", "AttemptSucceeded"}


async def test_a_charge_id_is_captured_by_one_attempt_only(
    store: Store, new_account: type[AccountDriver]
) -> None:
    first = new_account("acct_a")
    first.open()
    first.pay(1_000, charge_id="ch_same")
    await store.commit(0, [first.change()])
    second = new_account("acct_b")
    second.open()
    second.pay(1_000, charge_id="ch_same")

    with pytest.raises(IntegrityError):
        await store.commit(1, [second.change()])

    assert await store.load_account("acct_b") is None
