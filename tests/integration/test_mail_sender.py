"""The outbox sender delivers each email exactly once as a receiver sees it — across a
sender that dies before sending or between sending and marking, SMTP 4xx replies and
refused connections — gives up on 5xx with the reason recorded, shares the outbox between
senders without sending a row twice, and never puts a card number in an email. Checked on
real SQLite and PostgreSQL databases against a real aiosmtpd server (the built-in catcher,
or handlers that answer 451/550), with the journal's own payment rows."""

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
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.engine import OutcomeKind
from payportal.mail import KIND_EMAIL, OutboxEmail, enqueue_email
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


def _sender(
    engine: AsyncEngine, port: int, clock: Clock, *, owner: str = "sender-a",
    cls: type[OutboxSender] = OutboxSender,
) -> OutboxSender:  # fmt: skip
    return cls(engine, smtp=SmtpTarget(hostname="127.0.0.1", port=port), policy=POLICY,
               owner=owner, base_url=BASE_URL, clock_ms=clock)  # fmt: skip


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
            await connection.execute(sa.insert(payers).values(id="payer_1", email=payer_email))
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
        async def _mark_sent(self, row: Any, note: str | None = None) -> None:
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


async def test_a_message_the_smtp_client_refuses_as_malformed_is_given_up_with_the_reason(
    store: Store, catcher: MailCatcher
) -> None:
    # Rows written before addresses were checked whole: aiosmtplib refuses a control
    # character in RCPT TO, and an address that parses to nothing, with a ValueError.
    addresses = {"nul": "payer\x00@example.com", "empty": "x@@example.com",
                 "good": "payer@example.com"}  # fmt: skip
    async with store.engine.begin() as connection:
        for key, to in addresses.items():
            payload = msgspec.msgpack.encode(
                OutboxEmail(to=(to,), subject="Receipt", text="Paid.", html="<p>Paid.</p>")
            )
            await connection.execute(sa.insert(tables.outbox).values(
                kind=KIND_EMAIL, dedupe_key=key, payload=payload, due_at_ms=0,
            ))  # fmt: skip
    clock = Clock()
    sender = _sender(store.engine, catcher.smtp_port, clock)

    assert await sender.run_once() == 3
    clock.advance(POLICY.lease_ms + POLICY.interval_ms_max * POLICY.attempts_max)
    assert await sender.run_once() == 0, "a given-up row is never claimed again"

    async with store.engine.connect() as connection:
        rows = {r.dedupe_key: r for r in await connection.execute(sa.select(tables.outbox))}
    for key in ("nul", "empty"):
        assert rows[key].sent_at is None, key
        assert rows[key].failed_at is not None, key
        assert rows[key].attempts == 1, key
        assert rows[key].last_error.startswith("malformed: "), rows[key].last_error
    # The next row in the same claim went out on the same connection.
    assert rows["good"].sent_at is not None
    assert [m.rcpt_tos for m in catcher.inbox.list()] == [["payer@example.com"]]


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
