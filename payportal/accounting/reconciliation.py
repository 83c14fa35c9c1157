"""Reconciliation: the processor's settlement reports against our payments and invoices.

The job (``reconcile``; ``payportal reconcile``; run by ``payportal serve`` every
``RECONCILIATION_INTERVAL_S``) fetches every settlement line and payout the processor
reports and matches them, charge by charge, with the payments that captured them (the
attempt's ``charge_id`` in the read models) and the invoices those payments were
allocated to. A charge that matches — same amount, same currency, listed once — is
posted through the engine (``SettleCharge``: the fee to ``fees``, the net to ``cash``, out
of ``processor_clearing``), once per charge however often the job runs, and recorded in
``settlement_matches``. Everything else goes to the exceptions queue, once:

| kind | when |
|---|---|
| ``unknown_charge`` | a settled charge no payment of ours captured (older than the grace time) |
| ``missing_charge`` | a capture of ours (older than the grace time) the processor never settled |
| ``amount_mismatch`` | settled for another amount than the payment's |
| ``currency_mismatch`` | settled in another currency than the payment's |
| ``duplicate_charge`` | the same charge settled more than once (each extra line) |
| ``payout_total_mismatch`` | a payout's total is not the sum of its lines' nets |
| ``allocation_mismatch`` | the payment's allocations and credit do not add up to its amount |
| ``posting_rejected`` | the engine refused the settlement (e.g. settled before in another payout) |

Refunds and disputes the processor withheld from a payout (lines of ``type`` ``refund``
or ``dispute``, negative amounts) are matched by their charge with the payment and
posted through the engine (``SettleReversal``: out of ``cash`` back into
``processor_clearing``, and a dispute's fee to ``fees`` if the dispute came without it),
once per refund or dispute id. One the engine refuses (more refunded than we refunded,
another amount or fee than the dispute's) is a ``posting_rejected`` exception; one for a
charge of no payment of ours an ``unknown_charge``.

Re-running never duplicates a posting (the engine answers ``exists``) nor an exception
(its ``dedupe_key`` is unique). A merchant resolves an exception with a resolution and a
note (``resolve_exception``; ``POST /v1/reconciliation/exceptions/{id}/resolve``); a
resolved exception stays resolved. ``open_exceptions`` lists the queue for the console.

The grace time covers the moment between the processor capturing a charge and our books
recording it (and back): nothing younger is called missing or unknown yet. A report says
from when it covers charges (``covers_from``; the sandbox keeps charges in memory and
covers only its own lifetime); captures of ours before that are not expected in it. It may
also say until when (``covers_until``; Stripe pays a charge out days after capturing it):
captures of ours after that are not called missing yet.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, Protocol

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payportal.engine import Command, Result, ReversalKind, SettleCharge, SettleReversal
from payportal.persistence import tables
from payportal.persistence.tables_accounting import (
    reconciliation_exceptions,
    reconciliation_runs,
    settlement_matches,
)
from payportal.persistence.upserts import insert_ignoring_conflicts
from payportal.processors._settlement import Payout, SettlementLine, SettlementReport

__all__ = [
    "EXCEPTION_KINDS",
    "RESOLUTIONS",
    "ExceptionNotFound",
    "ReconciliationException",
    "ReconciliationRun",
    "list_exceptions",
    "open_exceptions",
    "reconcile",
    "resolve_exception",
]

EXCEPTION_KINDS: Final = (
    "unknown_charge", "missing_charge", "amount_mismatch", "currency_mismatch",
    "duplicate_charge", "payout_total_mismatch", "allocation_mismatch", "posting_rejected",
)  # fmt: skip
Resolution = Literal[
    "matched_manually", "processor_corrected", "refunded", "written_off", "not_an_issue"
]
RESOLUTIONS: Final = Resolution.__args__  # type: ignore[attr-defined]

# A charge captured this recently may not be in both books yet (callbacks, projection).
GRACE_MS_DEFAULT: Final = 10 * 60_000
# How often ``serve`` reconciles; each run re-reads the whole report and posts only news.
RECONCILIATION_INTERVAL_S: Final = 900
# Charge ids per IN (...) query, well under every driver's parameter limit.
IDS_PER_QUERY: Final = 500
# Settlements per call to the shards.
COMMANDS_PER_CALL: Final = 500
_CAPTURED: Final = ("succeeded", "partially_refunded", "refunded", "disputed")


class SettlementSource(Protocol):
    async def settlement_report(self) -> SettlementReport: ...


class Submitter(Protocol):
    async def submit_many(self, commands: Sequence[Command]) -> list[Any]: ...


class ReconciliationException(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: str
    processor: str
    payout_id: str | None
    charge_id: str | None
    payment_id: str | None
    account_id: str | None
    currency: str | None
    expected_minor: int | None
    reported_minor: int | None
    detail: str
    status: str  # open | resolved
    resolution: str | None
    note: str | None
    created_at_ms: int
    resolved_at_ms: int | None


class ReconciliationRun(msgspec.Struct, frozen=True, kw_only=True):
    payouts: int
    charges: int  # settlement lines reported
    matched: int  # lines matched with a payment (posted now or before)
    posted: int  # settlements posted to the ledger by this run
    exceptions_new: int
    exceptions_by_kind: dict[str, int]


class ExceptionNotFound(LookupError):
    pass


class _Payment(msgspec.Struct, frozen=True, kw_only=True):
    payment_id: str
    account_id: str
    amount_minor: int
    currency: str
    applied_minor: int
    unapplied_minor: int


class _Found(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    dedupe: str
    detail: str
    payout_id: str | None = None
    charge_id: str | None = None
    payment_id: str | None = None
    account_id: str | None = None
    currency: str | None = None
    expected_minor: int | None = None
    reported_minor: int | None = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


async def _payments_by_charge(
    engine: AsyncEngine, processor: str, charge_ids: Sequence[str]
) -> dict[str, _Payment]:
    a, p = tables.attempts, tables.payments
    found: dict[str, _Payment] = {}
    async with engine.connect() as connection:
        for chunk in _chunks(sorted(set(charge_ids)), IDS_PER_QUERY):
            result = await connection.execute(
                sa.select(a.c.charge_id, p.c.payment_id, p.c.account_id, p.c.amount_minor,
                          p.c.currency, p.c.amount_applied_minor, p.c.amount_unapplied_minor)
                .join(p, p.c.payment_id == a.c.payment_id)
                .where(a.c.processor == processor, a.c.status == "succeeded",
                       a.c.charge_id.in_(chunk))
            )  # fmt: skip
            for row in result:
                found[row.charge_id] = _Payment(
                    payment_id=row.payment_id, account_id=row.account_id,
                    amount_minor=row.amount_minor, currency=row.currency,
                    applied_minor=row.amount_applied_minor,
                    unapplied_minor=row.amount_unapplied_minor,
                )  # fmt: skip
    return found


async def _unsettled_captures(
    engine: AsyncEngine, processor: str, captured_from_ms: int, captured_before_ms: int
) -> list[tuple[str, _Payment]]:
    """Captured charges of ours not yet matched with a settlement, in the report's time."""
    a, p, m = tables.attempts, tables.payments, settlement_matches
    query = (
        sa.select(a.c.charge_id, p.c.payment_id, p.c.account_id, p.c.amount_minor, p.c.currency,
                  p.c.amount_applied_minor, p.c.amount_unapplied_minor)
        .join(p, p.c.payment_id == a.c.payment_id)
        .outerjoin(m, sa.and_(m.c.processor == processor, m.c.charge_id == a.c.charge_id))
        .where(a.c.processor == processor, a.c.status == "succeeded",
               a.c.charge_id.is_not(None), p.c.status.in_(_CAPTURED),
               p.c.finished_at_ms >= captured_from_ms,
               p.c.finished_at_ms <= captured_before_ms, m.c.charge_id.is_(None))
        .order_by(a.c.charge_id)
    )  # fmt: skip
    async with engine.connect() as connection:
        return [
            (row.charge_id, _Payment(
                payment_id=row.payment_id, account_id=row.account_id,
                amount_minor=row.amount_minor, currency=row.currency,
                applied_minor=row.amount_applied_minor,
                unapplied_minor=row.amount_unapplied_minor))
            for row in await connection.execute(query)
        ]  # fmt: skip


def _check_lines(
    lines: Sequence[SettlementLine],
    payouts: Sequence[Payout],
    payments: dict[str, _Payment],
    *,
    processor: str,
    young_after_s: int,
) -> tuple[list[tuple[SettlementLine, _Payment]], list[_Found]]:
    """The lines that match a payment, and every mismatch found in the report."""
    found: list[_Found] = []
    matched: list[tuple[SettlementLine, _Payment]] = []
    seen: Counter[str] = Counter()
    for line in lines:
        if line.type != "charge":
            continue  # refunds and disputes: ``_check_reversals``
        seen[line.charge] += 1
        where = f"{processor}:{line.payout}:{line.charge}"
        if seen[line.charge] > 1:
            found.append(_Found(
                kind="duplicate_charge", dedupe=f"duplicate_charge:{where}:{seen[line.charge]}",
                detail=f"charge {line.charge} is settled {seen[line.charge]} times",
                payout_id=line.payout, charge_id=line.charge, currency=line.currency,
                reported_minor=line.amount,
            ))  # fmt: skip
            continue
        payment = payments.get(line.charge)
        if payment is None:
            if line.created > young_after_s:
                continue  # our books may not have it yet
            found.append(_Found(
                kind="unknown_charge", dedupe=f"unknown_charge:{where}",
                detail=f"charge {line.charge} was settled but no payment of ours captured it",
                payout_id=line.payout, charge_id=line.charge, currency=line.currency,
                reported_minor=line.amount,
            ))  # fmt: skip
            continue
        ids = {"payout_id": line.payout, "charge_id": line.charge,
               "payment_id": payment.payment_id, "account_id": payment.account_id}  # fmt: skip
        if line.currency != payment.currency:
            found.append(_Found(
                kind="currency_mismatch", dedupe=f"currency_mismatch:{where}",
                detail=f"settled in {line.currency}, the payment is in {payment.currency}",
                currency=payment.currency, expected_minor=payment.amount_minor,
                reported_minor=line.amount, **ids,
            ))  # fmt: skip
            continue
        if line.amount != payment.amount_minor:
            found.append(_Found(
                kind="amount_mismatch", dedupe=f"amount_mismatch:{where}",
                detail=f"settled for {line.amount}, the payment is {payment.amount_minor}",
                currency=payment.currency, expected_minor=payment.amount_minor,
                reported_minor=line.amount, **ids,
            ))  # fmt: skip
            continue
        if payment.applied_minor + payment.unapplied_minor != payment.amount_minor:
            found.append(_Found(
                kind="allocation_mismatch", dedupe=f"allocation_mismatch:{where}",
                detail=(f"allocated {payment.applied_minor} and {payment.unapplied_minor} to "
                        f"credit of a {payment.amount_minor} payment"),
                currency=payment.currency, expected_minor=payment.amount_minor,
                reported_minor=payment.applied_minor + payment.unapplied_minor, **ids,
            ))  # fmt: skip
            continue
        matched.append((line, payment))
    nets: dict[str, int] = {}
    for line in lines:
        nets[line.payout] = nets.get(line.payout, 0) + line.net
    for payout in payouts:
        lines_minor = nets.get(payout.id, 0)
        if payout.amount != lines_minor:
            found.append(_Found(
                kind="payout_total_mismatch",
                dedupe=f"payout_total_mismatch:{processor}:{payout.id}:",
                detail=f"payout {payout.id} totals {payout.amount}, its lines {lines_minor}",
                payout_id=payout.id, currency=payout.currency, expected_minor=lines_minor,
                reported_minor=payout.amount,
            ))  # fmt: skip
    return matched, found


def _check_reversals(
    lines: Sequence[SettlementLine], payments: dict[str, _Payment], *, processor: str,
    young_after_s: int,
) -> tuple[list[tuple[SettlementLine, _Payment]], list[_Found]]:
    """The refund and dispute lines whose charge one of our payments captured, and the
    ones no payment of ours did."""
    found: list[_Found] = []
    matched: list[tuple[SettlementLine, _Payment]] = []
    for line in lines:
        if line.type == "charge":
            continue
        payment = payments.get(line.charge)
        if payment is None:
            if line.created > young_after_s:
                continue
            found.append(_Found(
                kind="unknown_charge",
                dedupe=f"unknown_charge:{processor}:{line.payout}:{line.charge}:{line.source}",
                detail=f"a {line.type} {line.source} of charge {line.charge} was withheld but "
                       "no payment of ours captured the charge",
                payout_id=line.payout, charge_id=line.charge, currency=line.currency,
                reported_minor=line.amount,
            ))  # fmt: skip
            continue
        matched.append((line, payment))
    return matched, found


async def _record(connection: AsyncConnection, processor: str, found: _Found) -> bool:
    values = msgspec.structs.asdict(found)
    dedupe = values.pop("dedupe")
    return await insert_ignoring_conflicts(
        connection, reconciliation_exceptions,
        {**values, "id": f"rex_{secrets.token_hex(12)}", "dedupe_key": dedupe[:255],
         "processor": processor, "detail": found.detail[:500], "status": "open"},
    )  # fmt: skip


async def reconcile(
    router: Submitter,
    engine: AsyncEngine,
    source: SettlementSource,
    *,
    processor: str = "sandbox",
    grace_ms: int = GRACE_MS_DEFAULT,
    clock_ms: Callable[[], int] = _now_ms,
) -> ReconciliationRun:
    """Match the processor's report with our books, post what matches, queue the rest."""
    report = await source.settlement_report()
    lines, payouts = report.lines, report.payouts
    now_ms = clock_ms()
    payments = await _payments_by_charge(engine, processor, [x.charge for x in lines])
    matched, found = _check_lines(lines, payouts, payments, processor=processor,
                                  young_after_s=(now_ms - grace_ms) // 1000)  # fmt: skip
    reversals, reversals_found = _check_reversals(
        lines, payments, processor=processor, young_after_s=(now_ms - grace_ms) // 1000
    )
    found.extend(reversals_found)
    reported = {line.charge for line in lines if line.type == "charge"}
    captured_before_ms = now_ms - grace_ms
    if report.covers_until is not None:
        captured_before_ms = min(captured_before_ms, report.covers_until * 1000)
    unsettled = await _unsettled_captures(
        engine, processor, report.covers_from * 1000, captured_before_ms
    )
    for charge_id, payment in unsettled:
        if charge_id not in reported:
            found.append(_Found(
                kind="missing_charge", dedupe=f"missing_charge:{processor}::{charge_id}",
                detail=f"payment {payment.payment_id} captured charge {charge_id}; "
                       "the processor reports no settlement of it",
                charge_id=charge_id, payment_id=payment.payment_id,
                account_id=payment.account_id, currency=payment.currency,
                expected_minor=payment.amount_minor,
            ))  # fmt: skip
    posted = 0
    settled: list[tuple[SettlementLine, _Payment]] = []
    for chunk in _chunks(matched, COMMANDS_PER_CALL):
        replies = await router.submit_many([
            SettleCharge(account_id=payment.account_id, payment_id=payment.payment_id,
                         charge_id=line.charge, payout_id=line.payout,
                         amount_minor=line.amount, fee_minor=line.fee, currency=line.currency)
            for line, payment in chunk
        ])  # fmt: skip
        for (line, payment), reply in zip(chunk, replies, strict=True):
            outcome = reply.outcome
            if outcome.result is Result.rejected:
                found.append(_Found(
                    kind="posting_rejected",
                    dedupe=f"posting_rejected:{processor}:{line.payout}:{line.charge}",
                    detail=f"the ledger refused the settlement: {outcome.rejection}",
                    payout_id=line.payout, charge_id=line.charge,
                    payment_id=payment.payment_id, account_id=payment.account_id,
                    currency=line.currency, expected_minor=payment.amount_minor,
                    reported_minor=line.amount,
                ))  # fmt: skip
                continue
            posted += outcome.result is Result.ok
            settled.append((line, payment))
    matched_reversals = 0
    for chunk in _chunks(reversals, COMMANDS_PER_CALL):
        replies = await router.submit_many([
            SettleReversal(account_id=payment.account_id, payment_id=payment.payment_id,
                           kind=ReversalKind(line.type), reversal_id=line.source or "",
                           payout_id=line.payout, amount_minor=-line.amount,
                           fee_minor=line.fee, currency=line.currency)
            for line, payment in chunk
        ])  # fmt: skip
        for (line, payment), reply in zip(chunk, replies, strict=True):
            outcome = reply.outcome
            if outcome.result is Result.rejected:
                found.append(_Found(
                    kind="posting_rejected",
                    dedupe=(f"posting_rejected:{processor}:{line.payout}:{line.charge}:"
                            f"{line.type}:{line.source}"),
                    detail=(f"the ledger refused the {line.type} {line.source} "
                            f"(fee {line.fee}): {outcome.rejection}"),
                    payout_id=line.payout, charge_id=line.charge,
                    payment_id=payment.payment_id, account_id=payment.account_id,
                    currency=line.currency, reported_minor=line.amount,
                ))  # fmt: skip
                continue
            posted += outcome.result is Result.ok
            matched_reversals += 1
    exceptions_new: Counter[str] = Counter()
    async with engine.begin() as connection:
        for line, payment in settled:
            await insert_ignoring_conflicts(connection, settlement_matches, {
                "processor": processor, "charge_id": line.charge, "payout_id": line.payout,
                "payment_id": payment.payment_id, "account_id": payment.account_id,
                "currency": line.currency, "amount_minor": line.amount,
                "fee_minor": line.fee, "net_minor": line.net,
            })  # fmt: skip
        for each in found:
            if await _record(connection, processor, each):
                exceptions_new[each.kind] += 1
        run = ReconciliationRun(
            payouts=len(payouts), charges=len(lines), matched=len(settled) + matched_reversals,
            posted=posted,
            exceptions_new=sum(exceptions_new.values()),
            exceptions_by_kind=dict(sorted(exceptions_new.items())),
        )  # fmt: skip
        await connection.execute(sa.insert(reconciliation_runs).values(
            processor=processor, payouts=run.payouts, charges=run.charges,
            matched=run.matched, posted=run.posted, exceptions_new=run.exceptions_new,
        ))  # fmt: skip
    return run


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite's CURRENT_TIMESTAMP is UTC without a zone
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp()) * 1000 + value.microsecond // 1000


def _exception(row: Any) -> ReconciliationException:
    return ReconciliationException(
        id=row.id, kind=row.kind, processor=row.processor, payout_id=row.payout_id,
        charge_id=row.charge_id, payment_id=row.payment_id, account_id=row.account_id,
        currency=row.currency, expected_minor=row.expected_minor,
        reported_minor=row.reported_minor, detail=row.detail, status=row.status,
        resolution=row.resolution, note=row.note, created_at_ms=_ms(row.created_at) or 0,
        resolved_at_ms=_ms(row.resolved_at),
    )  # fmt: skip


async def list_exceptions(
    engine: AsyncEngine,
    *,
    status: str | None = None,
    limit: int = 100,
    starting_after: str | None = None,
) -> tuple[list[ReconciliationException], bool]:
    """Exceptions in id order, one page; and whether more follow."""
    x = reconciliation_exceptions
    query = sa.select(x).order_by(x.c.id).limit(limit + 1)
    if status is not None:
        query = query.where(x.c.status == status)
    if starting_after is not None:
        query = query.where(x.c.id > starting_after)
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return [_exception(r) for r in rows[:limit]], len(rows) > limit


async def open_exceptions(engine: AsyncEngine) -> list[ReconciliationException]:
    """Every open exception, oldest first (for the console)."""
    x = reconciliation_exceptions
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.select(x).where(x.c.status == "open").order_by(x.c.created_at, x.c.id)
            )
        ).all()
    return [_exception(r) for r in rows]


async def resolve_exception(
    engine: AsyncEngine, exception_id: str, *, resolution: str, note: str
) -> ReconciliationException:
    """Resolve an open exception; resolving a resolved one changes nothing and returns it."""
    assert resolution in RESOLUTIONS, resolution
    x = reconciliation_exceptions
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(x)
            .where(x.c.id == exception_id, x.c.status == "open")
            .values(status="resolved", resolution=resolution, note=note[:1000],
                    resolved_at=sa.func.now())
        )  # fmt: skip
        row = (await connection.execute(sa.select(x).where(x.c.id == exception_id))).first()
    if row is None:
        raise ExceptionNotFound(exception_id)
    return _exception(row)
