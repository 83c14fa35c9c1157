"""Recurring billing: plans, subscriptions, the billing run, dunning and card reminders.

- ``set_autopay(engine, account_id=, enabled=)`` turns autopay on or off for an
  account's subscriptions that are not canceled and returns how many there are.
- ``list_subscriptions(engine, account_id=)`` lists an account's subscriptions
  (``Subscription`` Structs, as the API answers them).
- ``BillingRunner`` (``payportal.billing.run``) is the billing run: ``run_once`` claims
  every due period, issues its invoice and charges autopay through the shards and the
  gateway, exactly once across crashes and concurrent schedulers; ``payportal billing
  run`` runs it by hand and ``payportal serve`` every ``PAYPORTAL_BILLING_INTERVAL_S``.
- The API's operations (``_service``) and the tables (``persistence.tables_billing``).
"""

from ._model import (
    BillingInvoice,
    InvoiceKind,
    InvoiceOutcome,
    InvoiceState,
    Period,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from ._records import list_subscriptions, set_autopay
from .run import BillingReport, BillingRunner

__all__ = [
    "BillingInvoice",
    "BillingReport",
    "BillingRunner",
    "InvoiceKind",
    "InvoiceOutcome",
    "InvoiceState",
    "Period",
    "Plan",
    "Subscription",
    "SubscriptionStatus",
    "list_subscriptions",
    "set_autopay",
]
