"""The retry and inquiry janitor: due retries are charged, unresolved attempts are inquired.

The model (docs/design.md decisions 4-6, Kill Bill's payment janitor): the schedule is durable.
Each ``run_once`` reads what is due from the database — payments ``retry_scheduled``
whose ``next_retry_at_ms`` has passed (the payments read model), and attempts whose
outcome is ``unknown`` or that have sat in ``processing`` far longer than a charge
takes (the attempts read model plus ``attempt_inquiries``) — so a restarted janitor, or
a second one, picks up exactly where the first left off. Nothing is kept in memory
between runs.

Rules:
- The engine arbitrates who retries. A due retry is ``StartRetry`` with a fresh
  ``att_…`` id; only the janitor whose command the engine answers ``ok`` (or ``exists``
  for its own id) charges, and it charges the attempt the engine names: after a
  technical error that is the errored attempt itself, re-sent under its own id. The
  attempt id is the processor's idempotency key, so even a repeated charge captures once.
- An unknown outcome is never answered with a charge: the janitor only ``inquire``s, on
  the schedule 1 min, 5 min, 1 h, then daily (``inquiry_delay_ms``). An inquiry is
  claimed with a compare-and-set on ``inquiries_made`` before it is made, so two
  janitors never ask twice for one slot. A "never received" answer is recorded as
  ``errored``, which the engine turns into a quick re-send under the same key.
- The read models may lag the journal (~100 ms): a stale row costs at most a command the
  engine answers ``exists`` or rejects, never a second charge.
- Every processor call is outside any account's critical section and bounded by
  ``concurrency_max`` and a timeout; a failure is counted and logged and the item stays
  due, so the next run tries again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import msgspec
import sqlalchemy as sa

from payportal.engine import (
    AttemptStatus,
    OutcomeKind,
    Payment,
    PaymentStatus,
    RecordOutcome,
    Result,
    StartRetry,
)
from payportal.engine.retry_policy import inquiry_delay_ms
from payportal.persistence import tables
from payportal.persistence._engine import READ
from payportal.persistence.tables_janitor import attempt_inquiries
from payportal.processors import ChargeResult, ProcessorAdapter
from payportal.processors.charging import charge_attempt

from .protocol import Reply, shard_for
from .router import ShardRouter

__all__ = ["JanitorReport", "RetryJanitor", "TokenFor"]

log = logging.getLogger(__name__)

# The processor token of a payment method id, or None when there is none.
TokenFor = Callable[[str], Awaitable[str | None]]

# Concurrent processor calls per run: enough to keep a slow processor busy, few enough
# that a backlog after an outage does not open sockets without bound.
CONCURRENCY_MAX_DEFAULT: Final = 16
# Items taken per kind per run, oldest due first; the rest wait for the next run.
BATCH_MAX_DEFAULT: Final = 500
# Longer than the processor adapter's own timeout (10 s) plus the gateway's (15 s): a
# charge still unanswered after this is never coming back, and the attempt is inquired.
PROCESSING_STALE_MS_DEFAULT: Final = 10 * 60_000
# A single processor call never holds a janitor run for longer than this; the outcome
# is then unknown and resolved by inquiry.
CALL_TIMEOUT_MS_DEFAULT: Final = 15_000

# How long ``run_forever`` waits after a run that raised, so a broken database is not
# hammered in a tight loop.
ERROR_BACKOFF_MS: Final = 1_000
# The longest an idle janitor waits between looks. What it finds only by looking (an
# attempt left in ``processing`` by a front door that died mid-charge) waits this much
# longer than ``processing_stale_ms`` at worst; everything a commit schedules wakes it.
IDLE_MAX_MS: Final = 30_000


class JanitorReport(msgspec.Struct, kw_only=True):
    """What one ``run_once`` did, for logs, metrics and tests."""

    retries_due: int = 0
    # StartRetry answered ok (or exists for our own id) and the attempt was charged.
    retries_started: int = 0
    # Another janitor started it, or the engine deferred or ended the retry instead.
    retries_not_started: int = 0
    charges_sent: int = 0
    inquiries_due: int = 0
    inquiries_made: int = 0
    # The engine recorded a new outcome (from a charge or an inquiry).
    outcomes_recorded: int = 0
    # Something failed (database, router, processor refused the request); retried later.
    errors: int = 0


class _DueRetry(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    payment_id: str


class _DueInquiry(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    payment_id: str
    attempt_id: str
    inquiries_made: int


class RetryJanitor:
    """Runs due retries and inquiries for the shards in ``shard_ids`` (all by default).

    ``router`` submits commands to the shards; ``store`` is the ``persistence.Store``
    whose ``engine`` holds the read models and ``attempt_inquiries``; ``clock_ms`` is
    unix milliseconds (injected so tests move time without sleeping). ``token_for``
    turns a payment method id into the processor token; by default it reads the
    ``payment_methods`` table the front door writes."""

    def __init__(
        self,
        router: ShardRouter,
        store: Any,
        processor: ProcessorAdapter,
        *,
        clock_ms: Callable[[], int] | None = None,
        shard_ids: Collection[int] | None = None,
        concurrency_max: int = CONCURRENCY_MAX_DEFAULT,
        batch_max: int = BATCH_MAX_DEFAULT,
        token_for: TokenFor | None = None,
        processing_stale_ms: int = PROCESSING_STALE_MS_DEFAULT,
        call_timeout_ms: int = CALL_TIMEOUT_MS_DEFAULT,
        attempt_ids: Callable[[], str] | None = None,
    ) -> None:
        assert concurrency_max > 0
        assert batch_max > 0
        assert processing_stale_ms > 0
        assert call_timeout_ms > 0
        self._router = router
        self._engine = store.engine
        # Reads take no write lock on SQLite (a deferred BEGIN).
        self._reader = store.engine.execution_options(**READ)
        self._processor = processor
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._shard_ids = None if shard_ids is None else frozenset(shard_ids)
        self._concurrency_max = concurrency_max
        self._batch_max = batch_max
        self._token_for = token_for or self._token_from_payment_methods
        self._processing_stale_ms = processing_stale_ms
        self._call_timeout_s = call_timeout_ms / 1000
        self._attempt_ids = attempt_ids or _new_attempt_id
        self._next_look_ms: int | None = None
        self._woken = asyncio.Event()

    # -- the loop -----------------------------------------------------------------------

    def wake_at(self, at_ms: int) -> None:
        """Work is due at ``at_ms`` (unix ms, the janitor's clock): a retry was just
        scheduled, or an outcome left unknown. An idle janitor looks then, not later."""
        if self._next_look_ms is None or at_ms < self._next_look_ms:
            self._next_look_ms = at_ms
            self._woken.set()

    async def run_forever(self, interval_ms: int, *, idle_max_ms: int | None = None) -> None:
        """``run_once`` every ``interval_ms`` while there is work; after runs that find
        none, the wait doubles up to ``idle_max_ms`` (default ``IDLE_MAX_MS``), and
        ``wake_at`` brings the next run forward to when work is due. A failed run is
        logged and the next one tries again (everything due stays due in the database)."""
        assert interval_ms > 0
        idle_max_ms = max(interval_ms, IDLE_MAX_MS if idle_max_ms is None else idle_max_ms)
        wait_ms = interval_ms
        while True:
            self._next_look_ms = None
            self._woken.clear()
            try:
                report = await self.run_once()
            except Exception:
                log.exception("janitor run failed")
                await asyncio.sleep(max(interval_ms, ERROR_BACKOFF_MS) / 1000)
                continue
            busy = bool(report.retries_due or report.inquiries_due or report.errors)
            if busy:
                log.info("janitor run: %s", report)
            wait_ms = interval_ms if busy else min(wait_ms * 2, idle_max_ms)
            await self._wait(wait_ms, interval_ms)

    async def _wait(self, wait_ms: int, interval_ms: int) -> None:
        """Sleep ``wait_ms``, or less if ``wake_at`` names an earlier time (never less
        than ``interval_ms``: the read models the janitor reads trail the journal)."""
        deadline_ms = self._clock_ms() + wait_ms
        while True:
            until_ms = deadline_ms
            if self._next_look_ms is not None:
                until_ms = min(until_ms, max(self._next_look_ms, self._clock_ms()) + interval_ms)
            remaining_s = (until_ms - self._clock_ms()) / 1000
            if remaining_s <= 0:
                return
            self._woken.clear()
            try:
                await asyncio.wait_for(self._woken.wait(), remaining_s)
            except TimeoutError:
                return

    async def run_once(self) -> JanitorReport:
        """Run everything due now: retries first (money waits on them), then inquiries."""
        report = JanitorReport()
        now_ms = self._clock_ms()
        semaphore = asyncio.Semaphore(self._concurrency_max)

        retries = await self._due_retries(now_ms)
        report.retries_due = len(retries)
        await asyncio.gather(*(self._guarded(semaphore, self._retry(r, report), report)
                               for r in retries))  # fmt: skip

        inquiries = await self._due_inquiries(now_ms)
        report.inquiries_due = len(inquiries)
        await asyncio.gather(*(self._guarded(semaphore, self._inquire(i, now_ms, report), report)
                               for i in inquiries))  # fmt: skip
        return report

    async def _guarded(
        self, semaphore: asyncio.Semaphore, work: Awaitable[None], report: JanitorReport
    ) -> None:
        async with semaphore:
            try:
                await work
            except Exception:
                # The item stays due in the database: the next run takes it again.
                report.errors += 1
                log.exception("janitor item failed; it stays due")

    def _mine(self, account_id: str) -> bool:
        if self._shard_ids is None:
            return True
        return shard_for(account_id, self._router.shards) in self._shard_ids

    # -- retries ------------------------------------------------------------------------

    async def _due_retries(self, now_ms: int) -> list[_DueRetry]:
        p = tables.payments
        query = (
            sa.select(p.c.account_id, p.c.payment_id)
            .where(p.c.status == PaymentStatus.retry_scheduled.value)
            .where(p.c.next_retry_at_ms <= now_ms)
            .order_by(p.c.next_retry_at_ms, p.c.payment_id)
            .limit(self._batch_max)
        )
        async with self._reader.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            _DueRetry(account_id=row.account_id, payment_id=row.payment_id)
            for row in rows
            if self._mine(row.account_id)
        ]

    async def _retry(self, due: _DueRetry, report: JanitorReport) -> None:
        attempt_id = self._attempt_ids()
        reply = await self._router.submit(
            StartRetry(account_id=due.account_id, payment_id=due.payment_id, attempt_id=attempt_id)
        )
        payment = reply.payment
        if not _retry_is_ours(reply, attempt_id):
            # Another janitor started it (the read model lagged), or the engine deferred
            # the retry (network caps) or ended the series: nothing to charge.
            report.retries_not_started += 1
            log.info(
                "retry of %s not started here: %s %s", due.payment_id,
                reply.outcome.result.value,
                reply.outcome.rejection or (payment.status.value if payment else None),
            )  # fmt: skip
            return
        assert payment is not None
        report.retries_started += 1
        # After a technical error the engine re-sends the errored attempt under its own
        # id; after a soft decline it is the new attempt we named.
        charged_id = payment.current_attempt.attempt_id
        result = await self._charge(payment, charged_id)
        report.charges_sent += 1
        await self._record(due.account_id, payment.payment_id, charged_id, result, report)

    async def _charge(self, payment: Payment, attempt_id: str) -> ChargeResult:
        token = await self._token_for(payment.payment_method.id)
        return await charge_attempt(
            self._processor, token, payment, attempt_id, timeout_s=self._call_timeout_s
        )

    async def _token_from_payment_methods(self, payment_method_id: str) -> str | None:
        # Imported here: the front door's directory is only needed when no lookup is given.
        from payportal.persistence import directory

        row = await directory.payment_method(self._engine, payment_method_id)
        return None if row is None else row.token

    # -- inquiries ----------------------------------------------------------------------

    async def _due_inquiries(self, now_ms: int) -> list[_DueInquiry]:
        """Unresolved attempts whose inquiry is due. An attempt seen for the first time
        gets its schedule row now, due ``inquiry_delay_ms(0)`` from now."""
        a, p, q = tables.attempts, tables.payments, attempt_inquiries
        unresolved = sa.or_(
            a.c.status == AttemptStatus.unknown.value,
            sa.and_(
                a.c.status == AttemptStatus.processing.value,
                p.c.status == PaymentStatus.processing.value,
                a.c.created_at_ms <= now_ms - self._processing_stale_ms,
            ),
        )
        query = (
            sa.select(
                a.c.attempt_id, a.c.payment_id, p.c.account_id,
                q.c.inquiries_made, q.c.next_inquiry_at_ms,
            )
            .join(p, p.c.payment_id == a.c.payment_id)
            .outerjoin(q, q.c.attempt_id == a.c.attempt_id)
            .where(unresolved)
            .where(sa.or_(q.c.next_inquiry_at_ms.is_(None), q.c.next_inquiry_at_ms <= now_ms))
            .order_by(q.c.next_inquiry_at_ms.is_not(None), q.c.next_inquiry_at_ms, a.c.attempt_id)
            .limit(self._batch_max)
        )  # fmt: skip
        async with self._reader.connect() as connection:
            rows = [row for row in (await connection.execute(query)).all()
                    if self._mine(row.account_id)]  # fmt: skip
        first_seen = [row for row in rows if row.next_inquiry_at_ms is None]
        if first_seen:
            await self._schedule_first_inquiries(first_seen, now_ms)
        return [
            _DueInquiry(
                account_id=row.account_id, payment_id=row.payment_id,
                attempt_id=row.attempt_id, inquiries_made=row.inquiries_made,
            )
            for row in rows
            if row.next_inquiry_at_ms is not None
        ]  # fmt: skip

    async def _schedule_first_inquiries(self, rows: list[Any], now_ms: int) -> None:
        q = attempt_inquiries
        for row in rows:
            values = {
                "attempt_id": row.attempt_id, "payment_id": row.payment_id,
                "account_id": row.account_id, "inquiries_made": 0,
                "next_inquiry_at_ms": now_ms + inquiry_delay_ms(0),
            }  # fmt: skip
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(sa.insert(q).values(**values))
            except sa.exc.IntegrityError:
                pass  # another janitor scheduled it first; its schedule stands

    async def _claim_inquiry(self, due: _DueInquiry, now_ms: int) -> bool:
        """Move the schedule past this slot; True if this janitor won the slot."""
        q = attempt_inquiries
        made = due.inquiries_made + 1
        async with self._engine.begin() as connection:
            result = await connection.execute(
                sa.update(q)
                .where(q.c.attempt_id == due.attempt_id)
                .where(q.c.inquiries_made == due.inquiries_made)
                .values(
                    inquiries_made=made,
                    next_inquiry_at_ms=now_ms + inquiry_delay_ms(made),
                    last_inquiry_at_ms=now_ms,
                )
            )
        claimed: bool = result.rowcount == 1
        return claimed

    async def _inquire(self, due: _DueInquiry, now_ms: int, report: JanitorReport) -> None:
        if not await self._claim_inquiry(due, now_ms):
            return  # another janitor is asking for this slot
        try:
            async with asyncio.timeout(self._call_timeout_s):
                result = await self._processor.inquire(due.attempt_id)
        except TimeoutError:
            result = ChargeResult(outcome=OutcomeKind.unknown)
        report.inquiries_made += 1
        log.info(
            "inquiry %d for attempt %s: %s", due.inquiries_made + 1, due.attempt_id,
            (result.inquiry or result.outcome).value,
        )  # fmt: skip
        if result.outcome is OutcomeKind.unknown:
            return  # still deciding, or no answer: the schedule asks again
        reply = await self._record(
            due.account_id, due.payment_id, due.attempt_id, result, report
        )
        if _attempt_resolved(reply, due.attempt_id):
            await self._forget_inquiries(due.attempt_id)

    async def _forget_inquiries(self, attempt_id: str) -> None:
        q = attempt_inquiries
        async with self._engine.begin() as connection:
            await connection.execute(sa.delete(q).where(q.c.attempt_id == attempt_id))

    # -- outcomes -----------------------------------------------------------------------

    async def _record(
        self, account_id: str, payment_id: str, attempt_id: str, result: ChargeResult,
        report: JanitorReport,
    ) -> Reply:  # fmt: skip
        reply = await self._router.submit(
            RecordOutcome(
                account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                outcome=result.outcome, charge_id=result.charge_id,
                decline_code=result.decline_code, visa_category=result.visa_category,
                advice_code=result.advice_code, amount_minor=result.amount_minor,
                currency=result.currency.upper() if result.currency else None,
            )
        )  # fmt: skip
        if reply.outcome.result is Result.ok:
            report.outcomes_recorded += 1
        elif reply.outcome.result is Result.rejected:
            # A stale answer (the attempt was resolved meanwhile) or a mismatch: the
            # engine keeps what it has, and we say so.
            log.warning(
                "outcome %s for attempt %s refused: %s", result.outcome.value, attempt_id,
                reply.outcome.rejection,
            )  # fmt: skip
        return reply


def _new_attempt_id() -> str:
    return f"att_{secrets.token_hex(12)}"


def _retry_is_ours(reply: Reply, attempt_id: str) -> bool:
    """The engine started a retry for this command (``exists`` only for our own id: the
    same command delivered twice) and it now waits for a charge."""
    if reply.outcome.result not in (Result.ok, Result.exists):
        return False
    payment = reply.payment
    if payment is None or payment.status is not PaymentStatus.processing:
        return False
    current = payment.current_attempt
    if current.status is not AttemptStatus.processing:
        return False
    if reply.outcome.result is Result.exists:
        return current.attempt_id == attempt_id
    return True


def _attempt_resolved(reply: Reply, attempt_id: str) -> bool:
    payment = reply.payment
    if payment is None:
        return False
    for attempt in payment.attempts:
        if attempt.attempt_id == attempt_id:
            return attempt.status not in (AttemptStatus.unknown, AttemptStatus.processing)
    return True  # not this payment's attempt: nothing left to ask about
