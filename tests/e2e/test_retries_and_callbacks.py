"""Retries, inquiries and processor callbacks end to end: in-process shards on a real Store
(SQLite, and PostgreSQL when reachable), the sandbox processor on an aiohttp test server,
the janitor driven by an injected clock, and callbacks signed, mutated and replayed."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from payportal.actors import AccountShardCore, ShardRouter
from payportal.actors.janitor import RetryJanitor
from payportal.engine import (
    AttemptStatus,
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    Payment,
    PaymentMethodRef,
    PaymentStatus,
    RecordOutcome,
    Result,
)
from payportal.engine.retry_policy import DAY_MS, HOUR_MS, MINUTE_MS
from payportal.http.callbacks import callback_routes
from payportal.http.gateway import RecentOutcomes
from payportal.persistence import Store, tables
from payportal.persistence.tables_janitor import attempt_inquiries
from payportal.processors import ChargeResult, InquiryStatus
from payportal.processors.sandbox import SANDBOX, Faults, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # test-only
OLD_SECRET = "whsec_" + "dGhlLW9sZC1zZWNyZXQtYmVmb3JlLXJvdGF0aW9u"  # test-only
WRONG_SECRET = "whsec_" + "bm90LXRoZS1wcm9jZXNzb3Itc2VjcmV0LWF0LWFsbA=="  # test-only
CALLBACK_PATH = "/v1/processors/sandbox/callbacks"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the shards' clock starts here
SHARDS = 2
SUCCEEDS = "4242424242424242"
SOFT_DECLINE = "4000000000009995"
CAPTURED_THEN_TIMES_OUT = "4000000000003063"

# tests.databases' scratch database, on both kinds (PostgreSQL not marked "postgres" here).
pytestmark = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", id="postgresql")], indirect=True
)


class Clock:
    """The shards' and the janitor's time: moved by the test, never by sleeping."""

    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms

    def advance_to(self, at_ms: int) -> None:
        assert at_ms >= self.now_ms
        self.now_ms = at_ms


class DirectHandle:
    """Stands in for a Ray actor handle: ``handle.apply.remote(batch)`` awaits the core."""

    def __init__(self, core: AccountShardCore) -> None:
        self.core = core
        self.apply = self

    def remote(self, batch: bytes) -> Any:
        return self.core.apply(batch)


class Portal:
    """Shards, router and store over one database; rebuilt from it by ``restart``."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self.tokens: dict[str, str] = {}

    async def start(self) -> Portal:
        self.store = await Store.connect(self.url)
        self.cores = [AccountShardCore(i, self.store, clock_ms=self.clock) for i in range(SHARDS)]
        self.router = ShardRouter([DirectHandle(c) for c in self.cores], batch_max_wait_ms=1)
        return self

    async def stop(self) -> None:
        await self.router.drain()
        await self.store.close()

    async def settle(self) -> None:
        """Bring the read models up to the journal (the projection's forced catch-up)."""
        await self.router.drain()
        for shard_id in range(SHARDS):
            await self.store.project_pending(shard_id)

    async def token_for(self, payment_method_id: str) -> str | None:
        return self.tokens.get(payment_method_id)

    def janitor(self, processor: Any, **options: Any) -> RetryJanitor:
        return RetryJanitor(
            self.router, self.store, processor, clock_ms=self.clock,
            token_for=self.token_for, **options,
        )  # fmt: skip

    def payment(self, account_id: str, payment_id: str) -> Payment:
        for core in self.cores:
            state = core.account(account_id)
            if state is not None:
                return state.payments[payment_id]
        raise AssertionError(f"{account_id} is in no shard's memory")

    async def rows(self, table: sa.Table) -> list[Any]:
        async with self.store.engine.connect() as connection:
            return list(await connection.execute(sa.select(table)))


_ids = itertools.count()


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


async def open_account(portal: Portal) -> str:
    account_id = _id("acct")
    reply = await portal.router.submit(OpenAccount(account_id=account_id, currency="USD"))
    assert reply.outcome.result is Result.ok
    reply = await portal.router.submit(
        IssueInvoice(account_id=account_id, invoice_id=_id("inv"), number="0001",
                     amount_minor=5_000, currency="USD", due_date=dt.date(2026, 1, 31))
    )  # fmt: skip
    assert reply.outcome.result is Result.ok
    return account_id


async def create_payment(portal: Portal, account_id: str, token: str) -> tuple[str, str]:
    """A payment journaled as ``processing`` (no charge yet): (payment id, attempt id)."""
    payment_id, attempt_id, method_id = _id("pay"), _id("att"), _id("pm")
    portal.tokens[method_id] = token
    reply = await portal.router.submit(
        CreatePayment(account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                      idempotency_key=_id("key"), amount_minor=5_000, currency="USD",
                      payment_method=PaymentMethodRef(id=method_id, brand="visa"))
    )  # fmt: skip
    assert reply.outcome.result is Result.ok, reply.outcome
    return payment_id, attempt_id


async def pay(
    portal: Portal, processor: SandboxProcessor, account_id: str, token: str
) -> tuple[str, str]:
    """Create a payment and charge it inline, as the payments route does."""
    payment_id, attempt_id = await create_payment(portal, account_id, token)
    result = await processor.charge(token, 5_000, "USD", idempotency_key=attempt_id)
    await record(portal, account_id, payment_id, attempt_id, result)
    return payment_id, attempt_id


async def record(
    portal: Portal, account_id: str, payment_id: str, attempt_id: str, result: ChargeResult
) -> None:
    reply = await portal.router.submit(
        RecordOutcome(account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                      outcome=result.outcome, charge_id=result.charge_id,
                      decline_code=result.decline_code, visa_category=result.visa_category,
                      advice_code=result.advice_code, amount_minor=result.amount_minor,
                      currency=result.currency.upper() if result.currency else None)
    )  # fmt: skip
    assert reply.outcome.result is not Result.rejected, reply.outcome


def funds_arrive(sandbox: web.Application, token: str) -> None:
    """The payer's bank now approves the card that declined for insufficient funds.

    The sandbox keys a card's behaviour by its number, and the contract's 9995 card
    always declines; the issuer's change of mind is modelled by pointing the token at an
    approving number (the token, the payment method and the attempt ids are unchanged)."""
    sandbox[SANDBOX].cards[token].number = SUCCEEDS


def charges_by_key(sandbox: web.Application) -> dict[str, list[Any]]:
    by_key: dict[str, list[Any]] = {}
    for charge in sandbox[SANDBOX].charges.values():
        by_key.setdefault(charge.idempotency_key, []).append(charge)
    return by_key


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def portal(database_url: str, clock: Clock) -> AsyncIterator[Portal]:
    portal = await Portal(database_url, clock).start()
    yield portal
    await portal.stop()


class Wiring(msgspec.Struct, kw_only=True):
    sandbox: Any  # web.Application
    processor: Any  # SandboxProcessor
    receiver: Any  # TestClient on the portal's callback route
    sandbox_url: Any  # yarl.URL


async def _wire(
    portal: Portal, *, callbacks: bool, faults: Faults | None = None, processor_timeout_ms: int
) -> AsyncIterator[Wiring]:
    receiver_app = web.Application()
    receiver_app.add_routes(
        callback_routes(store=portal.store, router=portal.router,
                        secrets={"sandbox": [SECRET, OLD_SECRET]})
    )  # fmt: skip
    receiver = TestClient(TestServer(receiver_app))
    await receiver.start_server()
    sandbox = create_sandbox_app(
        callback_url=str(receiver.make_url(CALLBACK_PATH)) if callbacks else None,
        webhook_secret=SECRET, faults=faults,
        callback_retry_delays_ms=(50, 100, 200, 400, 800),
    )  # fmt: skip
    sandbox_server = TestServer(sandbox)
    await sandbox_server.start_server()
    processor = SandboxProcessor(str(sandbox_server.make_url("/")), timeout_ms=processor_timeout_ms)
    try:
        yield Wiring(sandbox=sandbox, processor=processor, receiver=receiver,
                     sandbox_url=sandbox_server.make_url("/"))
    finally:
        await processor.close()
        await sandbox_server.close()
        await receiver.close()


@pytest.fixture
async def wired(portal: Portal) -> AsyncIterator[Wiring]:
    """The sandbox without callbacks: only the janitor and the inline charge decide."""
    async for wiring in _wire(
        portal, callbacks=False, faults=Faults(capture_timeout_delay_ms=2_000),
        processor_timeout_ms=500,
    ):  # fmt: skip
        yield wiring


@pytest.fixture
async def wired_with_callbacks(portal: Portal) -> AsyncIterator[Wiring]:
    async for wiring in _wire(portal, callbacks=True, processor_timeout_ms=5_000):
        yield wiring


async def callback_rows(portal: Portal, count: int) -> list[Any]:
    """The received-events log once it holds ``count`` rows: the receiver writes it in
    batches after answering, so a test waits for the batch (and then sees no more)."""
    async with asyncio.timeout(5):
        # Polled: the log is written by the receiver, which offers no event to wait on.
        while len(await portal.rows(tables.processor_callbacks)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # longer than a batch's wait: a stray extra row would show
    return list(await portal.rows(tables.processor_callbacks))


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for something the sandbox does on its own (a callback delivery), in real time."""
    async with asyncio.timeout(timeout_s):
        # Polled: the state belongs to the shards, which offer no event to wait on.
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


# -- retries --------------------------------------------------------------------------------


async def test_soft_decline_is_scheduled_then_retried_with_a_new_attempt_and_succeeds(
    portal: Portal, wired: Wiring, clock: Clock
) -> None:
    account_id = await open_account(portal)
    token = await wired.processor.tokenize_test_card(SOFT_DECLINE)
    payment_id, first_attempt = await pay(portal, wired.processor, account_id, token)
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.retry_scheduled
    assert payment.current_attempt.decline_code == "insufficient_funds"
    assert payment.next_retry_at_ms is not None
    retry_at_ms = payment.next_retry_at_ms
    janitor = portal.janitor(wired.processor)

    await portal.settle()
    clock.advance_to(retry_at_ms - 1)
    report = await janitor.run_once()
    assert report.retries_due == 0  # not due yet: nothing charged

    funds_arrive(wired.sandbox, token)
    clock.advance_to(retry_at_ms)
    report = await janitor.run_once()

    assert report.retries_started == 1
    assert report.outcomes_recorded == 1
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.succeeded
    assert [a.status for a in payment.attempts] == [AttemptStatus.declined, AttemptStatus.succeeded]
    second_attempt = payment.attempts[1].attempt_id
    assert second_attempt != first_attempt
    assert second_attempt.startswith("att_")
    by_key = charges_by_key(wired.sandbox)
    assert sorted(by_key) == sorted([first_attempt, second_attempt])
    assert [c.status for c in by_key[second_attempt]] == ["succeeded"]

    await portal.settle()
    clock.advance_to(retry_at_ms + DAY_MS)
    report = await janitor.run_once()
    assert report.retries_due == 0  # succeeded: never charged again
    assert len(wired.sandbox[SANDBOX].charges) == 2


async def test_technical_error_is_resent_under_the_same_attempt_id(
    portal: Portal, wired: Wiring, clock: Clock
) -> None:
    account_id = await open_account(portal)
    token = await wired.processor.tokenize_test_card(SUCCEEDS)
    wired.sandbox[SANDBOX].faults = Faults(error_rate_5xx=1.0)  # a processor outage
    payment_id, attempt_id = await pay(portal, wired.processor, account_id, token)
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.retry_scheduled
    assert payment.current_attempt.status is AttemptStatus.errored
    assert payment.next_retry_at_ms is not None
    assert wired.sandbox[SANDBOX].charges == {}  # nothing captured

    wired.sandbox[SANDBOX].faults = Faults()  # the outage ends
    await portal.settle()
    clock.advance_to(payment.next_retry_at_ms)
    report = await portal.janitor(wired.processor).run_once()

    assert report.retries_started == 1
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.succeeded
    assert [a.attempt_id for a in payment.attempts] == [attempt_id]  # the same attempt
    assert payment.current_attempt.sends == 2
    assert list(charges_by_key(wired.sandbox)) == [attempt_id]
    assert len(charges_by_key(wired.sandbox)[attempt_id]) == 1


async def test_captured_charge_whose_response_timed_out_succeeds_by_inquiry_with_one_charge(
    portal: Portal, wired: Wiring, clock: Clock
) -> None:
    account_id = await open_account(portal)
    token = await wired.processor.tokenize_test_card(CAPTURED_THEN_TIMES_OUT)
    payment_id, attempt_id = await pay(portal, wired.processor, account_id, token)
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.processing
    assert payment.current_attempt.status is AttemptStatus.unknown
    janitor = portal.janitor(wired.processor)

    await portal.settle()
    report = await janitor.run_once()  # first sighting: the schedule starts
    assert report.inquiries_made == 0
    [row] = await portal.rows(attempt_inquiries)
    assert (row.attempt_id, row.next_inquiry_at_ms) == (attempt_id, START_MS + MINUTE_MS)

    clock.advance_to(START_MS + MINUTE_MS - 1)
    assert (await janitor.run_once()).inquiries_made == 0
    clock.advance_to(START_MS + MINUTE_MS)
    report = await janitor.run_once()

    assert report.inquiries_made == 1
    assert report.charges_sent == 0  # an inquiry never charges
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.succeeded
    assert payment.current_attempt.status is AttemptStatus.succeeded
    assert len(wired.sandbox[SANDBOX].charges) == 1
    assert payment.current_attempt.charge_id == next(iter(wired.sandbox[SANDBOX].charges))
    assert await portal.rows(attempt_inquiries) == []  # resolved: the schedule is gone


class UndecidedProcessor:
    """Answers every inquiry "still processing" and counts the calls; never charges."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.inquired_at_ms: list[int] = []

    async def charge(self, *args: Any, **kwargs: Any) -> ChargeResult:
        raise AssertionError("an unknown outcome is never answered with a charge")

    async def inquire(self, idempotency_key: str) -> ChargeResult:
        self.inquired_at_ms.append(self.clock())
        return ChargeResult(outcome=OutcomeKind.unknown, inquiry=InquiryStatus.processing)


async def test_inquiries_follow_the_schedule_1_min_5_min_1_h_then_daily(
    portal: Portal, clock: Clock
) -> None:
    account_id = await open_account(portal)
    payment_id, attempt_id = await create_payment(portal, account_id, "tok_unused")
    unknown = ChargeResult(outcome=OutcomeKind.unknown)
    await record(portal, account_id, payment_id, attempt_id, unknown)
    await portal.settle()
    processor = UndecidedProcessor(clock)
    # Two janitors on the same schedule: each slot is asked about once.
    janitors = [portal.janitor(processor), portal.janitor(processor)]
    await janitors[0].run_once()

    expected = [START_MS + MINUTE_MS]
    for delay_ms in (5 * MINUTE_MS, HOUR_MS, DAY_MS, DAY_MS):
        expected.append(expected[-1] + delay_ms)
    for at_ms in expected:
        clock.advance_to(at_ms - 1)
        await asyncio.gather(*(j.run_once() for j in janitors))
        clock.advance_to(at_ms)
        await asyncio.gather(*(j.run_once() for j in janitors))

    assert processor.inquired_at_ms == expected
    assert portal.payment(account_id, payment_id).status is PaymentStatus.processing


async def test_two_janitors_at_once_charge_each_attempt_exactly_once(
    portal: Portal, wired: Wiring, clock: Clock
) -> None:
    soft, errored = [], []
    for _ in range(4):
        account_id = await open_account(portal)
        token = await wired.processor.tokenize_test_card(SOFT_DECLINE)
        soft.append((account_id, *await pay(portal, wired.processor, account_id, token), token))
    wired.sandbox[SANDBOX].faults = Faults(error_rate_5xx=1.0)
    for _ in range(3):
        account_id = await open_account(portal)
        token = await wired.processor.tokenize_test_card(SUCCEEDS)
        errored.append((account_id, *await pay(portal, wired.processor, account_id, token)))
    wired.sandbox[SANDBOX].faults = Faults()
    for *_, token in soft:
        funds_arrive(wired.sandbox, token)
    await portal.settle()
    clock.advance_to(START_MS + 30 * DAY_MS)  # everything is due
    charges_before = len(wired.sandbox[SANDBOX].charges)

    reports = await asyncio.gather(
        portal.janitor(wired.processor).run_once(), portal.janitor(wired.processor).run_once()
    )

    assert sum(r.retries_started for r in reports) == len(soft) + len(errored)
    for account_id, payment_id, *_ in soft + errored:
        assert portal.payment(account_id, payment_id).status is PaymentStatus.succeeded
    by_key = charges_by_key(wired.sandbox)
    assert all(len(charges) == 1 for charges in by_key.values())
    new_charges = len(wired.sandbox[SANDBOX].charges) - charges_before
    assert new_charges == len(soft) + len(errored)
    for account_id, payment_id, *_ in soft:
        assert len(portal.payment(account_id, payment_id).attempts) == 2
    for account_id, payment_id, attempt_id in errored:
        assert [a.attempt_id for a in portal.payment(account_id, payment_id).attempts] == [
            attempt_id
        ]


async def test_a_scheduled_retry_survives_a_restart_of_shards_and_janitor(
    database_url: str, clock: Clock
) -> None:
    portal = await Portal(database_url, clock).start()
    async for wiring in _wire(portal, callbacks=False, processor_timeout_ms=5_000):
        account_id = await open_account(portal)
        token = await wiring.processor.tokenize_test_card(SOFT_DECLINE)
        payment_id, _ = await pay(portal, wiring.processor, account_id, token)
        retry_at_ms = portal.payment(account_id, payment_id).next_retry_at_ms
        assert retry_at_ms is not None
        await portal.stop()  # every shard, router and janitor is gone; only the database stays

        restarted = await Portal(database_url, clock).start()
        restarted.tokens = portal.tokens
        try:
            funds_arrive(wiring.sandbox, token)
            clock.advance_to(retry_at_ms)
            report = await restarted.janitor(wiring.processor).run_once()
            assert report.retries_started == 1
            payment = restarted.payment(account_id, payment_id)
            assert payment.status is PaymentStatus.succeeded
            assert len(payment.attempts) == 2
        finally:
            await restarted.stop()


# -- callbacks ------------------------------------------------------------------------------


def signed(
    body: bytes, *, secret: str = SECRET, event_id: str | None = None, at_s: int | None = None
) -> dict[str, str]:
    event_id = event_id or _id("evt")
    at = dt.datetime.fromtimestamp(
        at_s if at_s is not None else int(dt.datetime.now(dt.UTC).timestamp()), tz=dt.UTC
    )
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, body.decode()),
    }


def callback_body(type_: str, attempt_id: str, charge_id: str = "ch_test", **extra: Any) -> bytes:
    data = {"charge": charge_id, "attempt": attempt_id, "amount": 5_000, "currency": "usd"}
    return msgspec.json.encode({"type": type_, "data": {**data, **extra}})


async def post(receiver: TestClient, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    response = await receiver.post(CALLBACK_PATH, data=body, headers=headers)
    return response.status, await response.json()


def now_s() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


async def test_a_genuine_callback_records_the_outcome_the_charge_reply_never_brought(
    portal: Portal, wired_with_callbacks: Wiring
) -> None:
    wiring = wired_with_callbacks
    account_id = await open_account(portal)
    token = await wiring.processor.tokenize_test_card(SUCCEEDS)
    payment_id, attempt_id = await create_payment(portal, account_id, token)
    await portal.settle()
    # The charge is captured, but its reply is lost: only the callback tells the portal.
    await wiring.processor.charge(token, 5_000, "USD", idempotency_key=attempt_id)

    await eventually(
        lambda: portal.payment(account_id, payment_id).status is PaymentStatus.succeeded
    )
    [event] = wiring.sandbox[SANDBOX].callbacks.events
    # The event id is recorded after the outcome is applied (callbacks.py, step 4), so the
    # payment can show succeeded a moment before the row exists.
    rows = await callback_rows(portal, 1)
    assert [(r.processor, r.event_id) for r in rows] == [("sandbox", event.id)]


def _utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


async def test_forged_and_byte_mutated_callbacks_are_refused_and_change_nothing(
    portal: Portal, wired: Wiring
) -> None:
    account_id = await open_account(portal)
    payment_id, attempt_id = await create_payment(portal, account_id, "tok_unused")
    await portal.settle()
    receiver = wired.receiver
    body = callback_body("charge.succeeded", attempt_id)
    journal_before = len(await portal.store.journal(account_id=account_id))

    status, answer = await post(receiver, body, signed(body, secret=WRONG_SECRET))
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["code"] == "signature_invalid"

    genuine = signed(body)
    cases: list[tuple[str, bytes, dict[str, str]]] = []
    for position in range(len(body)):
        for bit in (0x01, 0x80):
            mutated = bytearray(body)
            mutated[position] ^= bit
            cases.append((f"body[{position}]^{bit:#x}", bytes(mutated), genuine))
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        value = genuine[header]
        for position in range(len(value)):
            flipped = chr(ord(value[position]) ^ 0x01)
            mutated_value = value[:position] + flipped + value[position + 1 :]
            cases.append((f"{header}[{position}]", body, {**genuine, header: mutated_value}))
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        cases.append((f"no {header}", body, {k: v for k, v in genuine.items() if k != header}))

    for name, mutated_body, headers in cases:
        status, answer = await post(receiver, mutated_body, headers)
        assert status == 400, name
        assert answer["error"]["type"] == "invalid_request_error", name
        refusals = {"signature_invalid", "timestamp_out_of_tolerance", "parameter_missing"}
        if not _utf8(mutated_body):
            refusals = {"parameter_invalid"}  # said before any signature is checked
        assert answer["error"]["code"] in refusals, (name, answer)

    assert portal.payment(account_id, payment_id).status is PaymentStatus.processing
    assert len(await portal.store.journal(account_id=account_id)) == journal_before
    assert await portal.rows(tables.processor_callbacks) == []
    # The genuine one, untouched, is taken: the mutations were all that was wrong.
    status, _ = await post(receiver, body, genuine)
    assert status == 200
    assert portal.payment(account_id, payment_id).status is PaymentStatus.succeeded


async def test_stale_and_future_timestamps_are_refused_and_a_rotated_secret_still_verifies(
    portal: Portal, wired: Wiring
) -> None:
    account_id = await open_account(portal)
    payment_id, attempt_id = await create_payment(portal, account_id, "tok_unused")
    await portal.settle()
    body = callback_body("charge.succeeded", attempt_id)

    for at_s in (now_s() - 301 - 5, now_s() + 301 + 5):
        status, answer = await post(wired.receiver, body, signed(body, at_s=at_s))
        assert status == 400
        assert answer["error"] == {
            "type": "invalid_request_error", "code": "timestamp_out_of_tolerance",
            "message": answer["error"]["message"], "param": "webhook-timestamp",
        }  # fmt: skip
    assert portal.payment(account_id, payment_id).status is PaymentStatus.processing

    # Within tolerance, signed with the secret being rotated out.
    status, answer = await post(
        wired.receiver, body, signed(body, secret=OLD_SECRET, at_s=now_s() - 200)
    )
    assert (status, answer) == (200, {"received": True})
    assert portal.payment(account_id, payment_id).status is PaymentStatus.succeeded


async def test_a_duplicated_callback_is_answered_200_and_changes_nothing(
    portal: Portal, wired: Wiring
) -> None:
    account_id = await open_account(portal)
    _, attempt_id = await create_payment(portal, account_id, "tok_unused")
    await portal.settle()
    body = callback_body("charge.succeeded", attempt_id)
    headers = signed(body)

    assert await post(wired.receiver, body, headers) == (200, {"received": True})
    journal = await portal.store.journal(account_id=account_id)
    for _ in range(3):
        # The same event id, re-signed at a later delivery, as a processor retries.
        again = signed(body, event_id=headers["webhook-id"])
        assert await post(wired.receiver, body, again) == (
            200, {"received": True, "duplicate": True},
        )  # fmt: skip
    assert await portal.store.journal(account_id=account_id) == journal
    assert len(await callback_rows(portal, 1)) == 1


async def test_a_decline_callback_with_a_stop_advice_code_is_hard_even_before_the_reply(
    portal: Portal, wired: Wiring
) -> None:
    account_id = await open_account(portal)
    payment_id, attempt_id = await create_payment(portal, account_id, "tok_unused")
    await portal.settle()
    # Soft by its code, but Mastercard's advice code 21 says never to try the card again;
    # the callback comes first, and the charge's reply would only repeat it.
    body = callback_body("charge.failed", attempt_id, decline_code="insufficient_funds",
                         advice_code="21")  # fmt: skip

    assert await post(wired.receiver, body, signed(body)) == (200, {"received": True})
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.requires_payment_method
    assert payment.next_retry_at_ms is None


async def test_sandbox_duplicates_are_applied_once(
    portal: Portal, wired_with_callbacks: Wiring
) -> None:
    wiring = wired_with_callbacks
    wiring.sandbox[SANDBOX].faults = Faults(duplicate_callbacks=3)
    account_id = await open_account(portal)
    token = await wiring.processor.tokenize_test_card(SUCCEEDS)
    payment_id, attempt_id = await create_payment(portal, account_id, token)
    await portal.settle()
    await wiring.processor.charge(token, 5_000, "USD", idempotency_key=attempt_id)

    await eventually(
        lambda: portal.payment(account_id, payment_id).status is PaymentStatus.succeeded
    )
    await asyncio.sleep(0.3)  # the two copies behind the first
    journal = await portal.store.journal(account_id=account_id)
    assert sum(type(e).__name__ == "AttemptSucceeded" for *_, e in journal) == 1
    assert len(await callback_rows(portal, 1)) == 1


async def test_reordered_callbacks_never_move_a_payment_backwards(
    portal: Portal, wired: Wiring, clock: Clock
) -> None:
    account_id = await open_account(portal)
    payment_id, attempt_id = await create_payment(portal, account_id, "tok_unused")
    await portal.settle()
    succeeded = callback_body("charge.succeeded", attempt_id, charge_id="ch_1")
    failed = callback_body("charge.failed", attempt_id, charge_id="ch_1",
                           decline_code="insufficient_funds")  # fmt: skip

    assert (await post(wired.receiver, succeeded, signed(succeeded)))[0] == 200
    journal = await portal.store.journal(account_id=account_id)
    # The older "failed" arrives last: understood, answered 200, refused by the engine.
    assert await post(wired.receiver, failed, signed(failed)) == (200, {"received": True})
    assert portal.payment(account_id, payment_id).status is PaymentStatus.succeeded
    assert await portal.store.journal(account_id=account_id) == journal
    assert len(await callback_rows(portal, 2)) == 2


async def test_a_dispute_that_overtakes_its_capture_is_applied_once_the_capture_lands(
    portal: Portal, wired_with_callbacks: Wiring
) -> None:
    wiring = wired_with_callbacks
    account_id = await open_account(portal)
    token = await wiring.processor.tokenize_test_card(SUCCEEDS)
    payment_id, attempt_id = await create_payment(portal, account_id, token)
    await portal.settle()
    # The capture's callback is held back; the dispute is sent at once.
    wiring.sandbox[SANDBOX].faults = Faults(callback_delay_ms=400)
    result = await wiring.processor.charge(token, 5_000, "USD", idempotency_key=attempt_id)
    wiring.sandbox[SANDBOX].faults = Faults()
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            wiring.sandbox_url.with_path(f"/v1/_charges/{result.charge_id}/dispute")
        )
        assert response.status == 200

    await eventually(
        lambda: portal.payment(account_id, payment_id).status is PaymentStatus.disputed
    )
    # Memory runs ahead of the disk until the batch's commit lands: read what is durable.
    async with asyncio.timeout(5):
        while True:
            journal = await portal.store.journal(account_id=account_id)
            names = [type(e).__name__ for *_, e in journal]
            if "PaymentDisputed" in names:
                break
            await asyncio.sleep(0.02)
    assert names.count("AttemptSucceeded") == 1
    assert names.count("PaymentDisputed") == 1


async def test_an_attempt_stuck_in_processing_is_inquired_then_resent_under_its_own_id(
    portal: Portal, wired: Wiring, clock: Clock
) -> None:
    # A crash between journaling the attempt and charging it: nothing reached the processor.
    account_id = await open_account(portal)
    token = await wired.processor.tokenize_test_card(SUCCEEDS)
    payment_id, attempt_id = await create_payment(portal, account_id, token)
    await portal.settle()
    janitor = portal.janitor(wired.processor, processing_stale_ms=10 * MINUTE_MS)

    clock.advance_to(START_MS + 10 * MINUTE_MS - 1)
    await janitor.run_once()
    assert await portal.rows(attempt_inquiries) == []  # young: a charge may be in flight
    clock.advance_to(START_MS + 10 * MINUTE_MS)
    await janitor.run_once()  # stale: its inquiry is scheduled
    clock.advance_to(START_MS + 11 * MINUTE_MS)
    report = await janitor.run_once()
    assert report.inquiries_made == 1
    assert report.charges_sent == 0
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.retry_scheduled  # "never received": errored
    assert payment.next_retry_at_ms is not None

    await portal.settle()
    clock.advance_to(payment.next_retry_at_ms)
    report = await janitor.run_once()
    assert report.charges_sent == 1
    payment = portal.payment(account_id, payment_id)
    assert payment.status is PaymentStatus.succeeded
    assert [a.attempt_id for a in payment.attempts] == [attempt_id]
    assert list(charges_by_key(wired.sandbox)) == [attempt_id]


async def test_a_callback_repeating_an_outcome_this_process_recorded_skips_the_shard(
    portal: Portal,
) -> None:
    account_id = await open_account(portal)
    payment_id, attempt_id = await create_payment(portal, account_id, "tok_unused")
    await portal.settle()
    await portal.router.submit(RecordOutcome(
        account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
        outcome=OutcomeKind.succeeded, charge_id="ch_1", amount_minor=5_000, currency="USD",
    ))  # fmt: skip
    recent = RecentOutcomes()
    recent.add(attempt_id, OutcomeKind.succeeded, "ch_1", None)
    submitted: list[Any] = []

    class CountingRouter:
        async def submit(self, command: Any) -> Any:
            submitted.append(command)
            return await portal.router.submit(command)

    receiver_app = web.Application()
    receiver_app.add_routes(callback_routes(
        store=portal.store, router=CountingRouter(),  # type: ignore[arg-type]
        secrets={"sandbox": [SECRET]}, recent=recent,
    ))  # fmt: skip
    receiver = TestClient(TestServer(receiver_app))
    await receiver.start_server()
    try:
        same = callback_body("charge.succeeded", attempt_id, charge_id="ch_1",
                             metadata={"payment": payment_id})  # fmt: skip
        assert await post(receiver, same, signed(same)) == (
            200, {"received": True, "duplicate": True},
        )  # fmt: skip
        assert submitted == []  # answered from memory
        # Not the outcome it recorded: the engine decides (and keeps the success).
        other = callback_body("charge.failed", attempt_id, charge_id="ch_1",
                              decline_code="do_not_honor", metadata={"payment": payment_id})
        assert (await post(receiver, other, signed(other)))[0] == 200
        assert [type(c) for c in submitted] == [RecordOutcome]
        assert portal.payment(account_id, payment_id).status is PaymentStatus.succeeded
    finally:
        await receiver.close()
