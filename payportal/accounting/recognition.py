"""The revenue recognition job and the revenue report.

The job (``recognize_revenue``; ``payportal revenue recognize [--through DAY]``; run by
``payportal serve`` every ``RECOGNITION_INTERVAL_S``) asks every account's shard to
``RecognizeRevenue`` through a past day — yesterday (UTC) unless told — so the postings
go through the engine, in each account's serial order, into the journal. Running it
again through the same day posts nothing; an account the engine finds nothing new for
writes nothing. Once every account was asked, the run is recorded as completed in
``revenue_recognition_runs``; the latest completed day is what the report is as of.

The report (``revenue_report``; ``GET /v1/reports/revenue``) reads the journal's revenue
events and returns, per currency and month of service, what the ledger recognized and
still defers beside a recomputation from the invoices alone, refunds (contra-revenue),
and the accuracy of the one against the other (``_revenue_facts`` says how). Accuracy
must be exactly 1; anything less comes with the invoices that differ.
``recognition_accuracy_report`` is the same report for the metrics and the console.

Days are UTC calendar dates throughout (an invoice's date is the UTC date of its issue).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.engine import Command, Event, RecognizeRevenue, Rejection, Result, utc_date
from payportal.persistence import tables
from payportal.persistence.tables_accounting import revenue_recognition_runs
from payportal.persistence.upserts import upsert

from ._revenue_facts import (
    REVENUE_EVENT_TYPES,
    AccountRevenueFacts,
    DifferingInvoice,
    RevenueMonth,
    RevenueReport,
    build_revenue_report,
    facts_from_events,
)

__all__ = [
    "AccuracyReport",
    "DifferingInvoice",
    "RecognitionRun",
    "RevenueMonth",
    "RevenueReport",
    "recognition_accuracy_report",
    "recognize_revenue",
    "recognized_through",
    "render_revenue_csv",
    "revenue_report",
]

# The report and the accuracy figure are one and the same object.
AccuracyReport = RevenueReport

# Accounts asked per call to the shards: one batch per shard each, far below the router's
# queue limit.
ACCOUNTS_PER_CALL: Final = 500
# How often ``serve`` runs the job; a run for a day already done costs one read per shard
# batch and writes nothing, so an hour keeps the report at most an hour behind midnight.
RECOGNITION_INTERVAL_S: Final = 3_600

_event_decoder: Final = msgspec.msgpack.Decoder(Event)
# Journal rows fetched per round trip while reading the revenue events.
ROWS_PER_FETCH: Final = 2_000


class Submitter(Protocol):
    async def submit_many(self, commands: Sequence[Command]) -> list[Any]: ...


class RecognitionRun(msgspec.Struct, frozen=True, kw_only=True):
    through: dt.date
    accounts_total: int
    accounts_posted: int  # accounts for which something was recognized in this run


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _account_ids(engine: AsyncEngine) -> list[str]:
    a = tables.accounts
    async with engine.connect() as connection:
        result = await connection.execute(sa.select(a.c.account_id).order_by(a.c.account_id))
        return [row.account_id for row in result]


async def recognize_revenue(
    router: Submitter,
    engine: AsyncEngine,
    *,
    through: dt.date | None = None,
    clock_ms: Callable[[], int] = _now_ms,
    progress: Callable[[int], None] | None = None,
) -> RecognitionRun:
    """Recognize every account's revenue through ``through`` (default: yesterday, UTC).

    Raises ``ValueError`` when ``through`` is not a past day for the shards."""
    if through is None:
        through = utc_date(clock_ms()) - dt.timedelta(days=1)
    account_ids = await _account_ids(engine)
    posted = 0
    for first in range(0, len(account_ids), ACCOUNTS_PER_CALL):
        chunk = account_ids[first : first + ACCOUNTS_PER_CALL]
        replies = await router.submit_many(
            [RecognizeRevenue(account_id=a, through=through) for a in chunk]
        )
        for reply in replies:
            outcome = reply.outcome
            if outcome.rejection is Rejection.recognition_date_must_be_past:
                raise ValueError(f"through: {through.isoformat()} is not a past day yet")
            posted += outcome.result is Result.ok
        if progress is not None:
            progress(len(chunk))
    run = RecognitionRun(through=through, accounts_total=len(account_ids), accounts_posted=posted)
    r = revenue_recognition_runs
    async with engine.begin() as connection:
        await upsert(
            connection, r,
            {"through_date": through, "accounts_total": run.accounts_total,
             "accounts_posted": posted, "completed_at": sa.func.now()},
            keys=("through_date",),
            update={"accounts_total": run.accounts_total,
                    "accounts_posted": r.c.accounts_posted + posted,
                    "completed_at": sa.func.now()},
        )  # fmt: skip
    return run


async def recognized_through(engine: AsyncEngine) -> dt.date | None:
    """The latest day a recognition run completed through (None: never)."""
    r = revenue_recognition_runs
    async with engine.connect() as connection:
        found = (
            await connection.execute(
                sa.select(sa.func.max(r.c.through_date)).where(r.c.completed_at.is_not(None))
            )
        ).scalar()
    return found if isinstance(found, dt.date) else None


async def load_revenue_facts(engine: AsyncEngine) -> list[AccountRevenueFacts]:
    """Every account's revenue facts, from the journal (the source of truth)."""
    j = tables.journal
    query = (
        sa.select(j.c.account_id, j.c.payload)
        .where(j.c.event_type.in_(REVENUE_EVENT_TYPES))
        .order_by(j.c.account_id, j.c.version)
    )
    facts: list[AccountRevenueFacts] = []
    current: str | None = None
    events: list[Event] = []
    async with engine.connect() as connection:
        result = await connection.stream(query)
        async for rows in result.partitions(ROWS_PER_FETCH):
            for row in rows:
                if row.account_id != current:
                    if current is not None:
                        facts.append(facts_from_events(current, events))
                    current, events = row.account_id, []
                events.append(_event_decoder.decode(row.payload))
    if current is not None:
        facts.append(facts_from_events(current, events))
    return facts


async def revenue_report(
    engine: AsyncEngine,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    as_of: dt.date | None = None,
) -> RevenueReport:
    """Recognized and deferred revenue per currency and month of service (``start``'s month
    through ``end``'s), as of ``as_of`` (default: the latest completed recognition run)."""
    if as_of is None:
        as_of = await recognized_through(engine)
    return build_revenue_report(await load_revenue_facts(engine), as_of=as_of, start=start,
                                end=end)  # fmt: skip


async def recognition_accuracy_report(
    engine: AsyncEngine, *, start: dt.date | None = None, end: dt.date | None = None
) -> AccuracyReport:
    """``.accuracy`` (a Fraction in [0, 1]) over the months of ``start``..``end`` and
    ``.differing_invoices``; must be 1 with none."""
    return await revenue_report(engine, start=start, end=end)


CSV_COLUMNS: Final = (
    "as_of", "currency", "month", "recognized_minor", "deferred_minor",
    "recomputed_recognized_minor", "recomputed_deferred_minor", "refunds_minor", "accuracy",
)  # fmt: skip


def render_revenue_csv(report: RevenueReport) -> str:
    """One row per currency and month; accuracy as an exact fraction (``1``, ``997/1000``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    as_of = report.as_of.isoformat() if report.as_of is not None else ""
    for month in report.months:
        writer.writerow([
            as_of, month.currency, month.month, month.recognized_minor, month.deferred_minor,
            month.recomputed_recognized_minor, month.recomputed_deferred_minor,
            month.refunds_minor, str(month.accuracy),
        ])  # fmt: skip
    return buffer.getvalue()
