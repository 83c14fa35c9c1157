"""The outbox sender delivers each email exactly once as a receiver sees it — across a
sender that dies before sending or between sending and marking, SMTP 4xx replies and
refused connections — gives up on 5xx and on messages the SMTP client refuses as malformed
with the reason recorded, shares the outbox between senders without sending a row twice,
and never puts a card number in an email. It works in batches: one read renders a batch,
one statement marks it sent, and one SMTP connection carries round after round until it
idles out (or the server drops it); on PostgreSQL a committed row wakes an idle sender
through NOTIFY (its safety net finds one written without), on SQLite a poll does.
Checked on real SQLite and PostgreSQL databases against a real aiosmtpd server (the
built-in catcher, which counts connections, or handlers that answer 451/550), with the
journal's own payment rows."""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.engine import OutcomeKind
from payportal.mail import OutboxEmail, encode_email, enqueue_email
from payportal.mail.catcher import MailCatcher, MailInbox, start_catcher
from payportal.mail.sender import (
    OutboxSender,
    SendPolicy,
    SmtpTarget,
    message_id_for,
    next_delay_ms,
    smtp_target,
)
from payportal.persistence import Store, tables
from payportal.persistence.directory import email_index
from payportal.persistence.tables_payers import (
    account_profiles,
    payer_accounts,
    payers,
    payment_methods,
)

from .conftest import AccountDriver

BASE_URL = "https://pay.example.test"
CARD_TOKEN = "tok_sandbox_secret_looking_value_0123456789"
# Every card number the sandbox knows, and the shape of any other: none may be in an email.
CARD_NUMBER = re.compile(r"(?<!\d)\d{12,19}(?!\d)")
# Quick and deterministic: no jitter, short intervals; the clock is the test's.
POLICY = SendPolicy(
    interval_ms_initial=1_000, backoff_coefficient=2, interval_ms_max=60_000, attempts_max=5,
    jitter_permille=0, lease_ms=30_000, smtp_timeout_s=5,
)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now_ms = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


class ScriptedHandler:
    """Answers DATA with ``replies`` in turn (e.g. 451 twice), then accepts into ``inbox``."""

    def __init__(self, inbox: MailInbox, replies: list[str]) -> None:
        self.inbox = inbox
        self.replies = list(replies)
        self.refused = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.replies:
            self.refused += 1
            return self.replies.pop(0)
        self.inbox.add(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        return "250 OK"


class RecordingHandler:
    """Accepts every message into ``inbox`` and keeps each delivery's headers."""

    def __init__(self, inbox: MailInbox) -> None:
        self.inbox = inbox
        self.deliveries: list[tuple[str, str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.deliveries.append((parsed["Message-ID"], parsed["Date"], parsed["Subject"]))
        self.inbox.add(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        return "250 OK"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store.connect(database_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def catcher() -> AsyncIterator[MailCatcher]:
    catcher = await start_catcher(smtp_port=0, ui_port=0)
    try:
        yield catcher
    finally:
        await catcher.close()


# Senders a test made; each keeps an SMTP connection open, closed after the test.
_senders: list[OutboxSender] = []


@pytest.fixture(autouse=True)
async def _close_senders() -> AsyncIterator[None]:
    yield
    while _senders:
        await _senders.pop().close()


def _sender(
    engine: AsyncEngine, port: int, clock: Clock | None, *, owner: str = "sender-a",
    cls: type[OutboxSender] = OutboxSender, policy: SendPolicy = POLICY,
) -> OutboxSender:  # fmt: skip
    sender = cls(engine, smtp=SmtpTarget(hostname="127.0.0.1", port=port), policy=policy,
                 owner=owner, base_url=BASE_URL, clock_ms=clock)  # fmt: skip
    _senders.append(sender)
    return sender


async def _contacts(engine: AsyncEngine, account_id: str, *, payer_email: str | None) -> None:
    async with engine.begin() as connection:
        await connection.execute(sa.insert(account_profiles).values(
            account_id=account_id, name="Ada Lovelace", email="billing@example.com",
            currency="USD",
        ))  # fmt: skip
        await connection.execute(sa.insert(payment_methods).values(
            id="pm_visa", account_id=account_id, token=CARD_TOKEN, type="card", brand="visa",
            last4="4242", exp_month=12, exp_year=2030,
        ))  # fmt: skip
        if payer_email is not None:
            await connection.execute(sa.insert(payers).values(
                id="payer_1", email=payer_email, email_index=email_index(engine, payer_email)))
            await connection.execute(
                sa.insert(payer_accounts).values(payer_id="payer_1", account_id=account_id)
            )


async def _paid_account(
    store: Store, new_account: type[AccountDriver], *, payer_email: str | None = None,
    outcome: OutcomeKind = OutcomeKind.succeeded, decline_code: str | None = None,
) -> tuple[AccountDriver, str]:  # fmt: skip
    account = new_account("acct_mail")
    account.open()
    account.invoice(10_000, due_in_days=1)
    account.invoice(5_000, due_in_days=2)
    payment_id = account.pay(12_000, outcome=outcome, decline_code=decline_code)
    await _contacts(store.engine, "acct_mail", payer_email=payer_email)
    await store.commit(0, [account.change()])
    await store.project_pending(0)
    return account, payment_id


async def _row(engine: AsyncEngine) -> Any:
    async with engine.connect() as connection:
        rows = (await connection.execute(sa.select(tables.outbox))).all()
    assert len(rows) == 1, rows
    return rows[0]


def _assert_no_card_data(raw: str) -> None:
    assert CARD_TOKEN not in raw
    # MIME boundaries and the Message-ID are random-looking by design; the rest is ours.
    ours = re.sub(r"=+\d+==|Message-ID: .*", "", raw)
    assert CARD_NUMBER.findall(ours) == [], "a card-number-like digit run is in the email"


async def test_a_succeeded_payment_is_emailed_once_with_allocation_balance_and_links(
    store: Store, new_account: type[AccountDriver], catcher: MailCatcher
) -> None:
    account, payment_id = await _paid_account(store, new_account, payer_email="ada@example.com")
    sender = _sender(store.engine, catcher.smtp_port, Clock())

    assert await sender.run_once() == 1
    assert await sender.run_once() == 0

    [message] = catcher.inbox.list()
    assert catcher.inbox.deliveries == 1
    assert message.message_id == message_id_for(f"payment_succeeded:{payment_id}")
    assert message.to == "billing@example.com"
    assert message.cc == "ada@example.com"
    assert sorted(message.rcpt_tos) == ["ada@example.com", "billing@example.com"]
    assert message.subject == "Payment received: 120.00 USD"
    assert account.state is not None
    older, newer = sorted(account.state.invoices.values(), key=lambda i: i.due_date)
    for body in (message.text, message.html):
        assert f"Invoice {older.number}" in body
        assert f"Invoice {newer.number}" in body
        assert "100.00 USD" in body
        assert "20.00 USD" in body
        assert "30.00 USD" in body  # the balance still owed
        assert f"{BASE_URL}/payments/{payment_id}" in body
        assert f"{BASE_URL}/statements" in body
        assert "Visa" in body
        assert "4242" in body
    _assert_no_card_data(message.raw)
    row = await _row(store.engine)
    assert row.sent_at is not None
    assert row.attempts == 1
    assert row.lease_owner is None


async def test_a_hard_decline_notice_says_why_and_asks_for_another_method(
    store: Store, new_account: type[AccountDriver], catcher: MailCatcher
) -> None:
    _, payment_id = await _paid_account(store, new_account, outcome=OutcomeKind.declined,
                                        decline_code="expired_card")  # fmt: skip
    sender = _sender(store.engine, catcher.smtp_port, Clock())

    assert await sender.run_once() == 1

    [message] = catcher.inbox.list()
    assert message.subject == "Payment of 120.00 USD declined: please use another payment method"
    for body in (message.text, message.html):
        assert "The card has expired." in body
        assert "another payment method" in body
        assert f"{BASE_URL}/methods" in body
        assert f"{BASE_URL}/payments/{payment_id}" in body
        assert "No money was taken" in body
        assert "150.00 USD" in body  # nothing was paid: the balance is unchanged
    _assert_no_card_data(message.raw)


async def test_a_sender_dying_between_send_and_mark_resends_the_same_message_once_more(
    store: Store, new_account: type[AccountDriver]
) -> None:
    class DiesAfterSending(OutboxSender):
        async def _record(self, results: Any) -> None:
            raise asyncio.CancelledError  # the process is killed here

    inbox = MailInbox()
    handler = RecordingHandler(inbox)
    catcher = await start_catcher(smtp_port=0, ui_port=None, inbox=inbox, handler=handler)
    try:
        _, payment_id = await _paid_account(store, new_account)
        clock = Clock()
        dying = _sender(store.engine, catcher.smtp_port, clock, cls=DiesAfterSending)
        with pytest.raises(asyncio.CancelledError):
            await dying.run_once()
        assert len(handler.deliveries) == 1
        survivor = _sender(store.engine, catcher.smtp_port, clock, owner="sender-b")

        assert await survivor.run_once() == 0, "the dead sender's lease still holds the row"
        clock.advance(POLICY.lease_ms)
        assert await survivor.run_once() == 1
        assert await survivor.run_once() == 0
    finally:
        await catcher.close()

    # At least once to the server (the resend happened), once in the mailbox: the resend
    # is the same message (Message-ID, Date, subject), and the receiver drops it.
    assert len(handler.deliveries) == 2
    assert handler.deliveries[0] == handler.deliveries[1]
    assert inbox.deliveries == 2
    [message] = inbox.list()
    assert message.message_id == message_id_for(f"payment_succeeded:{payment_id}")
    row = await _row(store.engine)
    assert row.sent_at is not None
    assert row.attempts == 2


async def test_a_row_whose_lease_would_run_out_mid_send_is_left_for_the_next_claim(
    store: Store, new_account: type[AccountDriver], catcher: MailCatcher
) -> None:
    await _paid_account(store, new_account)
    hurried = SendPolicy(lease_ms=1_000, smtp_timeout_s=5)
    sender = OutboxSender(store.engine, smtp=SmtpTarget(hostname="127.0.0.1",
                          port=catcher.smtp_port), policy=hurried, base_url=BASE_URL)  # fmt: skip

    assert await sender.run_once() == 1

    assert catcher.inbox.deliveries == 0
    row = await _row(store.engine)
    assert row.sent_at is None
    assert row.failed_at is None


async def test_a_sender_dying_before_sending_leaves_the_row_to_another_sender(
    store: Store, new_account: type[AccountDriver], catcher: MailCatcher
) -> None:
    class DiesBeforeSending(OutboxSender):
        async def _connect(self) -> Any:
            raise asyncio.CancelledError

    await _paid_account(store, new_account)
    clock = Clock()
    with pytest.raises(asyncio.CancelledError):
        await _sender(store.engine, catcher.smtp_port, clock, cls=DiesBeforeSending).run_once()
    assert catcher.inbox.deliveries == 0
    survivor = _sender(store.engine, catcher.smtp_port, clock, owner="sender-b")

    clock.advance(POLICY.lease_ms)
    assert await survivor.run_once() == 1

    assert catcher.inbox.deliveries == 1
    assert len(catcher.inbox.list()) == 1
    assert (await _row(store.engine)).sent_at is not None


async def test_smtp_451_replies_are_retried_with_backoff_until_one_delivery(
    store: Store, new_account: type[AccountDriver]
) -> None:
    inbox = MailInbox()
    handler = ScriptedHandler(inbox, ["451 4.3.0 Try again later"] * 3)
    catcher = await start_catcher(smtp_port=0, ui_port=None, inbox=inbox, handler=handler)
    try:
        await _paid_account(store, new_account)
        clock = Clock()
        sender = _sender(store.engine, catcher.smtp_port, clock)
        errors = []
        for attempt in range(1, 4):
            assert await sender.run_once() == 1
            row = await _row(store.engine)
            assert row.sent_at is None
            assert row.failed_at is None
            errors.append(row.last_error)
            expected_delay = next_delay_ms(POLICY, attempt, random.Random())
            assert row.due_at_ms == clock() + expected_delay
            assert await sender.run_once() == 0, "not due before its backoff"
            clock.advance(expected_delay or 0)
        assert await sender.run_once() == 1
    finally:
        await catcher.close()

    assert handler.refused == 3
    assert len(inbox.list()) == 1
    assert inbox.deliveries == 1
    assert errors == ["SMTP 451 4.3.0 Try again later"] * 3
    row = await _row(store.engine)
    assert row.sent_at is not None
    assert row.attempts == 4


async def test_a_refused_connection_is_retried_and_delivered_when_the_server_is_back(
    store: Store, new_account: type[AccountDriver]
) -> None:
    await _paid_account(store, new_account)
    # A port nobody listens on: bind one, note it, close it.
    probe = await start_catcher(smtp_port=0, ui_port=None)
    port = probe.smtp_port
    await probe.close()
    clock = Clock()

    assert await _sender(store.engine, port, clock).run_once() == 1
    row = await _row(store.engine)
    assert row.sent_at is None
    assert row.failed_at is None
    assert row.last_error

    catcher = await start_catcher(smtp_port=port, ui_port=None)
    try:
        clock.advance(POLICY.interval_ms_max)
        assert await _sender(store.engine, port, clock).run_once() == 1
        assert len(catcher.inbox.list()) == 1
    finally:
        await catcher.close()
    assert (await _row(store.engine)).sent_at is not None


async def test_a_550_reply_gives_up_at_once_and_records_why(
    store: Store, new_account: type[AccountDriver]
) -> None:
    inbox = MailInbox()
    handler = ScriptedHandler(inbox, ["550 5.1.1 Mailbox unavailable"] * 10)
    catcher = await start_catcher(smtp_port=0, ui_port=None, inbox=inbox, handler=handler)
    try:
        await _paid_account(store, new_account)
        clock = Clock()
        sender = _sender(store.engine, catcher.smtp_port, clock)
        assert await sender.run_once() == 1
        clock.advance(POLICY.interval_ms_max * 10)
        assert await sender.run_once() == 0, "a given-up row is never claimed again"
    finally:
        await catcher.close()

    assert handler.refused == 1
    assert inbox.list() == []
    row = await _row(store.engine)
    assert row.sent_at is None
    assert row.failed_at is not None
    assert row.last_error == "SMTP 550 5.1.1 Mailbox unavailable"
    assert row.attempts == 1


async def test_temporary_failures_give_up_after_the_policys_attempts(
    store: Store, new_account: type[AccountDriver]
) -> None:
    inbox = MailInbox()
    handler = ScriptedHandler(inbox, ["421 4.7.0 Too busy"] * 20)
    catcher = await start_catcher(smtp_port=0, ui_port=None, inbox=inbox, handler=handler)
    try:
        await _paid_account(store, new_account)
        clock = Clock()
        sender = _sender(store.engine, catcher.smtp_port, clock)
        for _ in range(POLICY.attempts_max):
            assert await sender.run_once() == 1
            clock.advance(POLICY.interval_ms_max)
        assert await sender.run_once() == 0
    finally:
        await catcher.close()

    assert handler.refused == POLICY.attempts_max
    row = await _row(store.engine)
    assert row.failed_at is not None
    assert row.last_error.startswith(f"gave up after {POLICY.attempts_max} attempts: SMTP 421")


async def test_nothing_is_sent_before_the_projection_writes_the_email(
    store: Store, new_account: type[AccountDriver], catcher: MailCatcher
) -> None:
    account = new_account("acct_mail")
    account.open()
    account.invoice(10_000)
    account.pay(4_000)
    await _contacts(store.engine, "acct_mail", payer_email=None)
    await store.commit(0, [account.change()])  # journaled, not yet projected
    sender = _sender(store.engine, catcher.smtp_port, Clock())

    assert await sender.run_once() == 0

    await store.project_pending(0)
    assert await sender.run_once() == 1
    assert len(catcher.inbox.list()) == 1


async def test_an_account_with_nobody_to_write_to_gives_up_with_the_reason(
    store: Store, new_account: type[AccountDriver], catcher: MailCatcher
) -> None:
    account = new_account("acct_nobody")
    account.open()
    account.invoice(1_000)
    account.pay(1_000)
    await store.commit(0, [account.change()])
    await store.project_pending(0)

    assert await _sender(store.engine, catcher.smtp_port, Clock()).run_once() == 1

    row = await _row(store.engine)
    assert row.failed_at is not None
    assert "no contact email and no payers" in row.last_error
    assert catcher.inbox.deliveries == 0


async def test_two_senders_share_the_outbox_and_send_every_row_once(
    store: Store, catcher: MailCatcher, database_url: str
) -> None:
    rows_total = 40
    async with store.engine.begin() as connection:
        for n in range(rows_total):
            await enqueue_email(
                connection, dedupe_key=f"bulk:{n}", to=f"payer{n}@example.com",
                template="payment_declined",
                context={"account_name": "A", "amount_minor": n + 1, "currency": "USD",
                         "method": None, "hard": False, "reason": "Soft.", "advice": "Wait.",
                         "payment_id": f"pay_{n}", "outstanding_minor": 0},
            )  # fmt: skip
    clock = Clock()
    second = await Store.connect(database_url)  # as a second process: its own pool
    try:
        senders = [
            _sender(store.engine, catcher.smtp_port, clock, owner="a"),
            _sender(second.engine, catcher.smtp_port, clock, owner="b"),
        ]
        claimed: list[int] = []
        while True:
            counts = await asyncio.gather(*(s.run_once() for s in senders))
            claimed.extend(counts)
            if not any(counts):
                break
    finally:
        await second.close()

    assert sum(claimed) == rows_total
    assert catcher.inbox.deliveries == rows_total, "no row was sent twice"
    assert sorted(m.to for m in catcher.inbox.list()) == sorted(
        f"payer{n}@example.com" for n in range(rows_total)
    )
    async with store.engine.connect() as connection:
        pending = (await connection.execute(
            sa.select(sa.func.count()).select_from(tables.outbox)
            .where(tables.outbox.c.sent_at.is_(None))
        )).scalar_one()  # fmt: skip
    assert pending == 0


async def test_the_inbox_lists_shows_and_serves_json_under_a_strict_policy(
    store: Store, catcher: MailCatcher
) -> None:
    async with store.engine.begin() as connection:
        await enqueue_email(
            connection, dedupe_key="xss", to="ada@example.com", template="payment_declined",
            context={"account_name": "<script>alert(1)</script>", "amount_minor": 1,
                     "currency": "USD", "method": None, "hard": True, "reason": "R.",
                     "advice": "", "payment_id": "pay_x", "outstanding_minor": 0},
        )  # fmt: skip
    await _sender(store.engine, catcher.smtp_port, Clock()).run_once()
    base = f"http://127.0.0.1:{catcher.ui_port}"

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/messages") as response:
            assert response.status == 200
            listed = await response.json()
        number = listed["messages"][0]["id"]
        pages: dict[str, tuple[int, dict[str, str], str]] = {}
        for path in ("/", f"/messages/{number}", f"/messages/{number}/html"):
            async with http.get(base + path) as response:
                pages[path] = (response.status, dict(response.headers), await response.text())
        async with http.get(f"{base}/messages/999") as response:
            missing = response.status
        async with http.delete(f"{base}/api/messages") as response:
            assert response.status == 204

    assert listed["deliveries"] == 1
    assert listed["messages"][0]["to"] == "ada@example.com"
    assert "&lt;script&gt;" in listed["messages"][0]["html"]
    for path, (status, headers, _) in pages.items():
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "script-src" not in csp, "no script is ever allowed"
        assert csp.startswith("default-src 'none'"), path
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in pages["/"][1]["Content-Security-Policy"]
    shown = pages[f"/messages/{number}"][2]
    assert '<iframe sandbox="allow-popups allow-popups-to-escape-sandbox"' in shown
    assert "<script>" not in shown
    email_csp = pages[f"/messages/{number}/html"][1]["Content-Security-Policy"]
    assert "sandbox" in email_csp
    assert "frame-ancestors 'self'" in email_csp
    assert missing == 404
    assert catcher.inbox.list() == []


def test_backoff_doubles_up_to_its_cap_and_ends_after_the_attempts() -> None:
    policy = SendPolicy(interval_ms_initial=1_000, backoff_coefficient=2, interval_ms_max=5_000,
                        attempts_max=5, jitter_permille=0)  # fmt: skip
    rng = random.Random(1)

    delays = [next_delay_ms(policy, attempt, rng) for attempt in range(1, 6)]

    assert delays == [1_000, 2_000, 4_000, 5_000, None]


def test_the_smtp_url_gives_the_target_and_its_repr_hides_the_password() -> None:
    target = smtp_target("smtps://mailer:p%40ss@smtp.example.com")
    catcher = smtp_target(None, catcher_port=2525)

    assert (target.hostname, target.port, target.use_tls) == ("smtp.example.com", 465, True)
    assert (target.username, target.password) == ("mailer", "p@ss")
    assert "p@ss" not in repr(target)
    assert (catcher.hostname, catcher.port, catcher.use_tls) == ("127.0.0.1", 2525, False)


# -- batches, the kept connection, malformed messages, waking -----------------------------


async def _paid_accounts(store: Store, new_account: type[AccountDriver], count: int) -> None:
    """``count`` accounts, each with a contact address, a payer and one succeeded payment."""
    changes = []
    async with store.engine.begin() as connection:
        for n in range(count):
            account = new_account(f"acct_batch_{n}")
            account.open()
            account.invoice(10_000)
            account.pay(1_000 * (n + 1))
            changes.append(account.change())
            await connection.execute(sa.insert(account_profiles).values(
                account_id=f"acct_batch_{n}", name=f"Customer {n}",
                email=f"billing{n}@example.com", currency="USD",
            ))  # fmt: skip
            email = f"payer{n}@example.com"
            await connection.execute(sa.insert(payers).values(
                id=f"payer_{n}", email=email, email_index=email_index(store.engine, email)))
            await connection.execute(sa.insert(payer_accounts).values(
                payer_id=f"payer_{n}", account_id=f"acct_batch_{n}"
            ))  # fmt: skip
    await store.commit(0, changes)
    await store.project_pending(0)


def _count_statements(engine: AsyncEngine) -> list[str]:
    """Every SQL statement ``engine`` runs from now on, whitespace-normalized."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    return seen


async def _pending_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(
            sa.select(tables.outbox).order_by(tables.outbox.c.id)
        )).all())  # fmt: skip


async def test_a_batch_is_rendered_with_one_read_and_marked_sent_in_one_statement(
    store: Store, new_account: type[AccountDriver], catcher: MailCatcher
) -> None:
    await _paid_accounts(store, new_account, 6)
    sender = _sender(store.engine, catcher.smtp_port, Clock())
    statements = _count_statements(store.engine)

    assert await sender.run_once() == 6

    contact_reads = [s for s in statements if "account_profiles" in s]
    outbox_updates = [s for s in statements if s.startswith("UPDATE outbox")]
    assert len(contact_reads) == 1, contact_reads
    assert len(outbox_updates) == 2, "one claim, one mark for the whole batch"
    received = {m.to: m for m in catcher.inbox.list()}
    assert sorted(received) == [f"billing{n}@example.com" for n in range(6)]
    for n in range(6):
        assert received[f"billing{n}@example.com"].cc == f"payer{n}@example.com"
        assert f"Hello Customer {n}" in received[f"billing{n}@example.com"].text
    rows = await _pending_rows(store.engine)
    assert all(r.sent_at is not None and r.lease_owner is None for r in rows)


async def test_one_smtp_connection_carries_every_round_until_it_idles_out(
    store: Store, catcher: MailCatcher
) -> None:
    policy = msgspec.structs.replace(POLICY, smtp_idle_s=0.3, poll_interval_ms=50)
    sender = _sender(store.engine, catcher.smtp_port, None, policy=policy)

    async def enqueue(first: int, count: int) -> None:
        async with store.engine.begin() as connection:
            for n in range(first, first + count):
                await enqueue_email(connection, dedupe_key=f"kept:{n}",
                                    to=f"payer{n}@example.com", template="payment_declined",
                                    context=_DECLINE_CONTEXT)  # fmt: skip

    await enqueue(0, 3)
    assert await sender.run_once() == 3
    await enqueue(3, 2)
    assert await sender.run_once() == 2
    assert catcher.inbox.deliveries == 5
    assert catcher.inbox.connections == 1, "the second round reused the first's connection"

    running = asyncio.create_task(sender.run())
    try:
        await _until(lambda: catcher.open_sessions == 0, "the idle connection was not closed")
        await enqueue(5, 1)
        sender.wake()
        await _until(lambda: catcher.inbox.deliveries == 6, "the sixth email was not sent")
    finally:
        sender.stop()
        await asyncio.wait_for(running, 30)
    assert catcher.inbox.connections == 2, "reopened on demand after closing when idle"
    assert sender.connections_opened == 2


async def test_a_kept_connection_the_server_dropped_is_replaced_without_a_failed_attempt(
    store: Store, catcher: MailCatcher
) -> None:
    sender = _sender(store.engine, catcher.smtp_port, None)
    async with store.engine.begin() as connection:
        await enqueue_email(connection, dedupe_key="drop:1", to="a@example.com",
                            template="payment_declined", context=_DECLINE_CONTEXT)  # fmt: skip
    assert await sender.run_once() == 1
    catcher.drop_sessions()  # the server ends the idle connection; the sender is not told
    await _until(lambda: catcher.open_sessions == 0, "the catcher kept the connection")
    async with store.engine.begin() as connection:
        await enqueue_email(connection, dedupe_key="drop:2", to="b@example.com",
                            template="payment_declined", context=_DECLINE_CONTEXT)  # fmt: skip

    assert await sender.run_once() == 1

    assert catcher.inbox.deliveries == 2
    assert catcher.inbox.connections == 2
    second = (await _pending_rows(store.engine))[1]
    assert second.sent_at is not None
    assert second.attempts == 1
    assert second.last_error is None


async def test_messages_the_smtp_client_refuses_as_malformed_are_given_up_and_the_rest_sent(
    store: Store, catcher: MailCatcher
) -> None:
    def row(key: str, to: str, cc: tuple[str, ...] = ()) -> dict[str, Any]:
        payload = encode_email(store.engine, OutboxEmail(
            to=(to,), cc=cc, subject="Hello", text="Hi.", html="<p>Hi.</p>"
        ))  # fmt: skip
        return {"kind": "email", "dedupe_key": key, "payload": payload, "due_at_ms": 0}

    async with store.engine.begin() as connection:
        await connection.execute(sa.insert(tables.outbox), [
            row("good:1", "ada@example.com"),
            # Whitespace inside an address: it cannot go on an SMTP command line.
            row("bad:address", "ada lovelace@example.com"),
            # A line break in a header would start a header of its own.
            row("bad:header", "bob@example.com", cc=("eve@example.com\nBcc: all@example.com",)),
            # A control character inside a quoted local part: the SMTP client refuses the
            # command, after its transaction began.
            row("bad:command", "dan@example.com", cc=('"dan\x01"@example.com',)),
            # Non-ASCII, and the catcher does not offer SMTPUTF8.
            row("bad:utf8", "zoë@example.com"),
            row("good:2", "carol@example.com"),
        ])  # fmt: skip
    clock = Clock()
    sender = _sender(store.engine, catcher.smtp_port, clock)

    assert await sender.run_once() == 6
    clock.advance(POLICY.interval_ms_max * 10)
    assert await sender.run_once() == 0, "a given-up row is never claimed again"

    assert sorted(m.to for m in catcher.inbox.list()) == ["ada@example.com", "carol@example.com"]
    assert catcher.inbox.connections == 1, "the connection outlived the refused messages"
    rows = {r.dedupe_key: r for r in await _pending_rows(store.engine)}
    for key in ("bad:address", "bad:header", "bad:command", "bad:utf8"):
        assert rows[key].failed_at is not None, key
        assert rows[key].sent_at is None, key
        assert rows[key].attempts == 1, key
    # The reason is kept, the address is not: the outbox keeps addresses sealed only.
    assert "cannot be put on an SMTP command line" in rows["bad:address"].last_error
    assert not any("@" in (r.last_error or "") for r in rows.values())
    assert "line break" in rows["bad:header"].last_error
    assert "refused by the SMTP client" in rows["bad:command"].last_error
    assert "control character" in rows["bad:command"].last_error
    assert "SMTPUTF8" in rows["bad:utf8"].last_error
    assert rows["good:1"].sent_at is not None
    assert rows["good:2"].sent_at is not None


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_on_postgresql_a_committed_row_wakes_the_idle_sender_without_its_timers(
    store: Store, new_account: type[AccountDriver], catcher: MailCatcher, database_url: str
) -> None:
    # Timers an hour long: only a notification can deliver within the test's wait.
    policy = msgspec.structs.replace(POLICY, poll_interval_ms=3_600_000,
                                     safety_interval_ms=3_600_000)  # fmt: skip
    sender = _sender(store.engine, catcher.smtp_port, None, policy=policy)
    running = asyncio.create_task(sender.run())
    try:
        await _until(lambda: sender.listens_opened == 1, "the sender did not LISTEN")
        await asyncio.sleep(0.2)  # its first round found nothing; it is idle now
        # The projection's insert notifies.
        await _paid_account(store, new_account, payer_email="ada@example.com")
        await _until(lambda: catcher.inbox.deliveries == 1, "the projection's row waited")
        # So does enqueue_email.
        async with store.engine.begin() as connection:
            await enqueue_email(connection, dedupe_key="notify:1", to="bob@example.com",
                                template="payment_declined", context=_DECLINE_CONTEXT)  # fmt: skip
        await _until(lambda: catcher.inbox.deliveries == 2, "enqueue_email's row waited")

        # The LISTEN connection dies: the sender opens another and hears the next row.
        killer = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await killer.fetchval("SELECT pg_terminate_backend($1)", sender.listener_pid)
        finally:
            await killer.close()
        await _until(lambda: sender.listens_opened == 2, "the LISTEN was not reopened")
        await asyncio.sleep(0.2)
        async with store.engine.begin() as connection:
            await enqueue_email(connection, dedupe_key="notify:2", to="carol@example.com",
                                template="payment_declined", context=_DECLINE_CONTEXT)  # fmt: skip
        await _until(lambda: catcher.inbox.deliveries == 3, "no wake-up after reconnecting")
    finally:
        sender.stop()
        await asyncio.wait_for(running, 30)
    assert sorted(m.to for m in catcher.inbox.list()) == [
        "billing@example.com", "bob@example.com", "carol@example.com"
    ]


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_on_postgresql_a_row_written_without_a_notification_is_found_by_the_safety_net(
    store: Store, catcher: MailCatcher
) -> None:
    policy = msgspec.structs.replace(POLICY, poll_interval_ms=3_600_000, safety_interval_ms=200)
    sender = _sender(store.engine, catcher.smtp_port, None, policy=policy)
    running = asyncio.create_task(sender.run())
    try:
        await _until(lambda: sender.listens_opened == 1, "the sender did not LISTEN")
        payload = encode_email(store.engine, OutboxEmail(
            to=("ada@example.com",), subject="Hello", text="Hi.", html="<p>Hi.</p>"
        ))  # fmt: skip
        async with store.engine.begin() as connection:  # a plain insert: no NOTIFY
            await connection.execute(sa.insert(tables.outbox).values(
                kind="email", dedupe_key="quiet:1", payload=payload, due_at_ms=0
            ))  # fmt: skip
        await _until(lambda: catcher.inbox.deliveries == 1, "the safety net missed the row")
    finally:
        sender.stop()
        await asyncio.wait_for(running, 30)
    assert sender.listens_opened == 1, "its probes ran over the LISTEN connection, alive"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_on_sqlite_an_idle_sender_finds_a_new_row_by_polling(
    store: Store, catcher: MailCatcher
) -> None:
    policy = msgspec.structs.replace(POLICY, poll_interval_ms=100, safety_interval_ms=3_600_000)
    sender = _sender(store.engine, catcher.smtp_port, None, policy=policy)
    statements = _count_statements(store.engine)
    running = asyncio.create_task(sender.run())
    try:
        await asyncio.sleep(0.5)  # idle: a few polls
        claims_idle = [s for s in statements if s.startswith("UPDATE outbox")]
        assert len(claims_idle) == 1, "only the first round claims; idle polls only read"
        async with store.engine.begin() as connection:
            await enqueue_email(connection, dedupe_key="poll:1", to="ada@example.com",
                                template="payment_declined", context=_DECLINE_CONTEXT)  # fmt: skip
        await _until(lambda: catcher.inbox.deliveries == 1, "the polled row was not sent")
    finally:
        sender.stop()
        await asyncio.wait_for(running, 30)


_DECLINE_CONTEXT: dict[str, Any] = {
    "account_name": "A", "amount_minor": 100, "currency": "USD", "method": None,
    "hard": False, "reason": "Soft.", "advice": "Wait.", "payment_id": "pay_x",
    "outstanding_minor": 0,
}  # fmt: skip
# Generous: these wait for the event loop and a database, never for a timer to run out.
WAIT_S = 30.0


async def _until(condition: Any, failure: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.02)
