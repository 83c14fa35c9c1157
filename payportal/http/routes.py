"""The route table: every operation once, with the types it reads and answers. The app
registers its handlers from it and the OpenAPI document is generated from it, so the
document cannot drift from what is served."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from aiohttp import web

from payportal.live import StatusEvent
from payportal.metrics import http as metrics

from . import events
from . import handlers_accounting as accounting
from . import handlers_accounts as accounts
from . import handlers_billing as billing
from . import handlers_meta as meta
from . import handlers_payments as payments
from . import handlers_statements as statements
from . import schemas as s

__all__ = ["ROUTE_TABLE", "RouteSpec"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RouteSpec(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    # Who may call it: "merchant" (sk_ keys), "any" (merchant or payer), "payer", "none".
    auth: Literal["merchant", "any", "payer", "none"] = "any"
    body: Any = None
    query: Any = None
    response: Any = None
    response_content_type: str = "application/json"
    idempotency: Literal["required", "optional"] | None = None
    in_openapi: bool = True
    # Other content types the 200 may have (chosen by a query parameter), as strings.
    response_alternatives: tuple[str, ...] = ()
    # For an event stream: the type of each event's JSON ``data``.
    events: Any = None
    # An operation without a bearer credential that checks one in its body (sign-in):
    # a wrong one is 401, which the OpenAPI document then lists.
    credentials_in_body: bool = False


def _r(method: str, path: str, handler: Handler, operation_id: str, summary: str, tag: str,
       **options: Any) -> RouteSpec:  # fmt: skip
    return RouteSpec(method=method, path=path, handler=handler, operation_id=operation_id,
                     summary=summary, tag=tag, **options)  # fmt: skip


ROUTE_TABLE: list[RouteSpec] = [
    _r("POST", "/v1/accounts", accounts.create_account, "createAccount",
       "Create an account", "accounts", auth="merchant", body=s.AccountCreate,
       response=s.Account, idempotency="optional"),
    _r("GET", "/v1/accounts", accounts.list_accounts, "listAccounts",
       "List accounts (a payer sees their own)", "accounts", query=s.ListQuery,
       response=s.AccountList),
    _r("GET", "/v1/accounts/{id}", accounts.get_account, "getAccount",
       "Retrieve an account with its balance", "accounts", response=s.Account),
    _r("POST", "/v1/accounts/{id}/invoices", accounts.create_invoice, "createInvoice",
       "Issue an invoice", "invoices", auth="merchant", body=s.InvoiceCreate,
       response=s.Invoice, idempotency="optional"),
    _r("GET", "/v1/accounts/{id}/invoices", accounts.list_invoices, "listInvoices",
       "List an account's invoices", "invoices", query=s.InvoiceListQuery,
       response=s.InvoiceList),
    _r("POST", "/v1/invoices/{id}/void", accounts.void_invoice, "voidInvoice",
       "Void an invoice", "invoices", auth="merchant", response=s.Invoice),
    _r("POST", "/v1/accounts/{id}/payers", accounts.create_payer, "createPayer",
       "Give a payer access to an account", "payers", auth="merchant", body=s.PayerCreate,
       response=s.Payer),
    _r("POST", "/v1/payer/sessions", accounts.create_payer_session, "createPayerSession",
       "Log a payer in", "payers", auth="none", body=s.PayerSessionCreate,
       response=s.PayerSession, credentials_in_body=True),
    _r("GET", "/v1/payer/accounts", accounts.list_payer_accounts, "listPayerAccounts",
       "The calling payer's accounts", "payers", auth="payer", query=s.ListQuery,
       response=s.AccountList),
    _r("POST", "/v1/accounts/{id}/payment_methods", accounts.create_payment_method,
       "createPaymentMethod", "Attach a tokenized payment method", "payment_methods",
       body=s.PaymentMethodCreate, response=s.PaymentMethod),
    _r("GET", "/v1/accounts/{id}/payment_methods", accounts.list_payment_methods,
       "listPaymentMethods", "List an account's payment methods", "payment_methods",
       query=s.PaymentMethodListQuery, response=s.PaymentMethodList),
    _r("GET", "/v1/payment_methods/{id}", accounts.get_payment_method, "getPaymentMethod",
       "Retrieve a payment method", "payment_methods", response=s.PaymentMethod),
    _r("DELETE", "/v1/payment_methods/{id}", accounts.delete_payment_method,
       "deletePaymentMethod", "Detach a payment method (kept in history)", "payment_methods",
       response=s.PaymentMethod),
    # Before /v1/payments/{id}: aiohttp matches in registration order.
    _r("GET", "/v1/payments/preview_allocation", payments.preview_allocation,
       "previewAllocation", "How a payment would be split over open invoices", "payments",
       query=s.PreviewQuery, response=s.AllocationPreview),
    _r("POST", "/v1/payments", payments.create_payment, "createPayment",
       "Create and charge a payment", "payments", body=s.PaymentCreate, response=s.Payment,
       idempotency="required"),
    _r("GET", "/v1/payments", payments.list_payments, "listPayments", "List payments",
       "payments", query=s.PaymentListQuery, response=s.PaymentList),
    _r("GET", "/v1/payments/{id}", payments.get_payment, "getPayment", "Retrieve a payment",
       "payments", response=s.Payment),
    _r("POST", "/v1/payments/{id}/cancel", payments.cancel_payment, "cancelPayment",
       "Cancel a payment before it succeeds", "payments", response=s.Payment),
    _r("POST", "/v1/payments/{id}/confirm", payments.confirm_payment, "confirmPayment",
       "Confirm a payment that waits for the payer's authentication", "payments",
       response=s.Payment),
    _r("POST", "/v1/payments/{id}/refunds", payments.create_refund, "createRefund",
       "Refund a payment", "payments", auth="merchant", body=s.RefundCreate,
       response=s.Refund, idempotency="required"),
    # --- statements ---
    _r("GET", "/v1/accounts/{id}/statement", statements.get_statement, "getAccountStatement",
       "An account's statement for a period: opening balance, invoices, payments and their "
       "allocations, credit, refunds, voids, closing balance (format=pdf|csv|json)",
       "statements", query=statements.StatementQuery, response=statements.StatementOut,
       response_alternatives=("application/pdf", "text/csv")),
    _r("GET", "/v1/accounts/{id}/events", events.account_events, "streamAccountEvents",
       "Server-Sent Events of the account's payment status changes (resume with "
       "Last-Event-ID)", "events", response_content_type="text/event-stream",
       events=StatusEvent),
    _r("GET", "/v1/payments/{id}/events", events.payment_events, "streamPaymentEvents",
       "Server-Sent Events of the payment's status changes (resume with Last-Event-ID)",
       "events", response_content_type="text/event-stream", events=StatusEvent),
    # --- metrics ---
    _r("GET", "/v1/metrics/summary", metrics.metrics_summary, "getMetricsSummary",
       "The headline figures (average processing time, success rate, revenue recognition "
       "accuracy) for a time window", "metrics", auth="merchant",
       query=metrics.MetricsSummaryQuery, response=metrics.MetricsSummary),
    _r("GET", "/metrics", metrics.prometheus_metrics, "getPrometheusMetrics",
       "Prometheus metrics (text exposition or OpenMetrics by Accept)", "metrics",
       auth="merchant", response_content_type="text/plain"),
    # --- billing ---
    _r("POST", "/v1/plans", billing.create_plan, "createPlan", "Create a plan", "billing",
       auth="merchant", body=billing.PlanCreate, response=billing.Plan,
       idempotency="optional"),
    _r("GET", "/v1/plans", billing.list_plans, "listPlans", "List plans", "billing",
       query=s.ListQuery, response=billing.PlanList),
    _r("POST", "/v1/accounts/{id}/subscriptions", billing.create_subscription,
       "createSubscription", "Subscribe an account to a plan (its first period is billed "
       "at once)", "billing", auth="merchant", body=billing.SubscriptionCreate,
       response=billing.Subscription, idempotency="optional"),
    _r("GET", "/v1/accounts/{id}/subscriptions", billing.list_account_subscriptions,
       "listSubscriptions", "List an account's subscriptions", "billing", query=s.ListQuery,
       response=billing.SubscriptionList),
    _r("GET", "/v1/subscriptions/{id}", billing.get_subscription, "getSubscription",
       "Retrieve a subscription", "billing", response=billing.Subscription),
    _r("POST", "/v1/subscriptions/{id}/cancel", billing.cancel_subscription,
       "cancelSubscription", "Cancel a subscription at its period's end or at once",
       "billing", body=billing.SubscriptionCancel, response=billing.Subscription),
    _r("POST", "/v1/subscriptions/{id}/change_plan", billing.change_plan, "changePlan",
       "Move a subscription to another plan, prorated (an upgrade is invoiced at once, a "
       "downgrade credited to the next invoices)", "billing", auth="merchant",
       body=billing.PlanChange, response=billing.PlanChangeResult, idempotency="required"),
    _r("POST", "/v1/accounts/{id}/invoice_items", billing.create_invoice_item,
       "createInvoiceItem", "A one-off purchase: invoiced now, and charged now when a "
       "payment method is given", "billing", auth="merchant", body=billing.InvoiceItemCreate,
       response=billing.BillingInvoice, idempotency="required"),
    _r("GET", "/v1/accounts/{id}/billing_invoices", billing.list_billing_invoices,
       "listBillingInvoices", "The invoices billing issued for an account, with their "
       "charges' outcome", "billing", query=s.ListQuery, response=billing.BillingInvoiceList),
    # --- accounting ---
    _r("GET", "/v1/reports/revenue", accounting.get_revenue_report, "getRevenueReport",
       "Recognized and deferred revenue by month of service, with its accuracy against a "
       "recomputation from the invoices (format=json|csv)", "accounting", auth="merchant",
       query=accounting.RevenueReportQuery, response=accounting.RevenueReportOut,
       response_alternatives=("text/csv",)),
    _r("GET", "/v1/reconciliation/exceptions", accounting.list_reconciliation_exceptions,
       "listReconciliationExceptions", "Settlement mismatches found by reconciliation",
       "accounting", auth="merchant", query=accounting.ExceptionListQuery,
       response=accounting.ExceptionList),
    _r("POST", "/v1/reconciliation/exceptions/{id}/resolve",
       accounting.resolve_reconciliation_exception, "resolveReconciliationException",
       "Resolve a reconciliation exception with a resolution and a note", "accounting",
       auth="merchant", body=accounting.ExceptionResolve,
       response=accounting.ReconciliationExceptionOut),
    _r("GET", "/healthz", meta.healthz, "healthz", "Liveness", "operations", auth="none",
       response=s.Health),
    _r("GET", "/readyz", meta.readyz, "readyz", "Readiness: shards and database answer",
       "operations", auth="none", response=s.Readiness),
    _r("GET", "/openapi.json", meta.openapi_json, "openapi", "This API's OpenAPI 3.1 document",
       "operations", auth="none", response=dict[str, Any]),
    _r("GET", "/docs", meta.docs, "docs", "This API's reference as a page", "operations",
       auth="none", response_content_type="text/html"),
]  # fmt: skip
