"""The three headline figures, computed from the payments read model for a time window.

Definitions (they are the contract of ``GET /v1/metrics/summary`` and of the console):

- A payment *finishes processing* when it first reaches a terminal status (the engine's
  ``PAYMENT_TERMINAL``); its ``finished_at_ms`` is that moment and its processing time is
  ``finished_at_ms - created_at_ms`` (``processing_ms`` in the API). A payment put back
  to processing with a new payment method starts a new measurement.
- The window is half-open, ``since <= finished_at < until``: a payment belongs to the
  window in which it finished, whenever it was created.
- It *succeeded* if its status now is ``succeeded`` or one only a captured payment can
  reach (``partially_refunded``, ``refunded``, ``disputed``): a later refund or dispute
  does not make the processing a failure. It *failed* if its status is ``failed`` or
  ``requires_payment_method`` (a hard decline, or retries exhausted).
- ``canceled`` payments are left out of both figures: a cancellation is the payer's or
  the merchant's decision, not an outcome of processing. They are reported as a count.
- Payment success rate = succeeded / (succeeded + failed); average processing time is
  over the same payments. Both are None when the window holds no such payment.
- Revenue recognition accuracy is the accounting module's
  ``recognition_accuracy_report`` for the window's dates; None where that module is not
  installed (never a made-up 1.0).

Figures are exact ``Fraction``s here; the HTTP layer turns them into JSON numbers.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from fractions import Fraction
from typing import Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.engine import PaymentStatus
from payportal.persistence._engine import READ
from payportal.persistence.tables import payments

__all__ = [
    "FAILED_STATUSES",
    "SUCCEEDED_STATUSES",
    "HeadlineFigures",
    "headline_figures",
    "recognition_accuracy",
]

log = logging.getLogger(__name__)

S = PaymentStatus
SUCCEEDED_STATUSES: Final = frozenset({S.succeeded, S.partially_refunded, S.refunded, S.disputed})
FAILED_STATUSES: Final = frozenset({S.failed, S.requires_payment_method})
CANCELED_STATUSES: Final = frozenset({S.canceled})


class HeadlineFigures(msgspec.Struct, frozen=True, kw_only=True):
    since: dt.datetime
    until: dt.datetime
    # Succeeded + failed: the payments both figures are computed over.
    payments_counted: int
    payments_succeeded: int
    payments_failed: int
    payments_canceled: int
    payment_processing_ms_total: int
    payment_processing_ms_avg: Fraction | None
    payment_success_rate: Fraction | None
    revenue_recognition_accuracy: Fraction | None


def _ms(value: dt.datetime) -> int:
    assert value.tzinfo is not None, "windows are in aware datetimes"
    return int(value.timestamp() * 1000)


async def headline_figures(
    engine: AsyncEngine, *, since: dt.datetime, until: dt.datetime, accuracy: bool = True
) -> HeadlineFigures:
    """Average processing time, success rate and recognition accuracy for payments that
    finished processing in ``[since, until)`` (see the module docstring). With
    ``accuracy=False`` the accuracy (which may replay the ledger) is not computed: None."""
    assert since <= until, (since, until)
    p = payments.c
    query = (
        sa.select(p.status, sa.func.count(), sa.func.sum(p.finished_at_ms - p.created_at_ms))
        .where(p.finished_at_ms >= _ms(since), p.finished_at_ms < _ms(until))
        .group_by(p.status)
    )
    counts = {"succeeded": 0, "failed": 0, "canceled": 0}
    processing_ms_total = 0
    async with engine.execution_options(**READ).connect() as connection:
        for status, count, processing_ms in await connection.execute(query):
            if status in SUCCEEDED_STATUSES:
                group = "succeeded"
            elif status in FAILED_STATUSES:
                group = "failed"
            elif status in CANCELED_STATUSES:
                counts["canceled"] += int(count)
                continue
            else:
                # Not terminal, so it cannot have finished: the read model is ahead of a
                # reset (a replaced payment method) — leave it out until it finishes again.
                continue
            counts[group] += int(count)
            processing_ms_total += int(processing_ms or 0)
    counted = counts["succeeded"] + counts["failed"]
    return HeadlineFigures(
        since=since,
        until=until,
        payments_counted=counted,
        payments_succeeded=counts["succeeded"],
        payments_failed=counts["failed"],
        payments_canceled=counts["canceled"],
        payment_processing_ms_total=processing_ms_total,
        payment_processing_ms_avg=Fraction(processing_ms_total, counted) if counted else None,
        payment_success_rate=Fraction(counts["succeeded"], counted) if counted else None,
        revenue_recognition_accuracy=(
            await recognition_accuracy(engine, since=since, until=until) if accuracy else None
        ),
    )


async def recognition_accuracy(
    engine: AsyncEngine, *, since: dt.datetime, until: dt.datetime
) -> Fraction | None:
    """The accounting module's accuracy for the window's dates, or None without it."""
    try:
        accounting = importlib.import_module("payportal.accounting")
        report_for = accounting.recognition_accuracy_report
    except (ImportError, AttributeError):
        return None
    # ``until`` is exclusive: a window ending at midnight covers the day before it.
    last = until - dt.timedelta(microseconds=1) if until > since else until
    try:
        report = await report_for(engine, start=since.date(), end=last.date())
    except Exception:
        # An unavailable figure, not a failed summary; the traceback goes to the log.
        log.exception("revenue recognition accuracy unavailable")
        return None
    return Fraction(report.accuracy)
