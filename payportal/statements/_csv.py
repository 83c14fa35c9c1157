"""A statement as CSV: one row per line, between its opening and closing rows, then totals.

Columns never change name or order (``COLUMNS``); ``row_type`` says what a row is:
``statement`` (who and when), ``opening``, ``line``, ``closing``, then one ``total`` per
figure of ``StatementTotals`` (``kind`` names it). Amounts are exact decimals of the
currency's minor unit (``"-12.34"``), never floats; ``outstanding``, ``credit`` and
``balance`` are the running figures after each row.

Free text (descriptions, references, names: a merchant or a payer typed them) is made
inert for spreadsheets: a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return is prefixed with ``'`` (OWASP's CSV injection advice), so it is shown
as text and never evaluated as a formula. Numeric columns are ours and left as numbers.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Final

from ._format import decimal_amount
from ._model import Statement, StatementTotals

__all__ = ["COLUMNS", "TOTAL_LABELS", "render_csv", "safe_cell"]

COLUMNS: Final = (
    "row_type", "date", "version", "kind", "reference", "description", "invoice_id",
    "payment_id", "refund_id", "amount", "outstanding_change", "credit_change",
    "balance_change", "outstanding", "credit", "balance", "currency",
)  # fmt: skip

# Characters a spreadsheet may take as the start of a formula.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")

# The totals written as rows, in order, with a label for people.
TOTAL_LABELS: Final[dict[str, str]] = {
    "invoiced_minor": "Invoiced",
    "voided_minor": "Voided",
    "voided_outstanding_minor": "Voided while owed",
    "payments_minor": "Payments",
    "applied_to_invoices_minor": "Payments applied to invoices",
    "credit_created_minor": "Credit created",
    "credit_applied_minor": "Credit applied",
    "refunds_minor": "Refunds",
    "refunds_from_credit_minor": "Refunds taken from credit",
    "adjustments_outstanding_minor": "Adjustments to outstanding",
    "adjustments_credit_minor": "Adjustments to credit",
}
assert set(TOTAL_LABELS) <= set(StatementTotals.__struct_fields__)


def safe_cell(text: str) -> str:
    if text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def render_csv(statement: Statement) -> str:
    s = statement

    def money(amount_minor: int) -> str:
        return decimal_amount(amount_minor, s.currency)

    generated = dt.datetime.fromtimestamp(s.generated_at_ms / 1000, dt.UTC)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerow({
        "row_type": "statement", "date": s.period_end.isoformat(), "version": s.version,
        "reference": safe_cell(s.account_id),
        "description": safe_cell(
            f"Statement for {s.account_name}, {s.period_start.isoformat()} to "
            f"{s.period_end.isoformat()}, generated {generated.isoformat(timespec='seconds')}"
        ),
        "currency": s.currency,
    })  # fmt: skip
    outstanding, credit = s.opening.outstanding_minor, s.opening.credit_minor
    writer.writerow({
        "row_type": "opening", "date": s.period_start.isoformat(),
        "outstanding": money(outstanding), "credit": money(credit),
        "balance": money(outstanding - credit), "currency": s.currency,
    })  # fmt: skip
    for line in s.lines:
        outstanding += line.outstanding_change_minor
        credit += line.credit_change_minor
        assert outstanding - credit == line.balance_minor, line
        writer.writerow({
            "row_type": "line", "date": line.posted_on.isoformat(), "version": line.version,
            "kind": line.kind.value, "reference": safe_cell(line.reference),
            "description": safe_cell(line.description),
            "invoice_id": safe_cell(line.invoice_id or ""),
            "payment_id": safe_cell(line.payment_id or ""),
            "refund_id": safe_cell(line.refund_id or ""), "amount": money(line.amount_minor),
            "outstanding_change": money(line.outstanding_change_minor),
            "credit_change": money(line.credit_change_minor),
            "balance_change": money(line.balance_change_minor),
            "outstanding": money(outstanding), "credit": money(credit),
            "balance": money(line.balance_minor), "currency": s.currency,
        })  # fmt: skip
    closing = s.closing
    assert (outstanding, credit) == (closing.outstanding_minor, closing.credit_minor)
    writer.writerow({
        "row_type": "closing", "date": s.period_end.isoformat(),
        "outstanding": money(closing.outstanding_minor), "credit": money(closing.credit_minor),
        "balance": money(closing.balance_minor), "currency": s.currency,
    })  # fmt: skip
    for name, label in TOTAL_LABELS.items():
        writer.writerow({
            "row_type": "total", "kind": name.removesuffix("_minor"), "description": label,
            "amount": money(getattr(s.totals, name)), "currency": s.currency,
        })  # fmt: skip
    return out.getvalue()
