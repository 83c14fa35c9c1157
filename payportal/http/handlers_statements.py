"""``GET /v1/accounts/{id}/statement``: an account's statement as PDF, CSV or JSON.

Query: ``format=pdf|csv|json`` (default ``pdf``), ``from`` and ``to`` (``YYYY-MM-DD``,
UTC days, both inclusive; absent: from the account's opening, up to now). ``from`` after
``to``, a malformed date or an unknown format is a 400 naming the parameter. A merchant
sees every account, a payer the accounts they own; any other account is a 404.

Freshness: the statement is read from the journal, which holds a payment before its
acknowledgement is sent, so a statement asked for right after a payment shows it. The
handler still confirms it: it reads the account through its shard (``ReadAccount``, in
the account's serial order) and checks that the journal it read reaches that version,
waiting up to ``FRESHNESS_WAIT_S`` if it does not. ``Statement-Complete: true`` says
the statement covers everything the account had done when the request arrived; ``false``
that it was answered from what the journal held when the wait ran out.

Headers: ``Statement-Version`` (see ``payportal.statements``), ``Statement-Complete``,
``Cache-Control: no-store`` (a statement is personal and changes with every payment),
and for PDF and CSV a ``Content-Disposition: attachment`` with a file name that names the
account, the period and the version.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Final, Literal

import msgspec
from aiohttp import web

from payportal.statements import (
    Balances,
    Statement,
    StatementAccountNotFound,
    build_statement,
    filename_for,
    render_csv,
    render_pdf,
    wait_for_journal,
)

from .auth import authenticate, authorize_account
from .codec import decode_query, encode
from .errors import not_found, parameter_invalid
from .reads import read_account
from .typedefs import ROUTER, STORE

__all__ = [
    "FRESHNESS_WAIT_S",
    "StatementBalance",
    "StatementLineOut",
    "StatementOut",
    "StatementQuery",
    "get_statement",
    "statement_view",
]

# The longest a request waits for the journal to reach the version the shard reported.
# Commits land in order before replies, so this is a safety net that should never wait.
FRESHNESS_WAIT_S: Final = 2.0

Minor = Annotated[int, msgspec.Meta(description="Integer minor units.")]
UnixSeconds = Annotated[int, msgspec.Meta(description="Unix time in seconds.")]


class StatementQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal["pdf", "csv", "json"] = "pdf"
    from_: dt.date | None = msgspec.field(default=None, name="from")
    to: dt.date | None = None


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    pass


class StatementPeriod(_Out, frozen=True, kw_only=True):
    start: dt.date
    end: dt.date  # inclusive


class StatementBalance(_Out, frozen=True, kw_only=True):
    outstanding: Minor
    credit: Minor
    # outstanding - credit: positive when the payer owes.
    balance: Minor


class StatementLineOut(_Out, frozen=True, kw_only=True):
    version: int
    date: dt.date
    posted_at: UnixSeconds
    kind: Literal[
        "invoice", "credit_applied", "void", "payment", "allocation", "credit_created",
        "refund", "adjustment",
    ]  # fmt: skip
    detail: bool
    reference: str
    description: str
    amount: Minor
    outstanding_change: Minor
    credit_change: Minor
    balance_change: Minor
    balance: Minor
    invoice: str | None
    invoice_number: str | None
    payment: str | None
    refund: str | None


class StatementTotalsOut(_Out, frozen=True, kw_only=True):
    invoices_count: int
    invoiced: Minor
    voids_count: int
    voided: Minor
    voided_outstanding: Minor
    payments_count: int
    payments: Minor
    applied_to_invoices: Minor
    credit_created: Minor
    credit_applied: Minor
    refunds_count: int
    refunds: Minor
    refunds_from_credit: Minor
    adjustments_outstanding: Minor
    adjustments_credit: Minor


class StatementOpenInvoice(_Out, frozen=True, kw_only=True):
    invoice: str
    number: str
    due_date: dt.date
    amount_due: Minor
    amount_remaining: Minor


class StatementLedger(_Out, frozen=True, kw_only=True):
    """Signed, debit-positive ledger balances by ledger account, before and after."""

    opening: dict[str, int]
    closing: dict[str, int]


class StatementOut(_Out, frozen=True, kw_only=True):
    object: Literal["statement"] = "statement"
    account: str
    account_name: str
    currency: str
    period: StatementPeriod
    version: int
    journal_version: int
    generated_at: UnixSeconds
    opening_balance: StatementBalance
    closing_balance: StatementBalance
    totals: StatementTotalsOut
    lines: list[StatementLineOut]
    open_invoices: list[StatementOpenInvoice]
    ledger: StatementLedger


def statement_view(s: Statement) -> StatementOut:
    def balance(b: Balances) -> StatementBalance:
        return StatementBalance(
            outstanding=b.outstanding_minor, credit=b.credit_minor, balance=b.balance_minor
        )

    totals = {
        name.removesuffix("_minor"): value
        for name, value in msgspec.structs.asdict(s.totals).items()
    }
    return StatementOut(
        account=s.account_id, account_name=s.account_name, currency=s.currency,
        period=StatementPeriod(start=s.period_start, end=s.period_end),
        version=s.version, journal_version=s.journal_version,
        generated_at=s.generated_at_ms // 1000,
        opening_balance=balance(s.opening), closing_balance=balance(s.closing),
        totals=StatementTotalsOut(**totals),
        lines=[
            StatementLineOut(
                version=line.version, date=line.posted_on, posted_at=line.posted_at_ms // 1000,
                kind=line.kind.value, detail=line.detail, reference=line.reference,
                description=line.description, amount=line.amount_minor,
                outstanding_change=line.outstanding_change_minor,
                credit_change=line.credit_change_minor,
                balance_change=line.balance_change_minor, balance=line.balance_minor,
                invoice=line.invoice_id, invoice_number=line.invoice_number,
                payment=line.payment_id, refund=line.refund_id,
            )
            for line in s.lines
        ],
        open_invoices=[
            StatementOpenInvoice(
                invoice=i.invoice_id, number=i.number, due_date=i.due_date,
                amount_due=i.amount_due_minor, amount_remaining=i.amount_remaining_minor,
            )
            for i in s.open_invoices
        ],
        ledger=StatementLedger(opening=s.ledger_opening, closing=s.ledger_closing),
    )  # fmt: skip


async def get_statement(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    account_id = request.match_info["id"]
    await authorize_account(request, principal, account_id)
    query = decode_query(request, StatementQuery)
    if query.from_ is not None and query.to is not None and query.from_ > query.to:
        raise parameter_invalid("from", "from must not be after to.")
    reply = await read_account(request.app[ROUTER], account_id)
    if reply.balance is None:
        raise not_found("id", "account")
    complete = await wait_for_journal(
        request.app[STORE].engine, account_id, reply.version, timeout_s=FRESHNESS_WAIT_S
    )
    try:
        statement = await build_statement(
            request.app[STORE].engine, account_id, start=query.from_, end=query.to
        )
    except StatementAccountNotFound:
        raise not_found("id", "account") from None
    headers = {
        "Statement-Version": str(statement.version),
        "Statement-Complete": "true" if complete else "false",
        "Cache-Control": "no-store",
    }
    if query.format == "json":
        body = encode(statement_view(statement))
        return web.Response(body=body, content_type="application/json", headers=headers)
    if query.format == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{filename_for(statement, "csv")}"'
        return web.Response(
            body=render_csv(statement).encode(), content_type="text/csv", charset="utf-8",
            headers=headers,
        )  # fmt: skip
    # Tens of milliseconds of CPU for a long statement: off the event loop.
    pdf = await asyncio.to_thread(render_pdf, statement)
    headers["Content-Disposition"] = f'attachment; filename="{filename_for(statement, "pdf")}"'
    return web.Response(body=pdf, content_type="application/pdf", headers=headers)
