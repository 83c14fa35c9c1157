"""The demo merchant that ``make run`` seeds: a few accounts with open, overdue and
future invoices (some with a service period), and a merchant API key.

Seeding goes through the shards like any other command, with fixed ids, so running it
twice changes nothing: the second run's commands are answered ``exists``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec

from payportal.engine import IssueInvoice, OpenAccount, Result, ServicePeriod

__all__ = ["DEMO_ACCOUNTS", "DemoSeeded", "seed", "seed_with"]


class DemoInvoice(msgspec.Struct, frozen=True):
    number: str
    amount_minor: int
    due_in_days: int  # negative: overdue
    service_months: int = 0  # > 0: a subscription-style invoice with a service period


class DemoAccount(msgspec.Struct, frozen=True):
    account_id: str
    name: str
    email: str
    currency: str
    invoices: tuple[DemoInvoice, ...]


DEMO_ACCOUNTS: tuple[DemoAccount, ...] = (
    DemoAccount(
        "acct_demo_acme", "Acme Hardware Ltd", "payer@acme.example", "USD",
        (DemoInvoice("INV-1001", 125_000, -20), DemoInvoice("INV-1002", 48_050, 5),
         DemoInvoice("INV-1003", 9_900, 25, service_months=1)),
    ),
    DemoAccount(
        "acct_demo_globex", "Globex Corporation", "ap@globex.example", "USD",
        (DemoInvoice("INV-2001", 310_000, -3), DemoInvoice("INV-2002", 310_000, 27)),
    ),
    DemoAccount(
        "acct_demo_initech", "Initech GmbH", "billing@initech.example", "EUR",
        (DemoInvoice("INV-3001", 72_500, 14, service_months=12),),
    ),
)  # fmt: skip


# The demo payer's password is printed by `make run` and written in the README: it guards
# nothing but demo data on a developer's machine, and a fixed one survives re-seeding.
DEMO_PAYER_EMAIL = "payer@acme.example"
DEMO_PAYER_PASSWORD = "demo-payer-pass"  # noqa: S105 - public demo credential, see above


class DemoSeeded(msgspec.Struct, frozen=True, kw_only=True):
    accounts: list[str]
    invoices_created: int
    api_key: str | None
    payer_email: str = DEMO_PAYER_EMAIL
    payer_password: str = DEMO_PAYER_PASSWORD


def _commands(today: dt.date) -> tuple[list[OpenAccount], list[IssueInvoice]]:
    opens = [OpenAccount(account_id=a.account_id, currency=a.currency) for a in DEMO_ACCOUNTS]
    issues = []
    for account in DEMO_ACCOUNTS:
        for invoice in account.invoices:
            due_date = today + dt.timedelta(days=invoice.due_in_days)
            period = None
            if invoice.service_months:
                start = due_date.replace(day=1)
                end = (start + dt.timedelta(days=31 * invoice.service_months)).replace(day=1)
                period = ServicePeriod(start=start, end=end - dt.timedelta(days=1))
            issues.append(
                IssueInvoice(
                    account_id=account.account_id,
                    invoice_id=f"inv_demo_{invoice.number.lower().replace('-', '_')}",
                    number=invoice.number,
                    amount_minor=invoice.amount_minor,
                    currency=account.currency,
                    due_date=due_date,
                    service_period=period,
                )
            )
    return opens, issues


async def seed_with(
    router: Any, store: Any, *, today: dt.date | None = None, api_key: bool = True
) -> DemoSeeded:
    """Seed through a running router; ``today`` anchors the due dates (default: today)."""
    from payportal.http.auth import hash_password
    from payportal.http.ids import new_id
    from payportal.persistence import directory
    from payportal.persistence.keys import create_api_key_async

    opens, issues = _commands(today or dt.date.today())
    # The profile first, as the API does: an account the API cannot describe is invisible.
    for account in DEMO_ACCOUNTS:
        if await directory.account_profile(store.engine, account.account_id) is None:
            await directory.insert_account_profile(
                store.engine,
                {"account_id": account.account_id, "name": account.name,
                 "email": account.email, "currency": account.currency, "external_ref": None},
            )  # fmt: skip
    replies = await router.submit_many(opens)
    rejected = [r.outcome for r in replies if r.outcome.result is Result.rejected]
    if rejected:
        raise RuntimeError(f"demo accounts rejected: {rejected}")
    replies = await router.submit_many(issues)
    rejected = [r.outcome for r in replies if r.outcome.result is Result.rejected]
    if rejected:
        raise RuntimeError(f"demo invoices rejected: {rejected}")
    created = sum(r.outcome.result is Result.ok for r in replies)
    # One payer owns the first two accounts: the portal shows how a payer with several
    # accounts sees them.
    password_hash = await hash_password(DEMO_PAYER_PASSWORD)
    for account in DEMO_ACCOUNTS[:2]:
        await directory.link_payer(
            store.engine, new_payer_id=new_id("payer"), email=DEMO_PAYER_EMAIL,
            password_hash=password_hash, account_id=account.account_id,
        )  # fmt: skip
    await _seed_subscription(router, store, today or dt.date.today())
    key = await create_api_key_async(store, "demo") if api_key else None
    return DemoSeeded(accounts=[o.account_id for o in opens], invoices_created=created, api_key=key)


async def _seed_subscription(router: Any, store: Any, today: dt.date) -> None:
    """A monthly support plan Acme subscribes to without autopay (the payer pays each
    invoice in the portal); its first period is invoiced at once."""
    from payportal.billing import BillingRunner
    from payportal.billing import _service as billing
    from payportal.engine.billing_schedule import Interval

    await billing.create_plan(
        store.engine, plan_id="plan_demo_support", name="Support (monthly)",
        amount_minor=4_900, currency="USD", interval=Interval.month,
    )  # fmt: skip
    created = await billing.create_subscription(
        store.engine, subscription_id="sub_demo_acme_support", account_id="acct_demo_acme",
        account_currency="USD", plan_id="plan_demo_support", payment_method_id=None,
        autopay=False, anchor_day=None, today=today,
    )  # fmt: skip
    if isinstance(created, billing.BillingRejection):
        raise RuntimeError(f"demo subscription rejected: {created}")
    await BillingRunner(router, store.engine, None).bill_subscription(created.id)


def seed(settings: Any) -> None:
    """``payportal demo seed``: start (or join) Ray and the shards, seed, print the key."""
    from payportal.actors import ShardRouter
    from payportal.actors.cluster import connect_ray_for_command, ensure_shards
    from payportal.persistence import Store, migrate

    async def main() -> DemoSeeded:
        settings.resolve_data_keys()
        await asyncio.to_thread(migrate, settings.database_url)
        joined = connect_ray_for_command(settings.ray_address, settings.var_dir)
        handles = ensure_shards(settings.shards, settings.database_url, detached=joined)
        store = await Store.connect(settings.database_url)
        try:
            return await seed_with(ShardRouter(handles), store)
        finally:
            await store.close()

    seeded = asyncio.run(main())
    print(f"demo accounts: {', '.join(seeded.accounts)}")
    print(f"invoices created: {seeded.invoices_created} (0 means they were there already)")
    print(f"merchant API key (shown once): {seeded.api_key}")
    print(f"payer login: {seeded.payer_email} / {seeded.payer_password}")
