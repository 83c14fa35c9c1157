"""Payments: create (idempotent; the charge outside the critical section), read, list,
cancel, refund, and the allocation preview.

How ``POST /v1/payments`` answers (the engine's status decides):

| payment after the charge | HTTP |
|---|---|
| ``succeeded`` | 200, the payment |
| ``requires_payment_method`` / ``failed`` after a decline | 402 ``card_error`` / ``card_declined`` with ``decline_code`` and ``error.payment`` |
| ``retry_scheduled`` (soft decline or technical error) | 200, the payment (``next_retry_at`` set) |
| ``processing`` (the outcome is unknown: timeout) | 200, the payment; never charged again |
| ``requires_action`` (3-D Secure) | 200, the payment with ``next_action`` while the processor holds a challenge |
"""  # noqa: E501

from __future__ import annotations

import asyncio
import datetime as dt

from aiohttp import web

from payportal.actors import Reply
from payportal.engine import (
    Allocation,
    AnswerRequest,
    AttemptStatus,
    CancelPayment,
    ConfirmPayment,
    CreatePayment,
    OutcomeKind,
    Payment,
    PaymentMethodRef,
    PaymentStatus,
    RefundPayment,
    Rejection,
    Result,
    allocate,
)
from payportal.persistence import directory, queries
from payportal.processors.adapter import NextAction

from . import ids
from .auth import Principal, authenticate, authorize_account
from .codec import decode_body, decode_query, encode, respond
from .errors import ApiError, from_rejection, not_found, parameter_invalid, parameter_missing
from .idempotency import (
    IN_FLIGHT_MAX_MS,
    REPLAYED_HEADER,
    engine_key,
    idempotency_key,
    key_in_use,
    request_hash,
    run_idempotent,
)
from .reads import read_payment, wait_for_account_projection
from .schemas import (
    AllocationOut,
    AllocationPreview,
    PaymentCreate,
    PaymentList,
    PaymentListQuery,
    PreviewQuery,
    Refund,
    RefundCreate,
)
from .typedefs import CLOCK_MS, GATEWAY, IN_FLIGHT, METHODS, PROCESSOR, ROUTER, STORE, TASKS
from .views import payment_row_view, payment_view

__all__ = [
    "cancel_payment",
    "confirm_and_charge",
    "confirm_payment",
    "create_and_charge",
    "create_payment",
    "create_refund",
    "get_payment",
    "list_payments",
    "preview_allocation",
]

_DECLINED_FINAL = frozenset({PaymentStatus.requires_payment_method, PaymentStatus.failed})


def _answer(
    account_id: str, payment: Payment, next_action: NextAction | None = None
) -> tuple[int, bytes, dict[str, str]]:
    view = payment_view(account_id, payment, next_action)
    attempt = payment.current_attempt
    if payment.status in _DECLINED_FINAL and attempt.status in (
        AttemptStatus.declined, AttemptStatus.errored
    ):  # fmt: skip
        error = ApiError(
            402, "card_error", "card_declined", "The card was declined.",
            decline_code=attempt.decline_code, payment=view,
        )  # fmt: skip
        return error.status, error.encode(), {}
    return 200, encode(view), {}


async def _payment_method(
    request: web.Request, account_id: str, body: PaymentCreate
) -> PaymentMethodRef:
    if body.payment_method is not None:
        row = await request.app[METHODS].get(body.payment_method)
        # Deleted since deletions are journaled: the account's shard refuses it.
        if row is None or row.account_id != account_id or row.deleted_at is not None:
            raise not_found("payment_method", "payment method")
        return PaymentMethodRef(id=row.id, brand=row.brand, kind=row.type)
    assert body.token is not None
    # A one-off token becomes a payment method that is not kept for reuse (deleted at
    # once: in the history, not in the list). Its id is fixed by the token, so the same
    # request sent again names the same method.
    method_id = ids.derived_id("pm", account_id, body.token)
    await directory.insert_payment_method(
        request.app[STORE].engine,
        {"id": method_id, "account_id": account_id, "token": body.token, "type": "card",
         "brand": "unknown", "deleted_at": dt.datetime.now(dt.UTC)},
    )  # fmt: skip
    return PaymentMethodRef(id=method_id, brand="unknown", kind="card")


async def create_payment(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    key = idempotency_key(request, required=True)
    assert key is not None
    body, canonical = await decode_body(request, PaymentCreate)
    if body.payment_method is None and body.token is None:
        raise parameter_missing("payment_method", "Send a payment_method or a token.")
    if body.payment_method is not None and body.token is not None:
        raise parameter_invalid("token", "Send a payment_method or a token, not both.")
    account_id = body.account
    await authorize_account(request, principal, account_id, param="account")
    status, payload, headers = await create_and_charge(
        request, principal, key, account_id, body, request_hash(request, canonical)
    )
    return web.Response(status=status, body=payload, content_type="application/json",
                        headers=headers)  # fmt: skip


async def create_and_charge(
    request: web.Request, principal: Principal, key: str, account_id: str, body: PaymentCreate,
    hashed: str,
) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    """Create the payment in its account's shard and charge it, idempotently on ``key``;
    the status, body and headers of the answer (the API's handler and the portal's pay
    form both answer with it).

    Idempotency is the engine's (``CreatePayment`` carries the scoped key and the request's
    hash): a key seen before with another request is refused (422); with the same request
    it is answered with the payment as its first answer left it (``Payment.answer``), byte
    for byte, or 409 while that first request is still running. A payment left unanswered
    by a process that died is taken over after ``IN_FLIGHT_MAX_MS``: its attempt is sent
    again under its own processor key, which cannot charge twice."""
    if not account_id.startswith(ids.ACCOUNT_PREFIX):
        raise not_found("account", "account")
    scoped = engine_key(principal, key)
    in_flight = request.app[IN_FLIGHT]
    if (account_id, scoped) in in_flight:
        raise key_in_use()
    method = await _payment_method(request, account_id, body)
    router = request.app[ROUTER]
    payment_id = ids.child_id("pay", account_id)
    reply = await router.submit(
        CreatePayment(
            account_id=account_id, payment_id=payment_id,
            attempt_id=ids.child_id("att", account_id), idempotency_key=scoped,
            amount_minor=body.amount, currency=body.currency.upper(), payment_method=method,
            allocations=tuple(Allocation(invoice_id=a.invoice, amount_minor=a.amount)
                              for a in body.allocations),
            request_hash=hashed,
            description=body.description or None,
        )
    )  # fmt: skip
    if reply.outcome.result is Result.rejected:
        rejection = reply.outcome.rejection
        assert rejection is not None
        where = "account" if rejection is Rejection.account_not_found else "allocations"
        if rejection is Rejection.payment_method_not_found:
            where = "payment_method"
        raise from_rejection(rejection, not_found_param=where)
    payment = reply.payment
    assert payment is not None
    if reply.outcome.result is Result.exists:
        if payment.answer is not None:
            # While the challenge is still open the replay carries it as the first answer
            # did; once it is answered, the payment's own status tells the rest.
            action = await request.app[GATEWAY].next_action(payment.answer)
            status, answer, headers = _answer(account_id, payment.answer, action)
            return status, answer, {**headers, REPLAYED_HEADER: "true"}
        # The payment this request just created, answered ``exists`` because its command
        # was delivered twice (Ray sends a call again to a shard restarted after its
        # commit): no other request can be charging it.
        ours = payment.payment_id == payment_id
        if not ours and ((account_id, scoped) in in_flight or not _abandoned(request, payment)):
            raise key_in_use()
    # The charge and the answer it leaves must finish even if the client hangs up.
    in_flight.add((account_id, scoped))
    try:
        task = asyncio.get_running_loop().create_task(
            _charge_and_answer(request, account_id, reply)
        )
        tasks = request.app[TASKS]
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        payment = await asyncio.shield(task)
    finally:
        in_flight.discard((account_id, scoped))
    return _answer(account_id, payment, await request.app[GATEWAY].next_action(payment))


def _abandoned(request: web.Request, payment: Payment) -> bool:
    """An unanswered payment whose request no process can still be running."""
    return request.app[CLOCK_MS]() - payment.created_at_ms >= IN_FLIGHT_MAX_MS


async def _charge_and_answer(request: web.Request, account_id: str, reply: Reply) -> Payment:
    payment = reply.payment
    assert payment is not None
    gateway = request.app[GATEWAY]
    if payment.status is PaymentStatus.processing and gateway.needs_charge(payment):
        reply = await gateway.charge_attempt(reply, account_id, answers_request=True)
    else:
        reply = await request.app[ROUTER].submit(
            AnswerRequest(account_id=account_id, payment_id=payment.payment_id)
        )
    answered = reply.payment
    assert answered is not None
    # Kept by the engine unless it refused the outcome (then the payment as it is).
    return answered.answer if answered.answer is not None else answered


def _payment_account(payment_id: str) -> str:
    account_id = ids.account_of(payment_id, "pay")
    if account_id is None:
        raise not_found("id", "payment")
    return account_id


async def get_payment(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    payment_id = request.match_info["id"]
    account_id = _payment_account(payment_id)
    await authorize_account(request, principal, account_id)
    reply = await read_payment(request.app[ROUTER], account_id, payment_id)
    if reply.payment is None:
        raise not_found("id", "payment")
    action = await request.app[GATEWAY].next_action(reply.payment)
    return respond(payment_view(account_id, reply.payment, action))


async def confirm_payment(request: web.Request) -> web.Response:
    """The payer, present, confirms a payment that waits for their authentication after
    an attempt made without them: a new attempt on session with the same method, whose
    challenge (``next_action``) is in the answer."""
    principal = await authenticate(request)
    payment_id = request.match_info["id"]
    account_id = _payment_account(payment_id)
    await authorize_account(request, principal, account_id)
    payment, action = await confirm_and_charge(request, account_id, payment_id)
    status, body, headers = _answer(account_id, payment, action)
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)  # fmt: skip


async def confirm_and_charge(
    request: web.Request, account_id: str, payment_id: str
) -> tuple[Payment, NextAction | None]:
    """The use-case behind ``POST /v1/payments/{id}/confirm`` and the portal's Confirm:
    the engine refuses a second attempt while one is open, so a double submit charges
    once. Raises the contract's ``ApiError`` when the payment is not waiting for this."""
    reply = await request.app[ROUTER].submit(
        ConfirmPayment(account_id=account_id, payment_id=payment_id,
                       attempt_id=ids.child_id("att", account_id))
    )  # fmt: skip
    if reply.outcome.result is Result.rejected:
        assert reply.outcome.rejection is not None
        raise from_rejection(reply.outcome.rejection, not_found_param="id")
    payment = reply.payment
    assert payment is not None
    gateway = request.app[GATEWAY]
    if payment.status is PaymentStatus.processing and gateway.needs_charge(payment):
        reply = await gateway.charge_attempt(reply, account_id)
        payment = reply.payment
        assert payment is not None
    return payment, await gateway.next_action(payment)


async def list_payments(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    query = decode_query(request, PaymentListQuery)
    account_ids: list[str] | None = None
    if query.account is not None:
        await authorize_account(request, principal, query.account, param="account")
        await wait_for_account_projection(request, query.account)
        account_ids = [query.account]
    elif not principal.is_merchant:
        account_ids = await directory.payer_account_ids(request.app[STORE].engine, principal.id)
    page = await queries.list_payments(
        request.app[STORE].engine, account_ids=account_ids, status=query.status,
        created_gte_ms=None if query.created_gte is None else query.created_gte * 1000,
        created_lt_ms=None if query.created_lt is None else query.created_lt * 1000,
        limit=query.limit, starting_after=query.starting_after,
    )  # fmt: skip
    return respond(PaymentList(data=[payment_row_view(r) for r in page.data],
                               has_more=page.has_more))  # fmt: skip


async def cancel_payment(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    payment_id = request.match_info["id"]
    account_id = _payment_account(payment_id)
    await authorize_account(request, principal, account_id)
    reply = await request.app[ROUTER].submit(
        CancelPayment(account_id=account_id, payment_id=payment_id)
    )
    if reply.outcome.result is Result.rejected:
        assert reply.outcome.rejection is not None
        raise from_rejection(reply.outcome.rejection, not_found_param="id")
    assert reply.payment is not None
    return respond(payment_view(account_id, reply.payment))


async def create_refund(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    payment_id = request.match_info["id"]
    account_id = _payment_account(payment_id)
    # Refunds are the merchant's: for a payer the operation does not exist.
    await authorize_account(request, principal, account_id, merchant_only=True)
    key = idempotency_key(request, required=True)
    assert key is not None
    body, canonical = await decode_body(request, RefundCreate)

    async def operation() -> tuple[int, bytes, dict[str, str]]:
        router = request.app[ROUTER]
        payment = (await read_payment(router, account_id, payment_id)).payment
        if payment is None:
            raise not_found("id", "payment")
        captured = [a for a in payment.attempts if a.status is AttemptStatus.succeeded]
        if not captured:
            raise from_rejection(Rejection.payment_status_must_allow_transition)
        refundable_minor = payment.amount_minor - payment.amount_refunded_minor
        amount_minor = refundable_minor if body.amount is None else body.amount
        if amount_minor > refundable_minor or amount_minor <= 0:
            raise from_rejection(Rejection.refund_must_not_exceed_refundable)
        charge_id = captured[0].charge_id
        processor = request.app[PROCESSOR]
        if processor is None or charge_id is None:
            raise ApiError(503, "api_error", "api_error", "No processor can take the refund now.")
        refund_id = ids.derived_child_id("re", account_id, principal.id, key)
        result = await processor.refund(charge_id, amount_minor, idempotency_key=refund_id)
        if result.outcome is OutcomeKind.declined:
            raise ApiError(
                400, "invalid_request_error", "refund_declined",
                f"The processor declined the refund ({result.failure_code}).",
            )  # fmt: skip
        if result.outcome is not OutcomeKind.succeeded:
            raise ApiError(
                503, "api_error", "api_error",
                "The processor's answer is not known yet; retry with the same key.",
            )  # fmt: skip
        reply = await router.submit(
            RefundPayment(account_id=account_id, payment_id=payment_id, refund_id=refund_id,
                          amount_minor=amount_minor)
        )  # fmt: skip
        if reply.outcome.result is Result.rejected:
            assert reply.outcome.rejection is not None
            raise from_rejection(reply.outcome.rejection, not_found_param="id")
        refund = Refund(id=refund_id, payment=payment_id, amount=amount_minor,
                        currency=payment.currency, status="succeeded")  # fmt: skip
        return 200, encode(refund), {}

    return await run_idempotent(
        request, principal=principal, account_id=account_id, key=key,
        hashed=request_hash(request, canonical), operation=operation,
    )  # fmt: skip


async def preview_allocation(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    query = decode_query(request, PreviewQuery)
    await authorize_account(request, principal, query.account, param="account")
    engine = request.app[STORE].engine
    profile = await directory.account_profile(engine, query.account)
    if profile is None:
        raise not_found("account", "account")
    await wait_for_account_projection(request, query.account)
    split = allocate(await queries.open_invoices(engine, query.account), query.amount)
    return respond(
        AllocationPreview(
            account=query.account, amount=query.amount, currency=profile.currency,
            allocations=[AllocationOut(invoice=a.invoice_id, amount=a.amount_minor)
                         for a in split.allocations],
            amount_applied=split.applied_minor, amount_unapplied=split.unapplied_minor,
        )
    )  # fmt: skip
