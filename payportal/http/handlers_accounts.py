"""Accounts, invoices, payers and payment methods: thin handlers (read, decode, call the
shard or the directory, encode). Single objects come from their shard; lists from the
read models; who may see what is ``auth.authorize_account``'s one rule."""

from __future__ import annotations

import sqlalchemy as sa
from aiohttp import web

from payportal.engine import (
    IssueInvoice,
    OpenAccount,
    Result,
    ServicePeriod,
    VoidInvoice,
    currency_is_valid,
)
from payportal.persistence import directory, queries

from . import ids
from .auth import (
    Principal,
    authenticate,
    authorize_account,
    hash_password,
    issue_payer_session,
    verify_password,
)
from .codec import decode_body, decode_query, encode, respond
from .errors import authentication_failed, from_rejection, not_found, parameter_invalid
from .idempotency import idempotency_key, request_hash, run_idempotent
from .methods import remove_payment_method
from .reads import read_account, wait_for_account_projection
from .schemas import (
    AccountCreate,
    AccountList,
    InvoiceCreate,
    InvoiceList,
    InvoiceListQuery,
    ListQuery,
    Payer,
    PayerCreate,
    PayerSession,
    PayerSessionCreate,
    PaymentMethodCreate,
    PaymentMethodList,
    PaymentMethodListQuery,
)
from .typedefs import METHODS, PROFILES, ROUTER, STORE
from .views import (
    account_row_view,
    account_view,
    invoice_row_view,
    invoice_view,
    payment_method_view,
)

__all__ = [
    "create_account",
    "create_invoice",
    "create_payer",
    "create_payer_session",
    "create_payment_method",
    "delete_payment_method",
    "get_account",
    "get_payment_method",
    "list_accounts",
    "list_invoices",
    "list_payer_accounts",
    "list_payment_methods",
    "void_invoice",
]


async def _merchant(request: web.Request) -> Principal:
    """Merchant-only operations do not exist for anyone else: 404, never 403."""
    principal = await authenticate(request)
    if not principal.is_merchant:
        raise not_found(None, "resource")
    return principal


async def _profile(request: web.Request, account_id: str) -> directory.AccountProfile:
    profile = await request.app[PROFILES].get(account_id)
    if profile is None:
        raise not_found("id", "account")
    return profile


# -- accounts ---------------------------------------------------------------------------------


async def create_account(request: web.Request) -> web.Response:
    principal = await _merchant(request)
    body, canonical = await decode_body(request, AccountCreate)
    currency = body.currency.upper()
    if not currency_is_valid(currency):
        raise parameter_invalid("currency", "The currency is not a supported ISO 4217 code.")
    key = idempotency_key(request, required=False)
    # With a key, the id is fixed by it: a retry after a lost answer names the same account.
    account_id = ids.new_id("acct") if key is None else ids.derived_id("acct", principal.id, key)

    async def operation() -> tuple[int, bytes, dict[str, str]]:
        engine = request.app[STORE].engine
        try:
            await directory.insert_account_profile(
                engine,
                {"account_id": account_id, "name": body.name, "email": body.email.lower(),
                 "currency": currency, "external_ref": body.external_ref},
            )  # fmt: skip
        except sa.exc.IntegrityError:
            if key is None:
                raise
        reply = await request.app[ROUTER].submit(
            OpenAccount(account_id=account_id, currency=currency)
        )
        if reply.outcome.result is Result.rejected:
            assert reply.outcome.rejection is not None
            raise from_rejection(reply.outcome.rejection)
        assert reply.balance is not None
        profile = await _profile(request, account_id)
        return 200, encode(account_view(profile, reply.balance)), {}

    if key is None:
        status, payload, _ = await operation()
        return web.Response(status=status, body=payload, content_type="application/json")
    return await run_idempotent(
        request, principal=principal, account_id="", key=key,
        hashed=request_hash(request, canonical), operation=operation,
    )  # fmt: skip


async def get_account(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    account_id = request.match_info["id"]
    await authorize_account(request, principal, account_id)
    profile = await _profile(request, account_id)
    router = request.app[ROUTER]
    known = router.balances.get(account_id)
    if known is not None:
        return respond(account_view(profile, known[1]))
    reply = await read_account(router, account_id)
    if reply.balance is None:
        raise not_found("id", "account")
    return respond(account_view(profile, reply.balance))


async def _account_list(request: web.Request, principal: Principal) -> web.Response:
    query = decode_query(request, ListQuery)
    engine = request.app[STORE].engine
    only = None
    if not principal.is_merchant:
        only = await directory.payer_account_ids(engine, principal.id)
    page = await queries.list_accounts(
        engine, only=only, limit=query.limit, starting_after=query.starting_after
    )
    return respond(AccountList(data=[account_row_view(r) for r in page.data],
                               has_more=page.has_more))  # fmt: skip


async def list_accounts(request: web.Request) -> web.Response:
    """A merchant's accounts, or a payer's own."""
    return await _account_list(request, await authenticate(request))


async def list_payer_accounts(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    if principal.is_merchant:
        raise not_found(None, "resource")
    return await _account_list(request, principal)


# -- invoices ---------------------------------------------------------------------------------


async def create_invoice(request: web.Request) -> web.Response:
    principal = await _merchant(request)
    account_id = request.match_info["id"]
    body, canonical = await decode_body(request, InvoiceCreate)
    key = idempotency_key(request, required=False)
    router = request.app[ROUTER]

    async def operation() -> tuple[int, bytes, dict[str, str]]:
        account = await read_account(router, account_id)
        if account.balance is None:
            raise not_found("id", "account")
        invoice_id = (
            ids.child_id("inv", account_id) if key is None
            else ids.derived_child_id("inv", account_id, principal.id, key)
        )  # fmt: skip
        period = body.service_period
        reply = await router.submit(
            IssueInvoice(
                account_id=account_id, invoice_id=invoice_id,
                # Without a number, the id's time-ordered part: numbers then sort by issue.
                number=body.number or invoice_id.rpartition("_")[2].upper(),
                amount_minor=body.amount, currency=account.balance.currency,
                due_date=body.due_date,
                service_period=None if period is None
                else ServicePeriod(start=period.start, end=period.end),
                # An empty description is none: nothing to show.
                description=body.description or None,
            )
        )  # fmt: skip
        if reply.outcome.result is Result.rejected:
            assert reply.outcome.rejection is not None
            raise from_rejection(reply.outcome.rejection)
        assert reply.invoice is not None
        assert reply.balance is not None
        view = invoice_view(account_id, reply.balance.currency, reply.invoice)
        return 200, encode(view), {}

    if key is None:
        status, payload, _ = await operation()
        return web.Response(status=status, body=payload, content_type="application/json")
    return await run_idempotent(
        request, principal=principal, account_id=account_id, key=key,
        hashed=request_hash(request, canonical), operation=operation,
    )  # fmt: skip


async def list_invoices(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    account_id = request.match_info["id"]
    await authorize_account(request, principal, account_id)
    query = decode_query(request, InvoiceListQuery)
    profile = await _profile(request, account_id)
    await wait_for_account_projection(request, account_id)
    page = await queries.list_invoices(
        request.app[STORE].engine, account_id, status=query.status, limit=query.limit,
        starting_after=query.starting_after,
    )  # fmt: skip
    return respond(InvoiceList(data=[invoice_row_view(r, profile.currency) for r in page.data],
                               has_more=page.has_more))  # fmt: skip


async def void_invoice(request: web.Request) -> web.Response:
    await _merchant(request)
    invoice_id = request.match_info["id"]
    account_id = ids.account_of(invoice_id, "inv")
    if account_id is None:
        raise not_found("id", "invoice")
    reply = await request.app[ROUTER].submit(
        VoidInvoice(account_id=account_id, invoice_id=invoice_id)
    )
    if reply.outcome.result is Result.rejected:
        assert reply.outcome.rejection is not None
        raise from_rejection(reply.outcome.rejection, not_found_param="id")
    assert reply.invoice is not None
    assert reply.balance is not None
    return respond(invoice_view(account_id, reply.balance.currency, reply.invoice))


# -- payers -----------------------------------------------------------------------------------


async def create_payer(request: web.Request) -> web.Response:
    await _merchant(request)
    account_id = request.match_info["id"]
    body, _ = await decode_body(request, PayerCreate)
    await _profile(request, account_id)
    engine = request.app[STORE].engine
    email = body.email.lower()
    password_hash = None if body.password is None else await hash_password(body.password)
    payer_id, _ = await directory.link_payer(
        engine, new_payer_id=ids.new_id("payer"), email=email, password_hash=password_hash,
        account_id=account_id,
    )  # fmt: skip
    login = await directory.payer_by_email(engine, email)
    assert login is not None
    if login.password_hash is None:
        # No password yet: an email with a one-time link to choose one (once per payer
        # and account, however often this is called).
        from payportal.mail import public_url
        from payportal.web.invitations import invite_payer

        profile = await _profile(request, account_id)
        await invite_payer(
            engine, payer_id=payer_id, email=email, account_id=account_id,
            account_name=profile.name, public_url=public_url(),
        )  # fmt: skip
    accounts = await directory.payer_account_ids(engine, payer_id)
    return respond(
        Payer(id=payer_id, email=email, accounts=accounts,
              has_password=login.password_hash is not None)
    )  # fmt: skip


async def create_payer_session(request: web.Request) -> web.Response:
    body, _ = await decode_body(request, PayerSessionCreate)
    store = request.app[STORE]
    login = await directory.payer_by_email(store.engine, body.email.strip().lower())
    verified = await verify_password(login.password_hash if login else None, body.password)
    if login is None or not verified:
        raise authentication_failed("The email or password is not right.")
    token, expires_at = await issue_payer_session(store, login.payer_id)
    return respond(PayerSession(token=token, expires_at=int(expires_at.timestamp())))


# -- payment methods --------------------------------------------------------------------------


async def create_payment_method(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    account_id = request.match_info["id"]
    await authorize_account(request, principal, account_id)
    body, _ = await decode_body(request, PaymentMethodCreate)
    await _profile(request, account_id)
    engine = request.app[STORE].engine
    method_id = ids.new_id("pm")
    kind = "wallet" if body.wallet is not None else body.type
    await directory.insert_payment_method(
        engine,
        {"id": method_id, "account_id": account_id, "token": body.token, "type": kind,
         "brand": body.brand.lower(), "last4": body.last4, "exp_month": body.exp_month,
         "exp_year": body.exp_year, "wallet": body.wallet},
    )  # fmt: skip
    row = await directory.payment_method(engine, method_id)
    assert row is not None
    return respond(payment_method_view(row))


async def list_payment_methods(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    account_id = request.match_info["id"]
    await authorize_account(request, principal, account_id)
    query = decode_query(request, PaymentMethodListQuery)
    page = await queries.list_payment_methods(
        request.app[STORE].engine, account_id, include_deleted=query.include_deleted,
        limit=query.limit, starting_after=query.starting_after,
    )  # fmt: skip
    return respond(PaymentMethodList(data=[payment_method_view(r) for r in page.data],
                                     has_more=page.has_more))  # fmt: skip


async def _own_payment_method(request: web.Request) -> directory.PaymentMethodRow:
    principal = await authenticate(request)
    row = await directory.payment_method(request.app[STORE].engine, request.match_info["id"])
    if row is None:
        raise not_found("id", "payment method")
    await authorize_account(request, principal, row.account_id)
    return row


async def get_payment_method(request: web.Request) -> web.Response:
    return respond(payment_method_view(await _own_payment_method(request)))


async def delete_payment_method(request: web.Request) -> web.Response:
    row = await _own_payment_method(request)
    engine = request.app[STORE].engine
    await remove_payment_method(request.app[ROUTER], request.app[METHODS], row)
    deleted = await directory.payment_method(engine, row.id)
    assert deleted is not None
    assert deleted.deleted_at is not None
    return respond(payment_method_view(deleted))
