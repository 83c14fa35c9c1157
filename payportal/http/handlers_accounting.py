"""Accounting endpoints (merchant only; anyone else gets 404): the revenue report and the
reconciliation exceptions queue. Thin: decode, call ``payportal.accounting``, encode.

- ``GET /v1/reports/revenue?from&to&format=json|csv``: recognized and deferred revenue per
  currency and month of service (``from``'s month through ``to``'s, UTC days), as of the
  latest completed recognition run, beside the recomputation from the invoices, refunds,
  and the accuracy per month and overall (1 exactly, or below 1 with the invoices that
  differ). Accuracy is a number for reading and an exact fraction (``accuracy_exact``,
  ``"1"`` or ``"997/1000"``) for checking.
- ``GET /v1/reconciliation/exceptions?status=open|resolved&limit&starting_after``.
- ``POST /v1/reconciliation/exceptions/{id}/resolve {resolution, note}``: resolving a
  resolved exception changes nothing and answers it as it is.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from payportal.accounting import (
    ReconciliationException,
    list_exceptions,
    render_revenue_csv,
    resolve_exception,
    revenue_report,
)
from payportal.accounting.reconciliation import ExceptionNotFound

from .auth import Principal, authenticate
from .codec import decode_body, decode_query, respond
from .errors import not_found, parameter_invalid
from .schemas import Limit, ListQuery, one_line
from .typedefs import STORE

__all__ = [
    "ExceptionList",
    "ExceptionListQuery",
    "ExceptionResolve",
    "RevenueReportOut",
    "RevenueReportQuery",
    "get_revenue_report",
    "list_reconciliation_exceptions",
    "resolve_reconciliation_exception",
]

Minor = Annotated[int, msgspec.Meta(description="Integer minor units.")]
UnixSeconds = Annotated[int, msgspec.Meta(description="Unix time in seconds.")]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1, description="1 is exact.")]
ExactRatio = Annotated[str, msgspec.Meta(description="The exact fraction, e.g. 1 or 997/1000.")]


class RevenueReportQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    from_: dt.date | None = msgspec.field(default=None, name="from")
    to: dt.date | None = None
    format: Literal["json", "csv"] = "json"


class ExceptionListQuery(ListQuery, frozen=True, kw_only=True):
    status: Literal["open", "resolved"] | None = None
    limit: Limit = 100


Note = one_line(1000, min_length=1)


class ExceptionResolve(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    resolution: Literal[
        "matched_manually", "processor_corrected", "refunded", "written_off", "not_an_issue"
    ]
    note: Note


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    pass


class RevenueMonthOut(_Out, frozen=True, kw_only=True):
    currency: str
    month: Annotated[str, msgspec.Meta(description="YYYY-MM, the month of service.")]
    recognized: Minor
    deferred: Minor
    recomputed_recognized: Minor
    recomputed_deferred: Minor
    refunds: Minor
    accuracy: Ratio
    accuracy_exact: ExactRatio


class DifferingInvoiceOut(_Out, frozen=True, kw_only=True):
    account: str
    invoice: str
    currency: str
    month: str
    recognized: Minor
    recomputed: Minor


class CurrencyAccuracyOut(_Out, frozen=True, kw_only=True):
    currency: str
    accuracy: Ratio
    accuracy_exact: ExactRatio


class RevenueReportOut(_Out, frozen=True, kw_only=True):
    object: Literal["revenue_report"] = "revenue_report"
    as_of: Annotated[
        dt.date | None,
        msgspec.Meta(description="Recognized through the end of this UTC day (null: never)."),
    ]
    accuracy: Ratio
    accuracy_exact: ExactRatio
    accuracy_by_currency: list[CurrencyAccuracyOut]
    months: list[RevenueMonthOut]
    differing_invoices: list[DifferingInvoiceOut]


class ReconciliationExceptionOut(_Out, frozen=True, kw_only=True):
    id: str
    object: Literal["reconciliation_exception"] = "reconciliation_exception"
    kind: str
    processor: str
    payout: str | None
    charge: str | None
    payment: str | None
    account: str | None
    currency: str | None
    expected_amount: Minor | None
    reported_amount: Minor | None
    detail: str
    status: Literal["open", "resolved"]
    resolution: str | None
    note: str | None
    created_at: UnixSeconds
    resolved_at: UnixSeconds | None


class ExceptionList(_Out, frozen=True, kw_only=True):
    data: list[ReconciliationExceptionOut]
    has_more: bool


async def _merchant(request: web.Request) -> Principal:
    """Merchant-only operations do not exist for anyone else: 404, never 403."""
    principal = await authenticate(request)
    if not principal.is_merchant:
        raise not_found(None, "resource")
    return principal


def _ratio(value: Fraction) -> tuple[float, str]:
    return float(value), str(value)


async def get_revenue_report(request: web.Request) -> web.Response:
    await _merchant(request)
    query = decode_query(request, RevenueReportQuery)
    if query.from_ is not None and query.to is not None and query.from_ > query.to:
        raise parameter_invalid("from", "from must not be after to.")
    report = await revenue_report(request.app[STORE].engine, start=query.from_, end=query.to)
    if query.format == "csv":
        return web.Response(
            text=render_revenue_csv(report), content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="revenue.csv"',
                     "Cache-Control": "no-store"},
        )  # fmt: skip
    accuracy, exact = _ratio(report.accuracy)
    return respond(
        RevenueReportOut(
            as_of=report.as_of, accuracy=accuracy, accuracy_exact=exact,
            accuracy_by_currency=[
                CurrencyAccuracyOut(currency=c, accuracy=float(a), accuracy_exact=str(a))
                for c, a in report.accuracy_by_currency.items()
            ],
            months=[
                RevenueMonthOut(
                    currency=m.currency, month=m.month, recognized=m.recognized_minor,
                    deferred=m.deferred_minor,
                    recomputed_recognized=m.recomputed_recognized_minor,
                    recomputed_deferred=m.recomputed_deferred_minor, refunds=m.refunds_minor,
                    accuracy=float(m.accuracy), accuracy_exact=str(m.accuracy),
                )
                for m in report.months
            ],
            differing_invoices=[
                DifferingInvoiceOut(
                    account=d.account_id, invoice=d.invoice_id, currency=d.currency,
                    month=d.month, recognized=d.recognized_minor, recomputed=d.recomputed_minor,
                )
                for d in report.differing_invoices
            ],
        )
    )  # fmt: skip


def _exception_view(x: ReconciliationException) -> ReconciliationExceptionOut:
    return ReconciliationExceptionOut(
        id=x.id, kind=x.kind, processor=x.processor, payout=x.payout_id, charge=x.charge_id,
        payment=x.payment_id, account=x.account_id, currency=x.currency,
        expected_amount=x.expected_minor, reported_amount=x.reported_minor, detail=x.detail,
        status="resolved" if x.status == "resolved" else "open", resolution=x.resolution,
        note=x.note, created_at=x.created_at_ms // 1000,
        resolved_at=None if x.resolved_at_ms is None else x.resolved_at_ms // 1000,
    )  # fmt: skip


async def list_reconciliation_exceptions(request: web.Request) -> web.Response:
    await _merchant(request)
    query = decode_query(request, ExceptionListQuery)
    found, has_more = await list_exceptions(
        request.app[STORE].engine, status=query.status, limit=query.limit,
        starting_after=query.starting_after,
    )  # fmt: skip
    return respond(ExceptionList(data=[_exception_view(x) for x in found], has_more=has_more))


async def resolve_reconciliation_exception(request: web.Request) -> web.Response:
    await _merchant(request)
    body, _ = await decode_body(request, ExceptionResolve)
    try:
        resolved = await resolve_exception(
            request.app[STORE].engine, request.match_info["id"], resolution=body.resolution,
            note=body.note,
        )  # fmt: skip
    except ExceptionNotFound:
        raise not_found("id", "reconciliation exception") from None
    return respond(_exception_view(resolved))
