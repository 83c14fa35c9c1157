"""Accounting: revenue recognition and its report, and reconciliation of the processor's
settlements with payments and invoices.

- ``recognition``: the job that recognizes every account's revenue through a past day
  (``payportal revenue recognize``), the revenue report by month of service with its
  accuracy against an independent recomputation (``GET /v1/reports/revenue``), and
  ``recognition_accuracy_report`` for the metrics and the console.
- ``reconciliation``: the job that matches settlement reports with payments, posts fees
  and cash, and queues mismatches (``payportal reconcile``,
  ``GET /v1/reconciliation/exceptions``); ``open_exceptions`` for the console.
- ``scheduler``: both jobs on a timer inside ``payportal serve``.

The postings themselves are the engine's (``RecognizeRevenue``, ``SettleCharge``); this
package only decides when to ask for them and reads back what the journal says.
"""

from .recognition import (
    AccuracyReport,
    DifferingInvoice,
    RecognitionRun,
    RevenueMonth,
    RevenueReport,
    recognition_accuracy_report,
    recognize_revenue,
    recognized_through,
    render_revenue_csv,
    revenue_report,
)
from .reconciliation import (
    ReconciliationException,
    ReconciliationRun,
    list_exceptions,
    open_exceptions,
    reconcile,
    resolve_exception,
)

__all__ = [
    "AccuracyReport",
    "DifferingInvoice",
    "RecognitionRun",
    "ReconciliationException",
    "ReconciliationRun",
    "RevenueMonth",
    "RevenueReport",
    "list_exceptions",
    "open_exceptions",
    "recognition_accuracy_report",
    "recognize_revenue",
    "recognized_through",
    "reconcile",
    "render_revenue_csv",
    "resolve_exception",
    "revenue_report",
]
