"""Recurring billing over HTTP: plans, subscriptions, cancellation, plan changes with
proration, and one-off purchases. Thin: decode, authorize, call ``payportal.billing``,
encode. Request and response types live here (the route table's OpenAPI document is
generated from them); the response objects are billing's own Structs.

Who may do what: a merchant everything; a payer reads their own accounts' subscriptions
and may cancel them. Whatever moves money now (a plan change's proration, a purchase)
requires an ``Idempotency-Key``; creating a plan or a subscription takes one optionally,
which then fixes the new object's id, so a retry names the same one.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo

import msgspec
from aiohttp import web

from payportal.billing import BillingInvoice, BillingRunner, Plan, Subscription
from payportal.billing import _records as records
from payportal.billing import _service as service
from payportal.billing._service import BillingRejection
from payportal.engine import currency_is_valid
from payportal.engine.billing_schedule import Interval

from . import ids
from .auth import Principal, authenticate, authorize_account
from .codec import decode_body, decode_query, encode, respond
from .errors import ApiError, not_found, parameter_invalid
from .idempotency import Operation, idempotency_key, request_hash, run_idempotent
from .reads import read_account
from .schemas import Currency, ListQuery, Name, ObjectId, PositiveMinor, one_line
from .typedefs import CLOCK_MS, GATEWAY, ROUTER, SETTINGS, STORE

__all__ = [
    "BillingInvoice",
    "BillingInvoiceList",
    "InvoiceItemCreate",
    "Plan",
    "PlanChange",
    "PlanChangeResult",
    "PlanCreate",
    "PlanList",
    "Subscription",
    "SubscriptionCancel",
    "SubscriptionCreate",
    "SubscriptionList",
    "cancel_subscription",
    "change_plan",
    "create_invoice_item",
    "create_plan",
    "create_subscription",
    "get_subscription",
    "list_account_subscriptions",
    "list_billing_invoices",
    "list_plans",
]


class _In(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class PlanCreate(_In, frozen=True, kw_only=True):
    name: Name
    amount: PositiveMinor
    currency: Currency
    interval: Literal["month", "year"]


class SubscriptionCreate(_In, frozen=True, kw_only=True):
    plan: ObjectId
    # Required for autopay; without autopay the payer pays each invoice themselves.
    payment_method: ObjectId | None = None
    autopay: bool = True
    # Day of the month periods start on (the month's last day when it is shorter).
    # Absent: today's day. Another day makes the first period a prorated stub.
    anchor_day: Annotated[int, msgspec.Meta(ge=1, le=31)] | None = None


class SubscriptionCancel(_In, frozen=True, kw_only=True):
    # True: billed through the current period, then ended. False: ended today.
    at_period_end: bool = True


class PlanChange(_In, frozen=True, kw_only=True):
    plan: ObjectId


ItemDescription = one_line(200, min_length=1)


class InvoiceItemCreate(_In, frozen=True, kw_only=True):
    amount: PositiveMinor
    description: ItemDescription | None = None
    # Charged now when given; else the payer pays the invoice like any other.
    payment_method: ObjectId | None = None


class PlanList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[Plan]
    has_more: bool


class SubscriptionList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[Subscription]
    has_more: bool


class BillingInvoiceList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[BillingInvoice]
    has_more: bool


class PlanChangeResult(msgspec.Struct, frozen=True, kw_only=True):
    subscription: Subscription
    # An upgrade's prorated invoice for the rest of the period; None otherwise (a
    # downgrade's credit is on the subscription).
    invoice: BillingInvoice | None


_PARAMS: Final = {
    BillingRejection.plan_not_found: "plan",
    BillingRejection.payment_method_not_found: "payment_method",
    BillingRejection.subscription_not_found: "id",
    BillingRejection.autopay_requires_payment_method: "payment_method",
    BillingRejection.currency_must_match_account: "plan",
    BillingRejection.anchor_day_must_exist_in_month: "anchor_day",
    BillingRejection.plan_interval_must_match: "plan",
}


def _error(rejection: BillingRejection) -> ApiError:
    param = _PARAMS.get(rejection)
    if rejection.name.endswith("_not_found"):
        return not_found(param, rejection.name.removesuffix("_not_found").replace("_", " "))
    if rejection is BillingRejection.subscription_changed_concurrently:
        return ApiError(409, "invalid_request_error", rejection.value,
                        "The subscription changed meanwhile; retry.")  # fmt: skip
    message = rejection.value.replace("_", " ").capitalize() + "."
    if param is not None:
        return parameter_invalid(param, f"{rejection.value}: {message}")
    return ApiError(400, "invalid_request_error", rejection.value, message)


async def _merchant(request: web.Request) -> Principal:
    """Merchant-only operations do not exist for anyone else: 404, never 403."""
    principal = await authenticate(request)
    if not principal.is_merchant:
        raise not_found(None, "resource")
    return principal


def _runner(request: web.Request) -> BillingRunner:
    settings = request.app[SETTINGS]
    zone = ZoneInfo(settings.billing_timezone if settings is not None else "UTC")
    return BillingRunner(
        request.app[ROUTER], request.app[STORE].engine, request.app[GATEWAY],
        clock_ms=request.app[CLOCK_MS], zone=zone, owner=f"api:{uuid.uuid4().hex}",
    )  # fmt: skip


async def _currency(request: web.Request, account_id: str) -> str:
    if not account_id.startswith(ids.ACCOUNT_PREFIX):
        raise not_found("id", "account")
    account = await read_account(request.app[ROUTER], account_id)
    if account.balance is None:
        raise not_found("id", "account")
    return account.balance.currency


async def _subscription(
    request: web.Request, principal: Principal, *, merchant_only: bool = False
) -> records.SubscriptionRow:
    subscription_id = request.match_info["id"]
    account_id = ids.account_of(subscription_id, "sub")
    if account_id is None:
        raise not_found("id", "subscription")
    await authorize_account(request, principal, account_id, merchant_only=merchant_only)
    row = await records.subscription(request.app[STORE].engine, subscription_id)
    if row is None or row.account_id != account_id:
        raise not_found("id", "subscription")
    return row


async def _optionally_idempotent(
    request: web.Request, principal: Principal, account_id: str, key: str | None,
    canonical: bytes, operation: Operation,
) -> web.Response:  # fmt: skip
    if key is None:
        status, body, _ = await operation()
        return web.Response(status=status, body=body, content_type="application/json")
    return await run_idempotent(
        request, principal=principal, account_id=account_id, key=key,
        hashed=request_hash(request, canonical), operation=operation,
    )  # fmt: skip


# -- plans ------------------------------------------------------------------------------------


async def create_plan(request: web.Request) -> web.Response:
    principal = await _merchant(request)
    body, canonical = await decode_body(request, PlanCreate)
    currency = body.currency.upper()
    if not currency_is_valid(currency):
        raise parameter_invalid("currency", "The currency is not a supported ISO 4217 code.")
    key = idempotency_key(request, required=False)
    plan_id = ids.new_id("plan") if key is None else ids.derived_id("plan", principal.id, key)

    async def operation() -> tuple[int, bytes, dict[str, str]]:
        plan = await service.create_plan(
            request.app[STORE].engine, plan_id=plan_id, name=body.name,
            amount_minor=body.amount, currency=currency, interval=Interval(body.interval),
        )  # fmt: skip
        return 200, encode(plan), {}

    return await _optionally_idempotent(request, principal, "", key, canonical, operation)


async def list_plans(request: web.Request) -> web.Response:
    await authenticate(request)
    query = decode_query(request, ListQuery)
    data, has_more = await records.list_plans(
        request.app[STORE].engine, limit=query.limit, starting_after=query.starting_after
    )
    return respond(PlanList(data=data, has_more=has_more))


# -- subscriptions ----------------------------------------------------------------------------


async def create_subscription(request: web.Request) -> web.Response:
    principal = await _merchant(request)
    account_id = request.match_info["id"]
    body, canonical = await decode_body(request, SubscriptionCreate)
    key = idempotency_key(request, required=False)
    currency = await _currency(request, account_id)
    subscription_id = (
        ids.child_id("sub", account_id) if key is None
        else ids.derived_child_id("sub", account_id, principal.id, key)
    )  # fmt: skip

    async def operation() -> tuple[int, bytes, dict[str, str]]:
        runner = _runner(request)
        created = await service.create_subscription(
            request.app[STORE].engine, subscription_id=subscription_id, account_id=account_id,
            account_currency=currency, plan_id=body.plan, payment_method_id=body.payment_method,
            autopay=body.autopay, anchor_day=body.anchor_day, today=runner.today(),
        )  # fmt: skip
        if isinstance(created, BillingRejection):
            raise _error(created)
        # The first period is billed (and with autopay charged) now, not at the next run.
        await runner.bill_subscription(subscription_id)
        fresh = await records.subscription(request.app[STORE].engine, subscription_id)
        assert fresh is not None
        return 200, encode(records.subscription_view(fresh)), {}

    return await _optionally_idempotent(
        request, principal, account_id, key, canonical, operation
    )


async def list_account_subscriptions(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    account_id = request.match_info["id"]
    await authorize_account(request, principal, account_id)
    query = decode_query(request, ListQuery)
    every = await records.list_subscriptions(request.app[STORE].engine, account_id=account_id)
    if query.starting_after is not None:
        ids_in_order = [s.id for s in every]
        if query.starting_after in ids_in_order:
            every = every[ids_in_order.index(query.starting_after) + 1 :]
        else:
            every = []
    page = every[: query.limit]
    return respond(SubscriptionList(data=page, has_more=len(every) > len(page)))


async def get_subscription(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    row = await _subscription(request, principal)
    return respond(records.subscription_view(row))


async def cancel_subscription(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    row = await _subscription(request, principal)
    body, _ = await decode_body(request, SubscriptionCancel)
    result = await service.cancel_subscription(
        request.app[STORE].engine, subscription_id=row.id, at_period_end=body.at_period_end,
        today=_runner(request).today(),
    )  # fmt: skip
    if isinstance(result, BillingRejection):
        raise _error(result)
    return respond(result)


async def change_plan(request: web.Request) -> web.Response:
    principal = await _merchant(request)
    row = await _subscription(request, principal, merchant_only=True)
    key = idempotency_key(request, required=True)
    assert key is not None
    body, canonical = await decode_body(request, PlanChange)

    async def operation() -> tuple[int, bytes, dict[str, str]]:
        runner = _runner(request)
        result = await service.change_plan(
            request.app[STORE].engine, runner, subscription_id=row.id, plan_id=body.plan,
            invoice_id=ids.derived_child_id("inv", row.account_id, principal.id, key),
            today=runner.today(), now_ms=request.app[CLOCK_MS](),
        )  # fmt: skip
        if isinstance(result, BillingRejection):
            raise _error(result)
        subscription, invoice = result
        return 200, encode(PlanChangeResult(subscription=subscription, invoice=invoice)), {}

    return await run_idempotent(
        request, principal=principal, account_id=row.account_id, key=key,
        hashed=request_hash(request, canonical), operation=operation,
    )  # fmt: skip


# -- one-off purchases and billing invoices ---------------------------------------------------


async def create_invoice_item(request: web.Request) -> web.Response:
    principal = await _merchant(request)
    account_id = request.match_info["id"]
    key = idempotency_key(request, required=True)
    assert key is not None
    body, canonical = await decode_body(request, InvoiceItemCreate)
    currency = await _currency(request, account_id)

    async def operation() -> tuple[int, bytes, dict[str, str]]:
        runner = _runner(request)
        result = await service.create_item(
            request.app[STORE].engine, runner,
            invoice_id=ids.derived_child_id("inv", account_id, principal.id, key),
            account_id=account_id, currency=currency, amount_minor=body.amount,
            description=body.description, payment_method_id=body.payment_method,
            today=runner.today(), now_ms=request.app[CLOCK_MS](),
        )  # fmt: skip
        if isinstance(result, BillingRejection):
            raise _error(result)
        return 200, encode(result), {}

    return await run_idempotent(
        request, principal=principal, account_id=account_id, key=key,
        hashed=request_hash(request, canonical), operation=operation,
    )  # fmt: skip


async def list_billing_invoices(request: web.Request) -> web.Response:
    """The invoices billing issued for an account (periods, prorations, purchases), with
    where each one's charge stands."""
    principal = await authenticate(request)
    account_id = request.match_info["id"]
    await authorize_account(request, principal, account_id)
    query = decode_query(request, ListQuery)
    rows = await records.invoice_rows(request.app[STORE].engine, account_id=account_id)
    every = [records.billing_invoice_view(r) for r in reversed(rows)]  # newest first
    if query.starting_after is not None:
        ids_in_order = [i.id for i in every]
        every = (every[ids_in_order.index(query.starting_after) + 1 :]
                 if query.starting_after in ids_in_order else [])  # fmt: skip
    page = every[: query.limit]
    return respond(BillingInvoiceList(data=page, has_more=len(every) > len(page)))
