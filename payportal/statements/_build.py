"""Building a statement from the journal, the account's source of truth.

The model: the account's journal events are replayed through the engine's own ``evolve``
— the function a shard recovers with — which returns the very ledger entry each event
posted (the entries the projection copies into ``ledger_entries``). Balances are sums of
those entries, bucketed by the UTC day of the event's ``at_ms``: before the period gives
the opening balances, up to its last day the closing ones, so the statement's balances
are the ledger's by construction, and the opening of one period is the closing of the
one before. Lines are drawn from the same events, with what the entries moved.

Why the journal and not the read models: the journal is written before a payment is
acknowledged, while the read models follow it by up to a few hundred milliseconds. A
statement read from the journal therefore shows a payment as soon as its answer has
been sent, with no waiting. Shards commit in order, so an account's journal is always a
gap-free prefix of its versions; ``journal_version`` says which prefix was read.

Rules: only integers of minor units; no clock here except ``generated_at_ms``'s default;
an event type added to the engine later still reconciles, as an ``adjustment`` line for
whatever its entry moved.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payportal.engine import (
    AccountState,
    AttemptSucceeded,
    CreditApplied,
    Entry,
    Event,
    InvoiceIssued,
    InvoiceStatus,
    InvoiceVoided,
    LedgerAccount,
    PaymentRefunded,
    Side,
    evolve,
)
from payportal.persistence._engine import READ
from payportal.persistence.tables import journal
from payportal.persistence.tables_payers import account_profiles

from ._format import format_amount
from ._model import (
    Balances,
    LineKind,
    OpenInvoiceLine,
    Statement,
    StatementLine,
    StatementTotals,
)

__all__ = [
    "DAY_MS",
    "StatementAccountNotFound",
    "build_statement",
    "date_of_ms",
    "filename_for",
    "journal_version",
    "ms_of_date",
    "wait_for_journal",
]

DAY_MS: Final = 86_400_000
_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
# Shown when a deployment names no merchant: the statement still says what it is.
MERCHANT_NAME_DEFAULT: Final = "payportal"

_decoder: Final = msgspec.msgpack.Decoder(Event)
_FILENAME_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")
_AR: Final = LedgerAccount.accounts_receivable
_CREDIT: Final = LedgerAccount.customer_credit


class StatementAccountNotFound(LookupError):
    """No account with this id has been opened (its journal is empty)."""


def ms_of_date(day: dt.date) -> int:
    """Unix milliseconds at 00:00 UTC of ``day`` (any year 1..9999, no datetime overflow)."""
    return (day.toordinal() - _EPOCH_ORDINAL) * DAY_MS


def date_of_ms(at_ms: int) -> dt.date:
    return dt.date.fromordinal(_EPOCH_ORDINAL + at_ms // DAY_MS)


def filename_for(statement: Statement, extension: str) -> str:
    """A download's file name: account, period and version, in characters safe anywhere."""
    s = statement
    name = f"statement-{s.account_id}-{s.period_start}-{s.period_end}-v{s.version}"
    return f"{_FILENAME_UNSAFE.sub('_', name)}.{extension}"


async def journal_version(engine: AsyncEngine, account_id: str) -> int:
    """The newest version in the account's journal (0: none). A reader compares it with
    the version a shard reported, to know the journal holds everything acknowledged."""
    query = sa.select(sa.func.max(journal.c.version)).where(journal.c.account_id == account_id)
    async with engine.execution_options(**READ).connect() as connection:
        found = (await connection.execute(query)).scalar()
    return int(found or 0)


async def wait_for_journal(
    engine: AsyncEngine, account_id: str, version: int, *, timeout_s: float,
    poll_s: float = 0.01,
) -> bool:  # fmt: skip
    """Wait until the account's journal holds ``version``; False if it did not in time."""
    deadline = time.monotonic() + timeout_s
    while await journal_version(engine, account_id) < version:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def _read(
    connection: AsyncConnection, account_id: str, end_ms: int | None
) -> tuple[Any, list[Any]]:
    p = account_profiles.c
    profile = (
        await connection.execute(
            sa.select(p.name, p.email, p.external_ref).where(p.account_id == account_id)
        )
    ).first()
    j = journal.c
    query = sa.select(j.version, j.at_ms, j.payload).where(j.account_id == account_id)
    if end_ms is not None:
        # Events after the period are not needed; replay stops at the last one inside it
        # (versions are in commit order, so everything before it is read too), and reads
        # at least the opening event, so an account opened after the period still has one.
        last = (
            sa.select(sa.func.max(j.version))
            .where(j.account_id == account_id, j.at_ms < end_ms)
            .scalar_subquery()
        )
        query = query.where(j.version <= sa.func.coalesce(last, 1))
    rows = list(await connection.execute(query.order_by(j.version)))
    return profile, rows


def _moved(posted: Entry) -> dict[LedgerAccount, int]:
    """The entry's signed, debit-positive amounts by ledger account."""
    moved: dict[LedgerAccount, int] = {}
    for line in posted.lines:
        signed = line.amount_minor if line.side is Side.debit else -line.amount_minor
        moved[line.account] = moved.get(line.account, 0) + signed
    return moved


class _Totals:
    """Mutable counters behind ``StatementTotals``."""

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(StatementTotals.__struct_fields__, 0)

    def add(self, **amounts: int) -> None:
        for name, amount in amounts.items():
            self.values[name] += amount

    def freeze(self) -> StatementTotals:
        return StatementTotals(**self.values)


class _Lines:
    """Turns replayed events into statement lines, with a running balance."""

    def __init__(self) -> None:
        self.currency = ""  # the account's, once its opening event is replayed
        self.balance_minor = 0
        self.lines: list[StatementLine] = []
        self.totals = _Totals()

    def money(self, amount_minor: int) -> str:
        return f"{format_amount(amount_minor, self.currency)} {self.currency}"

    def add(
        self, version: int, at_ms: int, kind: LineKind, *, reference: str, description: str,
        amount_minor: int, outstanding_minor: int = 0, credit_minor: int = 0,
        detail: bool = False, **ids: str | None,
    ) -> None:  # fmt: skip
        change = outstanding_minor - credit_minor
        self.balance_minor += change
        self.lines.append(
            StatementLine(
                version=version, posted_at_ms=at_ms, posted_on=date_of_ms(at_ms), kind=kind,
                reference=reference, description=description, amount_minor=amount_minor,
                outstanding_change_minor=outstanding_minor, credit_change_minor=credit_minor,
                balance_change_minor=change, balance_minor=self.balance_minor, detail=detail,
                **ids,
            )
        )  # fmt: skip

    def event(
        self, version: int, event: Event, state: AccountState, moved: dict[LedgerAccount, int]
    ) -> None:
        """The lines of one event, after ``evolve`` applied it to ``state``."""
        at_ms = event.at_ms
        outstanding_minor = moved.get(_AR, 0)
        credit_minor = -moved.get(_CREDIT, 0)
        if isinstance(event, InvoiceIssued):
            assert outstanding_minor == event.amount_minor, (event, moved)
            due = f"due {event.due_date.isoformat()}"
            period = event.service_period
            if period is not None:
                due += f", service {period.start.isoformat()} to {period.end.isoformat()}"
            self.add(version, at_ms, LineKind.invoice, reference=event.number,
                     description=_with(f"Invoice {event.number} ({due})", event.description),
                     amount_minor=event.amount_minor, outstanding_minor=outstanding_minor,
                     invoice_id=event.invoice_id, invoice_number=event.number)  # fmt: skip
            self.totals.add(invoices_count=1, invoiced_minor=event.amount_minor)
        elif isinstance(event, CreditApplied):
            number = state.invoices[event.invoice_id].number
            self.add(version, at_ms, LineKind.credit_applied, reference=number,
                     description=f"Account credit applied to invoice {number}",
                     amount_minor=event.amount_minor, outstanding_minor=outstanding_minor,
                     credit_minor=credit_minor, invoice_id=event.invoice_id,
                     invoice_number=number)  # fmt: skip
            self.totals.add(credit_applied_minor=event.amount_minor)
        elif isinstance(event, InvoiceVoided):
            invoice = state.invoices[event.invoice_id]
            self.add(version, at_ms, LineKind.void, reference=invoice.number,
                     description=f"Invoice {invoice.number} voided",
                     amount_minor=invoice.amount_due_minor,
                     outstanding_minor=outstanding_minor, credit_minor=credit_minor,
                     invoice_id=invoice.invoice_id, invoice_number=invoice.number)  # fmt: skip
            if event.amount_paid_minor:
                self.add(version, at_ms, LineKind.credit_created, reference=invoice.number,
                         description="What was paid on it returned to account credit",
                         amount_minor=event.amount_paid_minor, detail=True,
                         invoice_id=invoice.invoice_id, invoice_number=invoice.number)  # fmt: skip
            self.totals.add(voids_count=1, voided_minor=invoice.amount_due_minor,
                            voided_outstanding_minor=event.amount_remaining_minor,
                            credit_created_minor=event.amount_paid_minor)  # fmt: skip
        elif isinstance(event, AttemptSucceeded):
            payment = state.payments[event.payment_id]
            method = payment.payment_method
            self.add(version, at_ms, LineKind.payment, reference=payment.payment_id,
                     description=_with(f"Payment received ({method.brand} {method.kind})",
                                       payment.description),
                     amount_minor=payment.amount_minor, outstanding_minor=outstanding_minor,
                     credit_minor=credit_minor, payment_id=payment.payment_id)  # fmt: skip
            for allocation in event.allocations:
                number = state.invoices[allocation.invoice_id].number
                self.add(version, at_ms, LineKind.allocation, reference=number,
                         description=f"Applied to invoice {number}",
                         amount_minor=allocation.amount_minor, detail=True,
                         invoice_id=allocation.invoice_id, invoice_number=number,
                         payment_id=payment.payment_id)  # fmt: skip
            if event.unapplied_minor:
                self.add(version, at_ms, LineKind.credit_created, reference=payment.payment_id,
                         description="Not owed on any invoice: kept as account credit",
                         amount_minor=event.unapplied_minor, detail=True,
                         payment_id=payment.payment_id)  # fmt: skip
            applied_minor = payment.amount_minor - event.unapplied_minor
            self.totals.add(payments_count=1, payments_minor=payment.amount_minor,
                            applied_to_invoices_minor=applied_minor,
                            credit_created_minor=event.unapplied_minor)  # fmt: skip
        elif isinstance(event, PaymentRefunded):
            description = f"Refund of payment {event.payment_id} to the payer"
            if event.from_credit_minor:
                taken = self.money(event.from_credit_minor)
                description += f" ({taken} of it from account credit)"
            self.add(version, at_ms, LineKind.refund, reference=event.refund_id,
                     description=description, amount_minor=event.amount_minor,
                     outstanding_minor=outstanding_minor, credit_minor=credit_minor,
                     payment_id=event.payment_id, refund_id=event.refund_id)  # fmt: skip
            self.totals.add(refunds_count=1, refunds_minor=event.amount_minor,
                            refunds_from_credit_minor=event.from_credit_minor)  # fmt: skip
        elif outstanding_minor or credit_minor:
            tag = type(event).__struct_config__.tag
            self.add(version, at_ms, LineKind.adjustment, reference=str(tag),
                     description=f"Adjustment ({tag})",
                     amount_minor=abs(outstanding_minor - credit_minor),
                     outstanding_minor=outstanding_minor, credit_minor=credit_minor,
                     invoice_id=getattr(event, "invoice_id", None),
                     payment_id=getattr(event, "payment_id", None))  # fmt: skip
            self.totals.add(adjustments_outstanding_minor=outstanding_minor,
                            adjustments_credit_minor=credit_minor)  # fmt: skip


def _with(line: str, description: str | None) -> str:
    """A line's text followed by the merchant's description of the invoice or payment."""
    return line if not description else f"{line}: {description}"


def _is_money_event(event: Event, moved: dict[LedgerAccount, int]) -> bool:
    """An event that makes a statement line of its own (and so a new version)."""
    if isinstance(event, InvoiceIssued | CreditApplied | InvoiceVoided | AttemptSucceeded
                  | PaymentRefunded):  # fmt: skip
        return True
    return bool(moved.get(_AR, 0) or moved.get(_CREDIT, 0))


def _balances(ledger: dict[LedgerAccount, int]) -> Balances:
    outstanding_minor = ledger.get(_AR, 0)
    credit_minor = -ledger.get(_CREDIT, 0)
    return Balances(
        outstanding_minor=outstanding_minor, credit_minor=credit_minor,
        balance_minor=outstanding_minor - credit_minor,
    )  # fmt: skip


def _add(ledger: dict[LedgerAccount, int], moved: dict[LedgerAccount, int]) -> None:
    for account, amount in moved.items():
        ledger[account] = ledger.get(account, 0) + amount


def _check(
    opening: Balances, closing: Balances, totals: StatementTotals, lines: tuple[StatementLine, ...]
) -> None:
    """The statement reconciles: lines and totals lead from the opening to the closing."""
    outstanding_minor = sum(line.outstanding_change_minor for line in lines)
    credit_minor = sum(line.credit_change_minor for line in lines)
    assert opening.outstanding_minor + outstanding_minor == closing.outstanding_minor
    assert opening.credit_minor + credit_minor == closing.credit_minor
    if lines:
        assert lines[-1].balance_minor == closing.balance_minor, (lines[-1], closing)
    t = totals
    assert closing.outstanding_minor == (
        opening.outstanding_minor + t.invoiced_minor - t.applied_to_invoices_minor
        - t.credit_applied_minor - t.voided_outstanding_minor + t.adjustments_outstanding_minor
    ), (opening, closing, totals)  # fmt: skip
    assert closing.credit_minor == (
        opening.credit_minor + t.credit_created_minor - t.credit_applied_minor
        - t.refunds_from_credit_minor + t.adjustments_credit_minor
    ), (opening, closing, totals)  # fmt: skip
    assert closing.balance_minor == (
        opening.balance_minor + t.invoiced_minor - t.payments_minor - t.voided_minor
        + t.refunds_from_credit_minor + t.adjustments_balance_minor
    ), (opening, closing, totals)  # fmt: skip


async def build_statement(
    engine: AsyncEngine,
    account_id: str,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    generated_at_ms: int | None = None,
    merchant_name: str | None = None,
) -> Statement:
    """The account's statement for the UTC days ``start`` .. ``end`` (both inclusive).

    ``start`` None: from the account's opening; ``end`` None: everything up to now.
    Raises ``StatementAccountNotFound`` for an account never opened and ``ValueError``
    when ``start`` is after ``end``.
    """
    if start is not None and end is not None and start > end:
        raise ValueError(f"start {start} is after end {end}")
    if generated_at_ms is None:
        generated_at_ms = time.time_ns() // 1_000_000
    start_ms = ms_of_date(start) if start is not None else None
    end_ms = ms_of_date(end) + DAY_MS if end is not None else None
    async with engine.execution_options(**READ).connect() as connection:
        profile, rows = await _read(connection, account_id, end_ms)
    if not rows:
        raise StatementAccountNotFound(account_id)

    state: AccountState | None = None
    # Ledger balances before the period, and up to its end, by ledger account.
    before: dict[LedgerAccount, int] = {}
    through: dict[LedgerAccount, int] = {}
    # Running balances start at zero here and are shifted by the opening balance below,
    # which is only known once every event before the period has been seen.
    lines = _Lines()
    version = 0
    first_ms = last_ms = rows[0].at_ms
    for row in rows:
        event = _decoder.decode(row.payload)
        assert row.at_ms == event.at_ms, (row.version, row.at_ms, event.at_ms)
        state, posted = evolve(state, event)
        assert state.version == row.version, (account_id, state.version, row.version)
        lines.currency = state.currency
        moved = _moved(posted) if posted is not None else {}
        if end_ms is not None and event.at_ms >= end_ms:
            continue
        last_ms = max(last_ms, event.at_ms)
        _add(through, moved)
        version += _is_money_event(event, moved)
        if start_ms is not None and event.at_ms < start_ms:
            _add(before, moved)
        else:
            # Lines need the state just after their event (invoice numbers, payments),
            # which ``state`` is exactly now.
            lines.event(row.version, event, state, moved)
    assert state is not None

    opening = _balances(before)
    closing = _balances(through)
    shifted = tuple(
        msgspec.structs.replace(line, balance_minor=line.balance_minor + opening.balance_minor)
        for line in lines.lines
    )
    totals = lines.totals.freeze()
    _check(opening, closing, totals, shifted)

    open_invoices = tuple(
        OpenInvoiceLine(
            invoice_id=i.invoice_id, number=i.number, due_date=i.due_date,
            amount_due_minor=i.amount_due_minor, amount_remaining_minor=i.amount_remaining_minor,
        )
        for i in sorted(state.invoices.values(), key=lambda i: (i.due_date, i.number, i.invoice_id))
        if i.status is InvoiceStatus.open and i.amount_remaining_minor > 0
    )  # fmt: skip
    today = date_of_ms(generated_at_ms)
    period_start = start if start is not None else date_of_ms(first_ms)
    period_end = end if end is not None else max(today, date_of_ms(last_ms))
    return Statement(
        account_id=account_id,
        account_name=profile.name if profile is not None else account_id,
        account_email=profile.email if profile is not None else "",
        external_ref=profile.external_ref if profile is not None else None,
        merchant_name=merchant_name or MERCHANT_NAME_DEFAULT,
        currency=state.currency,
        period_start=min(period_start, period_end),
        period_end=period_end,
        version=version,
        journal_version=rows[-1].version,
        generated_at_ms=generated_at_ms,
        opening=opening,
        closing=closing,
        totals=totals,
        lines=shifted,
        open_invoices=open_invoices,
        ledger_opening={a.value: m for a, m in sorted(before.items()) if m},
        ledger_closing={a.value: m for a, m in sorted(through.items()) if m},
    )
