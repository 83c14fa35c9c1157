"""The billing run: claim due subscription periods, issue their invoices, charge autopay.

The model (docs/design.md decisions 4 and 5; Kill Bill's invoice and payment split): the
schedule is durable. A run reads what is due from the database, so a restarted run, or a
second scheduler beside the first, picks up exactly where the other left off; nothing is
kept in memory between runs. Each billing invoice walks four steps, and each step is safe
to repeat:

1. claim — one transaction inserts the period's ``billing_invoices`` row (UNIQUE on
   subscription and period start) and moves the subscription's ``next_period_start`` on
   with a compare-and-set. Two schedulers: one wins, the other's transaction changes
   nothing. The amount (a stub's proration, a downgrade's credit) is fixed here.
2. issue — ``IssueInvoice`` with an id derived from the subscription and the period, and
   the period as ``service_period`` (revenue is deferred and recognized per day). A
   replay after a crash is answered ``exists`` by the engine, never a second invoice.
3. charge (autopay) — ``CreatePayment`` merchant-initiated on the subscription retry
   schedule, allocated to the invoice, with payment and attempt ids and idempotency key
   derived from the invoice; then the gateway charges the attempt (the processor's
   idempotency key is the attempt id), as ``POST /v1/payments`` does. A replay is
   ``exists``, and an attempt already sent is sent again under its own key only.
4. settle — once the payment is terminal: paid, or unpaid (failed, a hard decline,
   retries spent), which makes the subscription past due and emails the payer to update
   the method (dunning). Soft declines are retried meanwhile by the shards' retry
   janitor, exactly like any payment; a later payment of the invoice (any way) returns
   the subscription to active.

Steps 2-4 run under a lease on the row (``lease_owner``/``lease_until_ms``), so two
schedulers do not work one row at once, and a dead scheduler's rows are taken over once
its lease lapses. The lease is only for efficiency: the engine's and the processor's
idempotency would make even two holders bill and charge once.

Also per run: subscriptions canceled at period end are ended, and payers are reminded
once per card and expiry, ``REMIND_DAYS_BEFORE_EXPIRY`` before a subscription's saved card
expires. Dates are computed in the business time zone (``zone``) from the injected clock.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, Protocol, TypeVar
from zoneinfo import ZoneInfo

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payportal.actors import Reply, ShardRouter
from payportal.engine import (
    Allocation,
    Command,
    CreatePayment,
    Initiator,
    IssueInvoice,
    Payment,
    PaymentMethodRef,
    PaymentStatus,
    ReadAccount,
    Rejection,
    Result,
    RetrySchedule,
    ServicePeriod,
)
from payportal.persistence import directory
from payportal.persistence._engine import READ
from payportal.persistence.tables import invoices as invoices_read_model
from payportal.persistence.tables_billing import (
    billing_invoices,
    card_expiry_reminders,
    subscriptions,
)
from payportal.persistence.tables_payers import account_profiles, payment_methods

from . import _records as records
from ._model import (
    InvoiceKind,
    InvoiceOutcome,
    InvoiceState,
    SubscriptionEvent,
    SubscriptionStatus,
    subscription_next,
)
from ._schedule import anchor_of, due_periods, local_date, period_amount_minor

__all__ = [
    "LEASE_MS_DEFAULT",
    "BillingReport",
    "BillingRunner",
    "Charger",
    "invoice_id_for_period",
    "payment_ids_for",
]

log = logging.getLogger(__name__)

# Far longer than a charge can take (the gateway gives up after 15 s): a live scheduler
# never loses a row to another mid-step; a dead one's rows wait at most this long.
LEASE_MS_DEFAULT: Final = 5 * 60_000
# Subscriptions claimed, and rows worked, per run; the rest wait for the next run.
BATCH_MAX_DEFAULT: Final = 2_000
# Concurrent rows per run: enough to keep the shards' batches full, few enough that a
# backlog after an outage does not open processor sockets without bound.
CONCURRENCY_MAX_DEFAULT: Final = 32
# A payer is reminded this long before the end of the month their card expires in.
REMIND_DAYS_BEFORE_EXPIRY: Final = 30
# Without autopay the payer pays the invoice like any other: net 30, as is usual.
DAYS_UNTIL_DUE_WITHOUT_AUTOPAY: Final = 30
# How long ``run_forever`` waits after a run that raised, so a broken database is not
# hammered in a tight loop.
ERROR_BACKOFF_S: Final = 5.0

_PAID: Final = frozenset({
    PaymentStatus.succeeded, PaymentStatus.partially_refunded, PaymentStatus.refunded,
    PaymentStatus.disputed,
})  # fmt: skip
_UNPAID: Final = frozenset({
    PaymentStatus.failed, PaymentStatus.requires_payment_method, PaymentStatus.canceled,
})  # fmt: skip
# The invoice was paid or voided some other way before the autopay payment was created.
_INVOICE_CLOSED: Final = frozenset({
    Rejection.invoice_must_be_open, Rejection.allocation_must_not_exceed_invoice_remaining,
})  # fmt: skip


class Charger(Protocol):
    """What the run needs of the gateway (``payportal.http.gateway.Gateway``)."""

    def needs_charge(self, payment: Payment) -> bool: ...

    async def charge_attempt(self, reply: Reply, account_id: str) -> Reply: ...


class BillingReport(msgspec.Struct, kw_only=True):
    """What one run did (or, with ``dry_run``, would do)."""

    today: dt.date | None = None
    dry_run: bool = False
    subscriptions_due: int = 0
    periods_claimed: int = 0
    # IssueInvoice answered ok: an invoice that did not exist before this run.
    invoices_issued: int = 0
    # CreatePayment answered ok: an autopay payment that did not exist before.
    charges_started: int = 0
    paid: int = 0
    unpaid: int = 0
    became_past_due: int = 0
    reactivated: int = 0
    subscriptions_ended: int = 0
    reminders_sent: int = 0
    # Claimed first by another scheduler, or held under another's lease.
    skipped: int = 0
    # Failed (database, shard, processor); stays due and is retried by the next run.
    errors: int = 0

    def summary(self) -> str:
        if self.dry_run:
            return (f"dry run for {self.today}: {self.periods_claimed} periods due on "
                    f"{self.subscriptions_due} subscriptions, {self.reminders_sent} card "
                    f"reminders due; nothing was written")  # fmt: skip
        return (
            f"billing run for {self.today}: {self.periods_claimed} periods claimed, "
            f"{self.invoices_issued} invoices issued, {self.charges_started} charges started, "
            f"{self.paid} paid, {self.unpaid} unpaid ({self.became_past_due} subscriptions "
            f"past due, {self.reactivated} active again), {self.subscriptions_ended} ended, "
            f"{self.reminders_sent} card reminders, {self.skipped} skipped, "
            f"{self.errors} errors"
        )

    def busy(self) -> bool:
        return any((self.periods_claimed, self.invoices_issued, self.charges_started,
                    self.paid, self.unpaid, self.subscriptions_ended, self.reminders_sent,
                    self.errors))  # fmt: skip


def invoice_id_for_period(account_id: str, subscription_id: str, period_start: dt.date) -> str:
    """Fixed by the subscription and the period: a replayed issue names the same invoice."""
    from payportal.http import ids  # here: the front door's package imports billing

    return ids.derived_child_id("inv", account_id, "billing", subscription_id,
                                period_start.isoformat())  # fmt: skip


def payment_ids_for(account_id: str, invoice_id: str) -> tuple[str, str, str]:
    """(payment id, first attempt id, engine idempotency key) of an invoice's autopay."""
    from payportal.http import ids  # here: the front door's package imports billing

    return (
        ids.derived_child_id("pay", account_id, "billing", invoice_id),
        ids.derived_child_id("att", account_id, "billing", invoice_id),
        # No principal's key starts with "billing:" (they are "merchant:" or payer ids).
        f"billing:{invoice_id}",
    )


def _number(invoice_id: str) -> str:
    return "B-" + invoice_id.rpartition("_")[2][:12].upper()


def _new_owner() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


def _noop(_: str) -> None:
    return None


P = ParamSpec("P")
T = TypeVar("T")


def _whole(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A step that writes runs to its end (commit or rollback) even when its run is
    cancelled meanwhile (a sibling task's crash, shutdown). Cancelled inside a
    transaction, the database driver can leave the pooled connection in it — on SQLite
    holding the write lock that every shard then waits for."""

    @functools.wraps(method)
    async def whole(*args: P.args, **kwargs: P.kwargs) -> T:
        return await _to_the_end(method(*args, **kwargs))  # type: ignore[arg-type]

    return whole


async def _to_the_end(step: Awaitable[T]) -> T:
    """Run a writing step to its end even if the caller is cancelled meanwhile, and keep
    the caller until then: a run that has ended must not commit anything afterwards, or
    a later run could read the world before this write lands and leave its row behind."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class BillingRunner:
    """Runs due billing for every subscription; one per process, any number at once.

    ``router`` submits commands to the shards, ``engine`` holds billing's tables and the
    front door's, ``charger`` charges an attempt (the gateway); a dry run needs neither
    router nor charger. ``clock_ms`` is unix
    milliseconds, injected so tests move time without sleeping; ``zone`` is the business
    time zone whose dates periods follow. ``fault`` is called at each step boundary with
    the step's name (tests inject crashes there)."""

    def __init__(
        self,
        router: ShardRouter | None,
        engine: AsyncEngine,
        charger: Charger | None,
        *,
        clock_ms: Callable[[], int] | None = None,
        zone: ZoneInfo | None = None,
        owner: str | None = None,
        lease_ms: int = LEASE_MS_DEFAULT,
        concurrency_max: int = CONCURRENCY_MAX_DEFAULT,
        batch_max: int = BATCH_MAX_DEFAULT,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        assert lease_ms > 0
        assert concurrency_max > 0
        assert batch_max > 0
        self._router = router
        self._engine = engine
        self._reader = engine.execution_options(**READ)
        self._charger = charger
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.zone = zone or ZoneInfo("UTC")
        self.owner = (owner or _new_owner())[:64]
        self._lease_ms = lease_ms
        self._concurrency_max = concurrency_max
        self._batch_max = batch_max
        self._fault = fault or _noop

    async def _submit(self, command: Command) -> Reply:
        assert self._router is not None, "a dry run submits nothing"
        return await self._router.submit(command)

    def today(self, now_ms: int | None = None) -> dt.date:
        return local_date(self._clock_ms() if now_ms is None else now_ms, self.zone)

    # -- the loop -------------------------------------------------------------------------

    async def run_forever(self, interval_s: float) -> None:
        """``run_once`` every ``interval_s`` until cancelled; a failed run is logged and the
        next one tries again (everything due stays due in the database)."""
        assert interval_s > 0
        while True:
            try:
                report = await self.run_once()
            except Exception:
                log.exception("billing run failed")
                await asyncio.sleep(max(interval_s, ERROR_BACKOFF_S))
                continue
            if report.busy():
                log.info(report.summary())
            await asyncio.sleep(interval_s)

    async def run_once(
        self,
        *,
        now_ms: int | None = None,
        dry_run: bool = False,
        on_total: Callable[[int], None] | None = None,
        on_advance: Callable[[int], None] | None = None,
    ) -> BillingReport:
        """Claim every due period, then work every unsettled row this runner may take,
        then end finished subscriptions and send card reminders. ``on_total`` and
        ``on_advance`` report progress (a progress bar)."""
        now_ms = self._clock_ms() if now_ms is None else now_ms
        today = local_date(now_ms, self.zone)
        report = BillingReport(today=today, dry_run=dry_run)
        due = await records.due_subscriptions(self._engine, today, limit=self._batch_max)
        report.subscriptions_due = len(due)
        if dry_run:
            report.periods_claimed = sum(len(self._periods(s, today)) for s in due)
            report.reminders_sent = len(await self._cards_expiring(today))
            return report
        workable = await records.workable_invoices(
            self._engine, owner=self.owner, now_ms=now_ms, limit=self._batch_max
        )
        if on_total is not None:
            on_total(len(due) + len(workable))
        advance = on_advance or (lambda _: None)
        semaphore = asyncio.Semaphore(self._concurrency_max)

        async def claim_and_work(subscription: records.SubscriptionRow) -> None:
            claimed = await self._claim(subscription, today, now_ms, report)
            for row in claimed:
                await self._work(row, now_ms, report, leased=True)
            advance(1)

        async def work(row: records.InvoiceRow) -> None:
            await self._work(row, now_ms, report, leased=False)
            advance(1)

        # A TaskGroup: a crash (anything not an Exception) cancels the whole run, as a
        # killed process would; an Exception is one item's failure, counted and retried.
        async with asyncio.TaskGroup() as group:
            for each in due:
                group.create_task(
                    self._guarded(semaphore, functools.partial(claim_and_work, each), report)
                )
            for row in workable:
                group.create_task(self._guarded(semaphore, functools.partial(work, row), report))
        await self._guarded(semaphore, functools.partial(self._reconcile_unpaid, report), report)
        await self._guarded(
            semaphore, functools.partial(self._remind_expiring_cards, today, report), report
        )
        return report

    async def bill_subscription(self, subscription_id: str) -> BillingReport:
        """Claim and work one subscription's due periods now (a new subscription's first
        period, without waiting for the next scheduled run)."""
        now_ms = self._clock_ms()
        today = local_date(now_ms, self.zone)
        report = BillingReport(today=today)
        sub = await records.subscription(self._engine, subscription_id)
        if sub is None or sub.status not in records.BILLABLE:
            return report
        report.subscriptions_due = 1
        for row in await self._claim(sub, today, now_ms, report):
            await self._work(row, now_ms, report, leased=True)
        return report

    async def _guarded(
        self,
        semaphore: asyncio.Semaphore,
        work: Callable[[], Awaitable[None]],
        report: BillingReport,
    ) -> None:
        # The work is created only once it holds the semaphore: a run cancelled while
        # items wait leaves no coroutine that was made and never awaited.
        async with semaphore:
            try:
                await work()
            except Exception:
                report.errors += 1
                log.exception("billing item failed; it stays due")

    # -- 1. claim -------------------------------------------------------------------------

    def _periods(self, sub: records.SubscriptionRow, today: dt.date) -> list[ServicePeriod]:
        return due_periods(
            anchor_of(sub.interval, sub.anchor_day, sub.anchor_month), sub.interval,
            started_on=sub.started_on, next_period_start=sub.next_period_start, today=today,
            ended_on=sub.ended_on,
        )  # fmt: skip

    @_whole
    async def _claim(
        self, sub: records.SubscriptionRow, today: dt.date, now_ms: int, report: BillingReport
    ) -> list[records.InvoiceRow]:
        periods = self._periods(sub, today)
        if not periods:
            if sub.ended_on is not None and sub.next_period_start > sub.ended_on:
                await self._end(sub, report)
            return []
        anchor = anchor_of(sub.interval, sub.anchor_day, sub.anchor_month)
        credit_minor = sub.credit_minor
        rows = []
        for period in periods:
            amount_minor = period_amount_minor(anchor, sub.interval, period, sub.amount_minor)
            credit_used_minor = min(credit_minor, amount_minor)
            credit_minor -= credit_used_minor
            invoice_id = invoice_id_for_period(sub.account_id, sub.id, period.start)
            charge = sub.autopay and sub.payment_method_id is not None
            due_days = 0 if charge else DAYS_UNTIL_DUE_WITHOUT_AUTOPAY
            rows.append({
                "invoice_id": invoice_id, "kind": InvoiceKind.period,
                "account_id": sub.account_id, "subscription_id": sub.id,
                "period_start": period.start, "service_start": period.start,
                "service_end": period.end, "number": _number(invoice_id),
                "description": f"{sub.plan_name} {period.start} to {period.end}"[:200],
                "amount_minor": amount_minor - credit_used_minor, "currency": sub.currency,
                "due_date": period.start + dt.timedelta(days=due_days),
                "payment_method_id": sub.payment_method_id if charge else None,
                "state": InvoiceState.claimed, "lease_owner": self.owner,
                "lease_until_ms": now_ms + self._lease_ms, "claimed_at_ms": now_ms,
            })  # fmt: skip
        assert credit_minor >= 0
        last = periods[-1]
        try:
            async with self._engine.begin() as connection:
                moved = await connection.execute(
                    sa.update(subscriptions)
                    .where(
                        subscriptions.c.id == sub.id,
                        subscriptions.c.next_period_start == sub.next_period_start,
                        subscriptions.c.credit_minor == sub.credit_minor,
                        subscriptions.c.plan_id == sub.plan_id,
                        subscriptions.c.status.in_(records.BILLABLE),
                    )
                    .values(next_period_start=last.end + dt.timedelta(days=1),
                            current_period_start=last.start, current_period_end=last.end,
                            credit_minor=credit_minor)
                )  # fmt: skip
                if moved.rowcount != 1:
                    report.skipped += 1
                    return []
                await connection.execute(sa.insert(billing_invoices), rows)
                self._fault("claim")
        except sa.exc.IntegrityError:
            # Another scheduler claimed the period between our read and our insert.
            report.skipped += 1
            return []
        report.periods_claimed += len(rows)
        defaults = {"charge_minor": None, "payment_id": None, "outcome": None}
        return [records.InvoiceRow(**{**defaults, **r}) for r in rows]

    @_whole
    async def _end(self, sub: records.SubscriptionRow, report: BillingReport) -> None:
        """A subscription canceled at its period's end has reached it."""
        status = subscription_next(sub.status, SubscriptionEvent.canceled)
        assert status is SubscriptionStatus.canceled
        async with self._engine.begin() as connection:
            result = await connection.execute(
                sa.update(subscriptions)
                .where(subscriptions.c.id == sub.id, subscriptions.c.status == sub.status)
                .values(status=status)
            )
        report.subscriptions_ended += int(result.rowcount == 1)

    # -- 2-4. issue, charge, settle -------------------------------------------------------

    async def _work(
        self, row: records.InvoiceRow, now_ms: int, report: BillingReport, *, leased: bool
    ) -> None:
        if not leased:
            if row.state is InvoiceState.charging and not await self._charge_moved(row):
                return  # still in its retries: nothing to do until the payment moves
            taken = await _to_the_end(records.take_lease(
                self._engine, row, owner=self.owner, now_ms=now_ms, lease_ms=self._lease_ms
            ))  # fmt: skip
            if taken is None:
                report.skipped += 1
                return
            row = taken
        await self.advance(row, report)

    async def advance(self, row: records.InvoiceRow, report: BillingReport) -> records.InvoiceRow:
        """Take a row this runner leases as far as it can go now; returns it as left."""
        steps = 0
        while row.state is not InvoiceState.settled:
            steps += 1
            assert steps <= 4, row  # each step moves the row on or returns
            if row.state is InvoiceState.claimed:
                moved = await self._issue(row, report)
            elif row.state is InvoiceState.invoiced:
                moved = await self._start_charge(row, report)
            else:
                moved = await self._follow_charge(row, None, report)
            if moved is None:
                break
            row = moved
        return row

    @_whole
    async def _step(
        self, row: records.InvoiceRow, state: InvoiceState, report: BillingReport,
        *, outcome: InvoiceOutcome | None = None, **values: Any,
    ) -> records.InvoiceRow | None:  # fmt: skip
        """Move the row on (settling it with ``outcome``), with its subscription's status
        and the dunning email in the same transaction."""
        if state is InvoiceState.settled:
            assert outcome is not None
            values.update(outcome=outcome, lease_owner=None, lease_until_ms=0)
        async with self._engine.begin() as connection:
            if not await records.advance_invoice(
                connection, row, owner=self.owner, state=state, **values
            ):
                report.skipped += 1
                return None
            if outcome is InvoiceOutcome.paid:
                report.paid += 1
            elif outcome is InvoiceOutcome.unpaid:
                report.unpaid += 1
            if outcome in (InvoiceOutcome.paid, InvoiceOutcome.unpaid):
                await self._settled(connection, row, outcome, report)
        return msgspec.structs.replace(row, state=state, **values)

    async def _issue(
        self, row: records.InvoiceRow, report: BillingReport
    ) -> records.InvoiceRow | None:
        if row.amount_minor == 0:
            return await self._step(row, InvoiceState.settled, report,
                                    outcome=InvoiceOutcome.nothing_due)  # fmt: skip
        period = None
        if row.service_start is not None and row.service_end is not None:
            period = ServicePeriod(start=row.service_start, end=row.service_end)
        reply = await self._submit(
            IssueInvoice(
                account_id=row.account_id, invoice_id=row.invoice_id, number=row.number,
                amount_minor=row.amount_minor, currency=row.currency, due_date=row.due_date,
                service_period=period,
            )
        )  # fmt: skip
        self._fault("issued")
        if reply.outcome.result is Result.rejected:
            log.error("billing invoice %s refused: %s", row.invoice_id, reply.outcome.rejection)
            return await self._step(row, InvoiceState.settled, report,
                                    outcome=InvoiceOutcome.rejected)  # fmt: skip
        report.invoices_issued += reply.outcome.result is Result.ok
        invoice = reply.invoice
        assert invoice is not None, reply
        remaining_minor = invoice.amount_remaining_minor
        if row.payment_method_id is None or remaining_minor == 0:
            outcome = InvoiceOutcome.invoiced if remaining_minor else InvoiceOutcome.paid
            return await self._step(row, InvoiceState.settled, report, outcome=outcome)
        payment_id, _, _ = payment_ids_for(row.account_id, row.invoice_id)
        return await self._step(row, InvoiceState.invoiced, report, charge_minor=remaining_minor,
                                payment_id=payment_id)  # fmt: skip

    async def _start_charge(
        self, row: records.InvoiceRow, report: BillingReport
    ) -> records.InvoiceRow | None:
        assert row.payment_method_id is not None
        assert row.charge_minor is not None, row
        assert row.charge_minor > 0, row
        method = await directory.payment_method(self._engine, row.payment_method_id)
        if method is None or method.deleted_at is not None or method.account_id != row.account_id:
            # No method to charge: the payer must choose one, exactly as after a hard decline.
            return await self._step(row, InvoiceState.settled, report,
                                    outcome=InvoiceOutcome.unpaid)  # fmt: skip
        payment_id, attempt_id, key = payment_ids_for(row.account_id, row.invoice_id)
        assert payment_id == row.payment_id
        schedule = RetrySchedule.one_off if row.kind is InvoiceKind.item else (
            RetrySchedule.subscription
        )  # fmt: skip
        reply = await self._submit(
            CreatePayment(
                account_id=row.account_id, payment_id=payment_id, attempt_id=attempt_id,
                idempotency_key=key, amount_minor=row.charge_minor, currency=row.currency,
                payment_method=PaymentMethodRef(id=method.id, brand=method.brand,
                                                kind=method.type),
                allocations=(Allocation(invoice_id=row.invoice_id,
                                        amount_minor=row.charge_minor),),
                initiator=Initiator.merchant, schedule=schedule,
            )
        )  # fmt: skip
        self._fault("payment_created")
        if reply.outcome.result is Result.rejected:
            rejection = reply.outcome.rejection
            if rejection in _INVOICE_CLOSED:
                # Paid (or voided) another way before autopay got to it.
                return await self._step(row, InvoiceState.settled, report,
                                        outcome=InvoiceOutcome.paid)  # fmt: skip
            log.error("autopay for %s refused: %s", row.invoice_id, rejection)
            return await self._step(row, InvoiceState.settled, report,
                                    outcome=InvoiceOutcome.rejected)  # fmt: skip
        report.charges_started += reply.outcome.result is Result.ok
        return await self._follow_charge(row, reply, report)

    async def _charge_moved(self, row: records.InvoiceRow) -> bool:
        """Whether a row in ``charging`` has something to do: its payment ended, or its
        attempt waits to be sent. Read without a lease, so waiting costs no write."""
        payment = (await self._read_payment(row)).payment
        if payment is None:
            return True
        if payment.status in _PAID or payment.status in _UNPAID:
            return True
        return self._charger is not None and (
            payment.status is PaymentStatus.processing and self._charger.needs_charge(payment)
        )

    async def _read_payment(self, row: records.InvoiceRow) -> Reply:
        assert row.payment_id is not None
        return await self._submit(
            ReadAccount(account_id=row.account_id, payment_id=row.payment_id)
        )

    async def _follow_charge(
        self, row: records.InvoiceRow, reply: Reply | None, report: BillingReport
    ) -> records.InvoiceRow | None:
        if reply is None:
            reply = await self._read_payment(row)
        payment = reply.payment
        if payment is None:
            assert row.state is InvoiceState.charging, row
            # The row says charging but the payment is not there: create it again.
            return await self._step(row, InvoiceState.invoiced, report)
        if (
            self._charger is not None
            and payment.status is PaymentStatus.processing
            and self._charger.needs_charge(payment)
        ):
            reply = await self._charger.charge_attempt(reply, row.account_id)
            self._fault("charged")
            payment = reply.payment or payment
        if payment.status in _PAID:
            return await self._step(row, InvoiceState.settled, report,
                                    outcome=InvoiceOutcome.paid)  # fmt: skip
        if payment.status in _UNPAID:
            return await self._step(row, InvoiceState.settled, report,
                                    outcome=InvoiceOutcome.unpaid)  # fmt: skip
        # Retries are scheduled, or the outcome is unknown: the retry janitor takes it from
        # here, and any scheduler settles the row once the payment ends.
        if row.state is InvoiceState.invoiced:
            await self._step(row, InvoiceState.charging, report, lease_owner=None,
                             lease_until_ms=0)  # fmt: skip
        else:
            await _to_the_end(records.release_lease(self._engine, row, owner=self.owner))
        return None

    # -- subscription status and dunning --------------------------------------------------

    async def _settled(
        self, connection: AsyncConnection, row: records.InvoiceRow, outcome: InvoiceOutcome,
        report: BillingReport,
    ) -> None:  # fmt: skip
        """The subscription's status follows its invoice's payment (``TRANSITIONS``): one
        conditional update per status the event moves away from, so a concurrent change
        of status is never overwritten."""
        if row.subscription_id is None:
            return
        event = (SubscriptionEvent.payment_succeeded if outcome is InvoiceOutcome.paid
                 else SubscriptionEvent.payment_failed)  # fmt: skip
        # One settlement of a subscription's invoices at a time: on PostgreSQL the updates
        # below then read the other's committed outcome (a statement after the lock takes
        # a fresh snapshot), so "no invoice left unpaid" is never judged on a stale one.
        # SQLite's BEGIN IMMEDIATE serializes writers already.
        await connection.execute(
            sa.select(subscriptions.c.id)
            .where(subscriptions.c.id == row.subscription_id)
            .with_for_update()
        )
        for source in SubscriptionStatus:
            target = subscription_next(source, event)
            if target is None or target is source:
                continue
            update = (
                sa.update(subscriptions)
                .where(subscriptions.c.id == row.subscription_id, subscriptions.c.status == source)
                .values(status=target)
            )
            if event is SubscriptionEvent.payment_succeeded:
                # Active again only once no other invoice of it is left unpaid.
                update = update.where(~sa.exists().where(
                    billing_invoices.c.subscription_id == row.subscription_id,
                    billing_invoices.c.outcome == InvoiceOutcome.unpaid,
                ))  # fmt: skip
            moved = (await connection.execute(update)).rowcount == 1
            if moved and target is SubscriptionStatus.past_due:
                report.became_past_due += 1
            elif moved and target is SubscriptionStatus.active:
                report.reactivated += 1
        if event is SubscriptionEvent.payment_failed:
            sub = await records.subscription(connection, row.subscription_id)
            assert sub is not None, row
            if sub.status is not SubscriptionStatus.canceled:
                await self._dunning_email(connection, row, sub)

    async def _dunning_email(
        self, connection: AsyncConnection, row: records.InvoiceRow, sub: records.SubscriptionRow
    ) -> None:
        from payportal.mail import enqueue_email

        profile = (
            await connection.execute(
                sa.select(account_profiles.c.name, account_profiles.c.email)
                .where(account_profiles.c.account_id == row.account_id)
            )
        ).first()  # fmt: skip
        if profile is None:
            log.warning("no profile for %s: past-due email not sent", row.account_id)
            return
        method = None
        if row.payment_method_id is not None:
            found = (
                await connection.execute(
                    sa.select(payment_methods.c.brand, payment_methods.c.last4)
                    .where(payment_methods.c.id == row.payment_method_id)
                )
            ).first()  # fmt: skip
            if found is not None:
                method = {"brand": found.brand, "last4": found.last4}
        await enqueue_email(
            connection, dedupe_key=f"subscription_past_due:{row.invoice_id}", to=profile.email,
            template="subscription_past_due",
            context={
                "account_name": profile.name, "plan_name": sub.plan_name,
                "amount_minor": row.charge_minor or row.amount_minor, "currency": row.currency,
                "invoice_number": row.number, "period_start": row.service_start,
                "period_end": row.service_end, "method": method,
            },
        )  # fmt: skip

    @_whole
    async def _reconcile_unpaid(self, report: BillingReport) -> None:
        """An unpaid invoice paid later (by the payer, or a replaced method's retry)
        settles as paid, which may make its subscription active again."""
        query = (
            sa.select(billing_invoices)
            .join(invoices_read_model,
                  invoices_read_model.c.invoice_id == billing_invoices.c.invoice_id)
            .where(billing_invoices.c.outcome == InvoiceOutcome.unpaid,
                   invoices_read_model.c.status == "paid")
            .limit(self._batch_max)
        )  # fmt: skip
        async with self._reader.connect() as connection:
            rows = [records.invoice_row(r) for r in (await connection.execute(query)).all()]
        for row in rows:
            async with self._engine.begin() as connection:
                result = await connection.execute(
                    sa.update(billing_invoices)
                    .where(billing_invoices.c.invoice_id == row.invoice_id,
                           billing_invoices.c.outcome == InvoiceOutcome.unpaid)
                    .values(outcome=InvoiceOutcome.paid)
                )  # fmt: skip
                if result.rowcount == 1:
                    report.paid += 1
                    await self._settled(connection, row, InvoiceOutcome.paid, report)

    # -- card expiry reminders ------------------------------------------------------------

    async def _cards_expiring(self, today: dt.date) -> list[Any]:
        horizon = today + dt.timedelta(days=REMIND_DAYS_BEFORE_EXPIRY)
        month_index = payment_methods.c.exp_year * 12 + payment_methods.c.exp_month
        query = (
            sa.select(payment_methods.c.id, payment_methods.c.account_id,
                      payment_methods.c.brand, payment_methods.c.last4,
                      payment_methods.c.exp_month, payment_methods.c.exp_year,
                      account_profiles.c.name, account_profiles.c.email)
            .distinct()
            .join_from(subscriptions, payment_methods,
                       payment_methods.c.id == subscriptions.c.payment_method_id)
            .join(account_profiles, account_profiles.c.account_id == payment_methods.c.account_id)
            .where(
                subscriptions.c.status.in_(records.BILLABLE),
                subscriptions.c.autopay.is_(True),
                payment_methods.c.deleted_at.is_(None),
                month_index >= today.year * 12 + today.month,
                month_index <= horizon.year * 12 + horizon.month,
                ~sa.exists().where(
                    card_expiry_reminders.c.payment_method_id == payment_methods.c.id,
                    card_expiry_reminders.c.exp_year == payment_methods.c.exp_year,
                    card_expiry_reminders.c.exp_month == payment_methods.c.exp_month,
                ),
            )
            .limit(self._batch_max)
        )  # fmt: skip
        async with self._reader.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [r for r in rows if _remind_on(r.exp_year, r.exp_month) <= today]

    @_whole
    async def _remind_expiring_cards(self, today: dt.date, report: BillingReport) -> None:
        from payportal.mail import enqueue_email

        for card in await self._cards_expiring(today):
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(
                        sa.insert(card_expiry_reminders).values(
                            payment_method_id=card.id, exp_year=card.exp_year,
                            exp_month=card.exp_month, account_id=card.account_id,
                        )
                    )  # fmt: skip
                    await enqueue_email(
                        connection,
                        dedupe_key=f"card_expiring:{card.id}:{card.exp_year}-{card.exp_month:02d}",
                        to=card.email, template="card_expiring",
                        context={
                            "account_name": card.name, "brand": card.brand,
                            "last4": card.last4 or "", "expires": _month_name(card),
                        },
                    )  # fmt: skip
            except sa.exc.IntegrityError:
                continue  # another scheduler reminded first
            report.reminders_sent += 1


def _expiry_end(exp_year: int, exp_month: int) -> dt.date:
    """A card is good through the last day of its expiry month."""
    return dt.date(exp_year, exp_month, calendar.monthrange(exp_year, exp_month)[1])


def _remind_on(exp_year: int, exp_month: int) -> dt.date:
    return _expiry_end(exp_year, exp_month) - dt.timedelta(days=REMIND_DAYS_BEFORE_EXPIRY)


def _month_name(card: Any) -> str:
    return f"{calendar.month_name[card.exp_month]} {card.exp_year}"
