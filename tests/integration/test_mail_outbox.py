"""Payment emails enter the outbox with the projection of their committed event — one
confirmation per succeeded payment, one notice per terminal decline, none for a soft
decline that will be retried, nothing when the commit is refused, exactly one when a
crash leaves the catch-up to replay the journal — and ``enqueue_email`` writes in its
caller's transaction once per dedupe key; checked by committing engine-driven accounts to
real SQLite and PostgreSQL databases, projecting, and reading the outbox back."""

from __future__ import annotations

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from payportal.engine import (
    OutcomeKind,
    PaymentStatus,
    RecordOutcome,
    RetriesExhausted,
    StartRetry,
    evolve,
)
from payportal.mail import decode_email, enqueue_email
from payportal.mail.payments import PaymentNotice
from payportal.persistence import Store, tables

from .conftest import AccountDriver


async def _outbox(store: Store, *, project: bool = True) -> list[sa.Row[tuple[str, str, bytes]]]:
    if project:
        await store.project_pending(0)
    o = tables.outbox.c
    async with store.engine.connect() as connection:
        result = await connection.execute(sa.select(o.kind, o.dedupe_key, o.payload).order_by(o.id))
        return list(result.all())


def _notice(payload: bytes) -> PaymentNotice:
    return msgspec.msgpack.decode(payload, type=PaymentNotice)


def _account_with_invoices(new_account: type[AccountDriver], account_id: str) -> AccountDriver:
    account = new_account(account_id)
    account.open()
    account.invoice(10_000, due_in_days=1)
    account.invoice(5_000, due_in_days=2)
    return account


async def test_a_succeeded_payment_commits_one_confirmation_with_allocation_and_balance(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _account_with_invoices(new_account, "acct_ok")
    payment_id = account.pay(12_000)

    await store.commit(0, [account.change()])

    rows = await _outbox(store)
    assert [(r.kind, r.dedupe_key) for r in rows] == [
        ("payment_succeeded", f"payment_succeeded:{payment_id}")
    ]
    notice = _notice(rows[0].payload)
    assert notice.payment_id == payment_id
    assert notice.account_id == "acct_ok"
    assert notice.amount_minor == 12_000
    assert notice.currency == "USD"
    # Oldest invoice first: 10,000 to the first, 2,000 to the second; 3,000 still owed.
    assert account.state is not None
    older, newer = sorted(account.state.invoices.values(), key=lambda i: i.due_date)
    assert notice.allocations == [
        (older.invoice_id, older.number, 10_000), (newer.invoice_id, newer.number, 2_000),
    ]  # fmt: skip
    assert sum(amount for _, _, amount in notice.allocations) == 12_000
    assert notice.unapplied_minor == 0
    assert notice.outstanding_minor == 3_000
    assert notice.credit_minor == 0
    assert notice.version == account.state.version


async def test_a_hard_decline_commits_one_notice_and_a_soft_one_none(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _account_with_invoices(new_account, "acct_dec")
    hard = account.pay(1_000, outcome=OutcomeKind.declined, decline_code="do_not_honor")
    account.pay(1_000, outcome=OutcomeKind.declined, decline_code="insufficient_funds")
    assert account.state is not None
    statuses = sorted(p.status for p in account.state.payments.values())
    assert statuses == [PaymentStatus.requires_payment_method, PaymentStatus.retry_scheduled]

    await store.commit(0, [account.change()])

    rows = await _outbox(store)
    assert [r.kind for r in rows] == ["payment_declined"]
    assert rows[0].dedupe_key.startswith(f"payment_declined:{hard}:")
    notice = _notice(rows[0].payload)
    assert notice.payment_id == hard
    assert notice.status == "requires_payment_method"
    assert notice.decline_code == "do_not_honor"
    assert notice.decline_class == "hard"
    assert notice.outstanding_minor == 15_000


async def test_a_soft_decline_retried_to_success_commits_only_the_confirmation(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _account_with_invoices(new_account, "acct_retry")
    payment_id = account.pay(2_500, outcome=OutcomeKind.declined,
                             decline_code="insufficient_funds")  # fmt: skip
    await store.commit(0, [account.change()])
    assert await _outbox(store) == []

    assert account.state is not None
    payment = account.state.payments[payment_id]
    assert payment.next_retry_at_ms is not None
    account.now_ms = payment.next_retry_at_ms
    retry_attempt = account.next_id("att")
    account.run(StartRetry(account_id="acct_retry", payment_id=payment_id,
                           attempt_id=retry_attempt))  # fmt: skip
    account.run(
        RecordOutcome(account_id="acct_retry", payment_id=payment_id, attempt_id=retry_attempt,
                      outcome=OutcomeKind.succeeded, charge_id="ch_retry")
    )  # fmt: skip
    await store.commit(0, [account.change()])

    rows = await _outbox(store)
    assert [(r.kind, r.dedupe_key) for r in rows] == [
        ("payment_succeeded", f"payment_succeeded:{payment_id}")
    ]
    assert _notice(rows[0].payload).allocations[0][2] == 2_500


async def test_soft_declines_until_the_retries_run_out_commit_one_notice_at_the_end(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _account_with_invoices(new_account, "acct_spent")
    payment_id = account.pay(700, outcome=OutcomeKind.declined, decline_code="insufficient_funds")
    assert account.state is not None
    rounds = 0
    while account.state.payments[payment_id].status is PaymentStatus.retry_scheduled:
        rounds += 1
        assert rounds < 20, "the one-off retry policy must end"
        next_retry_at_ms = account.state.payments[payment_id].next_retry_at_ms
        assert next_retry_at_ms is not None
        account.now_ms = next_retry_at_ms
        attempt_id = account.next_id("att")
        account.run(StartRetry(account_id="acct_spent", payment_id=payment_id,
                               attempt_id=attempt_id))  # fmt: skip
        account.run(
            RecordOutcome(account_id="acct_spent", payment_id=payment_id, attempt_id=attempt_id,
                          outcome=OutcomeKind.declined, decline_code="insufficient_funds")
        )  # fmt: skip
        await store.commit(0, [account.change()])
        if account.state.payments[payment_id].status is PaymentStatus.retry_scheduled:
            assert await _outbox(store) == [], f"no notice for the soft decline of round {rounds}"
    assert account.state.payments[payment_id].status is PaymentStatus.failed

    rows = await _outbox(store)
    assert [r.kind for r in rows] == ["payment_declined"]
    notice = _notice(rows[0].payload)
    assert notice.status == "failed"
    assert notice.decline_class == "soft"
    assert notice.decline_code == "insufficient_funds"


async def test_retries_exhausted_by_the_networks_caps_commits_a_notice(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _account_with_invoices(new_account, "acct_caps")
    payment_id = account.pay(900, outcome=OutcomeKind.declined, decline_code="insufficient_funds")
    await store.commit(0, [account.change()])
    # The event the retry timer records when the caps push the retry past the window.
    event = RetriesExhausted(at_ms=account.now_ms, payment_id=payment_id)
    account.state, _ = evolve(account.state, event)
    account.events.append(event)

    await store.commit(0, [account.change()])

    rows = await _outbox(store)
    assert [r.kind for r in rows] == ["payment_declined"]
    notice = _notice(rows[0].payload)
    assert notice.exhausted is True
    assert notice.status == "failed"
    assert notice.decline_code == "insufficient_funds"


async def test_a_refused_group_commit_leaves_no_outbox_row(
    store: Store, new_account: type[AccountDriver]
) -> None:
    stale = _account_with_invoices(new_account, "acct_stale")
    first = stale.change()
    await store.commit(0, [first])
    fresh = _account_with_invoices(new_account, "acct_fresh")
    fresh.pay(3_000)

    # The batch holds a succeeded payment and a change that was committed already: the
    # journal refuses the whole batch, so the payment's email must not exist either.
    with pytest.raises(IntegrityError):
        await store.commit(0, [fresh.change(), first])

    assert await _outbox(store) == []
    assert await store.journal(account_id="acct_fresh") == []


async def test_the_email_row_is_written_with_the_projection_not_before(
    store: Store, new_account: type[AccountDriver]
) -> None:
    account = _account_with_invoices(new_account, "acct_proj")
    account.pay(1_500)
    await store.commit(0, [account.change()])

    before = await _outbox(store, project=False)
    after = await _outbox(store)

    assert before == []
    assert [r.kind for r in after] == ["payment_succeeded"]
    async with store.engine.connect() as connection:
        projected = (await connection.execute(
            sa.select(tables.accounts.c.version)
            .where(tables.accounts.c.account_id == "acct_proj")
        )).scalar_one()  # fmt: skip
    assert projected >= _notice(after[0].payload).version


async def test_a_crash_before_the_projection_leaves_the_email_to_the_catch_up_once(
    store: Store, new_account: type[AccountDriver], migrated_url: str
) -> None:
    account = _account_with_invoices(new_account, "acct_crash")
    succeeded = account.pay(6_000)
    declined = account.pay(500, outcome=OutcomeKind.declined, decline_code="do_not_honor")
    await store.commit(0, [account.change()])
    # The process dies with the projection still in memory; a new one starts.
    restarted = await Store.connect(migrated_url)
    try:
        caught_up = await _outbox(restarted)
    finally:
        await restarted.close()

    # The dead process's projection, had it survived to write, changes nothing.
    again = await _outbox(store)

    assert [(r.kind, r.dedupe_key.split(":")[1]) for r in caught_up] == [
        ("payment_succeeded", succeeded), ("payment_declined", declined),
    ]  # fmt: skip
    assert [r.dedupe_key for r in again] == [r.dedupe_key for r in caught_up]
    notice = _notice(caught_up[0].payload)
    assert notice.amount_minor == 6_000
    assert sum(amount for _, _, amount in notice.allocations) == 6_000


async def test_enqueue_email_writes_once_per_key_and_only_if_the_caller_commits(
    store: Store,
) -> None:
    context = {
        "account_name": "Ada", "amount_minor": 1_000, "currency": "USD", "method": None,
        "hard": True, "reason": "The card has expired.", "advice": "", "payment_id": "pay_x",
        "outstanding_minor": 1_000, "description": None,
    }  # fmt: skip
    async with store.engine.begin() as connection:
        first = await enqueue_email(connection, dedupe_key="notice:1", to="ada@example.com",
                                    template="payment_declined", context=context)  # fmt: skip
        second = await enqueue_email(connection, dedupe_key="notice:1", to="ada@example.com",
                                     template="payment_declined", context=context)  # fmt: skip

    async def enqueue_then_fail() -> None:
        async with store.engine.begin() as connection:
            await enqueue_email(connection, dedupe_key="notice:2", to="ada@example.com",
                                template="payment_declined", context=context)  # fmt: skip
            raise RuntimeError("caller failed")

    with pytest.raises(RuntimeError, match="caller failed"):
        await enqueue_then_fail()

    assert (first, second) == (True, False)
    rows = await _outbox(store)
    assert [(r.kind, r.dedupe_key) for r in rows] == [("email", "notice:1")]
    stored = decode_email(store.engine, rows[0].payload)
    assert stored.to == ("ada@example.com",)
    assert "expired" in stored.text
    assert "/methods" in stored.html
