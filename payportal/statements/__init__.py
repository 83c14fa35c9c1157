"""Statements of account: what an account owed, paid and held over a period, to the minor
unit, as data (``build_statement``), a PDF (``render_pdf``) and CSV (``render_csv``).

The model: a statement is read from the account's journal, replayed through the engine,
so its balances are the ledger's (``accounts_receivable`` is what is outstanding,
``customer_credit`` what the account holds) at 00:00 UTC of its first day and at the end
of its last, and every acknowledged payment is in it at once. Its ``version`` counts the
account's money events up to the period's end (invoices, credit applications, voids,
payments, refunds), so every posted payment or refund makes a new version; it is printed
on the PDF, written to the CSV and sent as the ``Statement-Version`` header.
"""

from ._build import (
    DAY_MS,
    StatementAccountNotFound,
    build_statement,
    date_of_ms,
    filename_for,
    journal_version,
    ms_of_date,
    wait_for_journal,
)
from ._csv import COLUMNS, render_csv, safe_cell
from ._format import decimal_amount, format_amount
from ._model import (
    Balances,
    LineKind,
    OpenInvoiceLine,
    Statement,
    StatementLine,
    StatementTotals,
)
from ._pdf import render_pdf

__all__ = [
    "COLUMNS",
    "DAY_MS",
    "Balances",
    "LineKind",
    "OpenInvoiceLine",
    "Statement",
    "StatementAccountNotFound",
    "StatementLine",
    "StatementTotals",
    "build_statement",
    "date_of_ms",
    "decimal_amount",
    "filename_for",
    "format_amount",
    "journal_version",
    "ms_of_date",
    "render_csv",
    "render_pdf",
    "safe_cell",
    "wait_for_journal",
]
