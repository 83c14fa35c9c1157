"""Recurring billing's tables: plans, subscriptions, the invoices billing issues, reminders.

The model: billing is a client of the shards, like the front door. It keeps its own
rows here and issues invoices and payments through the router; the engine's journal
stays the source of truth for money. Rules:

- ``billing_invoices`` is the claim: one row per invoice billing means to issue, keyed
  by a deterministic invoice id. A subscription period's row is also UNIQUE on
  (subscription_id, period_start), so a period is claimed once however many schedulers
  race for it or rerun after a crash (docs/design.md decision 4). One-off items and plan-change
  prorations leave ``period_start`` NULL (NULLs are distinct in a UNIQUE constraint).
- A row moves claimed → invoiced → charging → settled, each step a compare-and-set on
  ``state`` under a lease (``lease_owner``, ``lease_until_ms``) so two schedulers do not
  work one row at once, and a dead one's row is taken over once its lease lapses. Every
  step is also idempotent in the engine (deterministic invoice and payment ids), so even
  a lapsed lease held by a live scheduler cannot bill or charge twice.
- ``subscriptions.next_period_start`` is the first period not yet claimed; it moves
  forward in the same transaction as the claim's insert.
- ``card_expiry_reminders``' primary key makes a reminder once per method and expiry.
- Money is ``BigInteger`` minor units; no card data (methods are referenced by id).
"""

from __future__ import annotations

import sqlalchemy as sa

from .tables import created_at_column, metadata

__all__ = ["billing_invoices", "card_expiry_reminders", "plans", "subscriptions"]

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    # "month" | "year" (payportal.engine.billing_schedule.Interval)
    sa.Column("interval", sa.String(8), nullable=False),
    created_at_column(),
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("plan_id", sa.String(64), nullable=False),
    sa.Column("payment_method_id", sa.String(64), nullable=True),
    sa.Column("autopay", sa.Boolean, nullable=False),
    # The anchor: day of each month (monthly), or month and day of each year (yearly).
    sa.Column("anchor_day", sa.Integer, nullable=False),
    sa.Column("anchor_month", sa.Integer, nullable=False),
    # The first day of service; the first period may be a prorated stub up to the anchor.
    sa.Column("started_on", sa.Date, nullable=False),
    # "active" | "past_due" | "canceled" (billing._subscription_state)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("cancel_at_period_end", sa.Boolean, nullable=False, server_default=sa.false()),
    # The last day of service once canceled; no period starting after it is billed.
    sa.Column("ended_on", sa.Date, nullable=True),
    sa.Column("current_period_start", sa.Date, nullable=True),
    sa.Column("current_period_end", sa.Date, nullable=True),
    sa.Column("next_period_start", sa.Date, nullable=False),
    # A downgrade's prorated credit, taken off the next periods' invoices.
    sa.Column("credit_minor", sa.BigInteger, nullable=False, server_default="0"),
    created_at_column(),
    sa.Index(None, "account_id"),
    # The billing run scans for subscriptions with a period due.
    sa.Index(None, "status", "next_period_start"),
)

billing_invoices = sa.Table(
    "billing_invoices",
    metadata,
    sa.Column("invoice_id", sa.String(64), primary_key=True),
    # "period" | "proration" | "item"
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("subscription_id", sa.String(64), nullable=True),
    sa.Column("period_start", sa.Date, nullable=True),
    sa.Column("service_start", sa.Date, nullable=True),
    sa.Column("service_end", sa.Date, nullable=True),
    sa.Column("number", sa.String(64), nullable=False),
    sa.Column("description", sa.String(200), nullable=True),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("due_date", sa.Date, nullable=False),
    # Charged with autopay: the method to charge, else NULL (the payer pays the invoice).
    sa.Column("payment_method_id", sa.String(64), nullable=True),
    # What the charge asks for: the invoice's remaining amount once issued (credit may
    # have paid part of it). Fixed once, so a replayed payment is the same payment.
    sa.Column("charge_minor", sa.BigInteger, nullable=True),
    sa.Column("payment_id", sa.String(64), nullable=True),
    # "claimed" | "invoiced" | "charging" | "settled"
    sa.Column("state", sa.String(16), nullable=False),
    # Once settled: "paid" | "unpaid" | "invoiced" | "nothing_due" | "rejected"
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until_ms", sa.BigInteger, nullable=False, server_default="0"),
    # When the billing run claimed it, by the run's clock (audits billing lag).
    sa.Column("claimed_at_ms", sa.BigInteger, nullable=False),
    created_at_column(),
    sa.UniqueConstraint("subscription_id", "period_start"),
    sa.Index(None, "state", "lease_until_ms"),
    sa.Index(None, "account_id"),
    # Dunning: a subscription's unpaid invoices, and the run's scan for unpaid ones.
    sa.Index(None, "subscription_id", "outcome"),
    sa.Index(None, "outcome"),
)

card_expiry_reminders = sa.Table(
    "card_expiry_reminders",
    metadata,
    sa.Column("payment_method_id", sa.String(64), primary_key=True),
    sa.Column("exp_year", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("exp_month", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    created_at_column(),
)
