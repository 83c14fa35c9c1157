"""Statement renderings: amounts are exact for every currency exponent, the CSV keeps its
columns, reads back to the statement's figures and is inert in a spreadsheet, and the PDF
is a well-formed document that shows the figures, runs over several pages when long and
survives names outside Latin-1. Statements here are built by hand (pure; no database)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zlib
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payportal.engine import CURRENCY_EXPONENTS
from payportal.statements import (
    Balances,
    LineKind,
    OpenInvoiceLine,
    Statement,
    StatementLine,
    StatementTotals,
    decimal_amount,
    format_amount,
    render_csv,
    render_pdf,
    safe_cell,
)

DAY = dt.date(2026, 3, 2)


def pdf_text(pdf: bytes) -> str:
    shown: list[str] = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            data = zlib.decompress(match.group(1))
        except zlib.error:
            continue
        for text in re.findall(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj", data):
            shown.append(re.sub(rb"\\(.)", rb"\1", text).decode("latin-1"))
    return "\n".join(shown)


def _statement(
    invoices: list[tuple[str, int]], payment_minor: int, *, name: str = "Ada Lovelace",
    currency: str = "USD",
) -> Statement:  # fmt: skip
    """Invoices, then one payment applied oldest first, the rest kept as credit."""
    lines: list[StatementLine] = []
    outstanding = credit = 0
    version = 1

    def line(kind: LineKind, reference: str, amount: int, d_out: int = 0, d_credit: int = 0,
             detail: bool = False) -> None:  # fmt: skip
        lines.append(StatementLine(
            version=version, posted_at_ms=0, posted_on=DAY, kind=kind, reference=reference,
            description=f"{kind.value} {reference}", amount_minor=amount,
            outstanding_change_minor=d_out, credit_change_minor=d_credit,
            balance_change_minor=d_out - d_credit, balance_minor=outstanding - credit,
            detail=detail,
        ))  # fmt: skip

    remaining: list[tuple[str, int]] = []
    for number, amount in invoices:
        version += 1
        outstanding += amount
        line(LineKind.invoice, number, amount, d_out=amount)
        remaining.append((number, amount))
    version += 1
    applied = min(payment_minor, outstanding)
    outstanding -= applied
    credit += payment_minor - applied
    line(LineKind.payment, "pay_1", payment_minor, d_out=-applied, d_credit=payment_minor - applied)
    left = applied
    open_invoices = []
    for number, amount in remaining:
        share = min(left, amount)
        left -= share
        if share:
            line(LineKind.allocation, number, share, detail=True)
        if amount - share:
            open_invoices.append(OpenInvoiceLine(
                invoice_id=f"inv_{number}", number=number, due_date=DAY, amount_due_minor=amount,
                amount_remaining_minor=amount - share,
            ))  # fmt: skip
    if payment_minor - applied:
        line(LineKind.credit_created, "pay_1", payment_minor - applied, detail=True)
    zero = Balances(outstanding_minor=0, credit_minor=0, balance_minor=0)
    return Statement(
        account_id="acct_1", account_name=name, account_email="ada@example.com",
        external_ref=None, merchant_name="Analytical Engines Ltd", currency=currency,
        period_start=DAY, period_end=DAY, version=version, journal_version=version,
        generated_at_ms=1_772_000_000_000, opening=zero,
        closing=Balances(outstanding_minor=outstanding, credit_minor=credit,
                         balance_minor=outstanding - credit),
        totals=StatementTotals(
            invoices_count=len(invoices), invoiced_minor=sum(a for _, a in invoices),
            voids_count=0, voided_minor=0, voided_outstanding_minor=0, payments_count=1,
            payments_minor=payment_minor, applied_to_invoices_minor=applied,
            credit_created_minor=payment_minor - applied, credit_applied_minor=0,
            refunds_count=0, refunds_minor=0, refunds_from_credit_minor=0,
        ),
        lines=tuple(lines), open_invoices=tuple(open_invoices),
        ledger_opening={}, ledger_closing={},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("amount_minor", "currency", "shown", "plain"),
    [
        (123456, "USD", "1,234.56", "1234.56"),
        (-5, "USD", "-0.05", "-0.05"),
        (0, "EUR", "0.00", "0.00"),
        (1234567, "JPY", "1,234,567", "1234567"),
        (1001, "KWD", "1.001", "1.001"),
        (10**12, "USD", "10,000,000,000.00", "10000000000.00"),
    ],
)
def test_amounts_are_formatted_by_the_currency_exponent(
    amount_minor: int, currency: str, shown: str, plain: str
) -> None:
    assert format_amount(amount_minor, currency) == shown
    assert decimal_amount(amount_minor, currency) == plain


@given(st.integers(-(10**15), 10**15), st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_decimal_amounts_read_back_to_the_exact_minor_units(
    amount_minor: int, currency: str
) -> None:
    exponent = CURRENCY_EXPONENTS[currency]
    assert Decimal(decimal_amount(amount_minor, currency)).scaleb(exponent) == amount_minor
    assert Decimal(format_amount(amount_minor, currency).replace(",", "")).scaleb(exponent) == (
        amount_minor
    )  # fmt: skip


def test_csv_columns_are_stable_and_the_figures_read_back() -> None:
    statement = _statement([("INV-1", 10_000), ("INV-2", 5_000)], 17_550)

    rows = list(csv.DictReader(io.StringIO(render_csv(statement))))

    assert list(rows[0]) == [
        "row_type", "date", "version", "kind", "reference", "description", "invoice_id",
        "payment_id", "refund_id", "amount", "outstanding_change", "credit_change",
        "balance_change", "outstanding", "credit", "balance", "currency",
    ]  # fmt: skip
    kinds = [r["row_type"] for r in rows]
    assert kinds[:2] == ["statement", "opening"]
    assert kinds.count("line") == len(statement.lines)
    assert kinds.index("closing") == 2 + len(statement.lines)
    closing = rows[kinds.index("closing")]
    assert (closing["outstanding"], closing["credit"], closing["balance"]) == (
        "0.00", "25.50", "-25.50",
    )  # fmt: skip
    totals = {r["kind"]: r["amount"] for r in rows if r["row_type"] == "total"}
    assert totals["invoiced"] == "150.00"
    assert totals["payments"] == "175.50"
    assert totals["credit_created"] == "25.50"
    running = Decimal(0)
    for row in rows:
        if row["row_type"] == "line":
            running += Decimal(row["balance_change"])
            assert Decimal(row["balance"]) == running
    assert running == Decimal("-25.50")


@pytest.mark.parametrize("text", ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\r=x"])
def test_csv_cells_that_a_spreadsheet_would_evaluate_are_made_text(text: str) -> None:
    statement = _statement([(text, 1_000)], 500, name=text)

    rows = list(csv.DictReader(io.StringIO(render_csv(statement))))

    line = next(r for r in rows if r["row_type"] == "line")
    assert line["reference"] == "'" + text
    assert line["description"] == f"invoice {text}"  # starts with a letter: left alone
    assert safe_cell(text) == "'" + text
    header = rows[0]
    assert not header["description"].startswith(("=", "+", "-", "@"))
    assert safe_cell("INV-1") == "INV-1"


def test_pdf_is_a_document_that_shows_the_totals() -> None:
    statement = _statement([("INV-1", 10_000), ("INV-2", 5_000)], 12_345)

    pdf = render_pdf(statement)

    assert pdf.startswith(b"%PDF-")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert b"/Type /Page\n" in pdf or b"/Type /Page " in pdf or b"/Type /Page>" in pdf
    text = pdf_text(pdf)
    assert "Analytical Engines Ltd" in text
    assert "Ada Lovelace" in text
    assert "150.00 USD" in text  # invoiced
    assert "-123.45 USD" in text  # payments received
    assert "26.55 USD" in text  # closing balance
    assert "allocation INV-1: 100.00" in text  # how the payment was allocated
    assert re.search(r"Page 1 of\s*1\b", text)  # the total page count is filled in
    assert "Statement version" in text
    assert render_pdf(statement) == pdf  # the same statement renders to the same bytes


def test_a_long_statement_runs_over_several_numbered_pages() -> None:
    statement = _statement([(f"INV-{n:04d}", 1_000 + n) for n in range(150)], 50_000)

    pdf = render_pdf(statement)

    pages = len(re.findall(rb"/Type /Page\b(?!s)", pdf))
    assert pages >= 3
    text = pdf_text(pdf)
    assert re.search(rf"Page {pages} of\s*{pages}\b", text)
    assert text.count("Description") >= 2  # the table's headings repeat on each page
    assert "INV-0149" in text


def test_names_outside_latin1_are_reduced_not_refused() -> None:
    statement = _statement([("INV-1", 100)], 100, name="Zoë Ōtsuka 株式会社")

    text = pdf_text(render_pdf(statement))

    assert "Zoë Otsuka ????" in text
