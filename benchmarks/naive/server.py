"""The naive baseline's HTTP server. NOT PART OF PAYPORTAL: see ``benchmarks/naive/README.md``.

``POST /v1/payments`` the obvious way, one request at a time:

1. the bearer API key, hashed (SHA-256) and looked up (verified hashes are cached for a
   minute, as any server would);
2. the saved payment method's processor token, from the database;
3. the charge at the processor over HTTP, outside any transaction, with an idempotency
   key made of the account and the request's ``Idempotency-Key`` (a retried request
   charges nothing twice; the processor replays its first answer);
4. one transaction: ``SELECT … FOR UPDATE`` on the account row (one payment per account
   at a time), a replay of an earlier payment with the same key if there is one, the
   open invoices oldest due date first, their updates, the payment row (``UNIQUE
   (account_id, idempotency_key)``), its allocations and the account's new balance;
   committed synchronously (PostgreSQL's default);
5. 200 with the payment, ``"status": "succeeded"``; 402 when the card is declined.

Also ``GET /v1/accounts/{id}``, ``GET /v1/payments/{id}``, and the processor's callback
route, which answers 200 and does nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import aiohttp
import asyncpg
import msgspec
from aiohttp import web

__all__ = ["create_app"]

AUTH_CACHE_S = 60.0
PROCESSOR_TIMEOUT_S = 10.0
PROCESSOR_CONNECTIONS = 256

POOL = web.AppKey("pool", asyncpg.Pool)
HTTP = web.AppKey("http", aiohttp.ClientSession)
PROCESSOR_URL = web.AppKey("processor_url", str)
VERIFIED = web.AppKey("verified", dict)


class PaymentIn(msgspec.Struct, kw_only=True):
    account: str
    amount: int
    currency: str
    payment_method: str


class Allocation(msgspec.Struct):
    invoice: str
    amount: int


class PaymentOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "payment"
    account: str
    amount: int
    currency: str
    status: str
    payment_method: str
    allocations: list[Allocation]
    amount_applied: int
    amount_unapplied: int
    created: int


class Balance(msgspec.Struct):
    outstanding: int
    credit: int
    currency: str


class AccountOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "account"
    currency: str
    balance: Balance


_encode = msgspec.json.Encoder().encode
_decode_payment = msgspec.json.Decoder(PaymentIn).decode


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=_encode(payload), content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(status, {"error": {"type": "invalid_request_error", "code": code,
                                    "message": message}})  # fmt: skip


async def _authenticated(request: web.Request) -> bool:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return False
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    verified: dict[str, float] = request.app[VERIFIED]
    now = time.monotonic()
    if verified.get(digest, 0.0) > now:
        return True
    row = await request.app[POOL].fetchval(
        "SELECT 1 FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest
    )
    if row is None:
        return False
    verified[digest] = now + AUTH_CACHE_S
    return True


async def create_payment(request: web.Request) -> web.Response:
    if not await _authenticated(request):
        return _error(401, "authentication_failed", "Invalid API key.")
    key = request.headers.get("Idempotency-Key")
    if not key:
        return _error(400, "parameter_missing", "Idempotency-Key is required.")
    try:
        body = _decode_payment(await request.read())
    except msgspec.MsgspecError as error:
        return _error(400, "parameter_invalid", str(error))
    if body.amount <= 0:
        return _error(400, "parameter_invalid", "amount must be positive")
    pool = request.app[POOL]
    token = await pool.fetchval(
        "SELECT token FROM payment_methods WHERE id = $1 AND account_id = $2",
        body.payment_method, body.account,
    )  # fmt: skip
    if token is None:
        return _error(404, "resource_missing", "No such payment method for this account.")

    # The charge, outside the transaction: the account is not locked while the processor
    # thinks. The same request sent again uses the same processor key.
    charge_request = {"token": token, "amount": body.amount, "currency": body.currency,
                      "idempotency_key": f"{body.account}:{key}"}  # fmt: skip
    try:
        async with request.app[HTTP].post(
            f"{request.app[PROCESSOR_URL]}/v1/charges", json=charge_request
        ) as answer:
            charged = await answer.read()
            status = answer.status
    except (aiohttp.ClientError, TimeoutError):
        return _error(502, "processor_unavailable", "The processor did not answer.")
    if status == 402:
        return web.Response(status=402, body=charged, content_type="application/json")
    if status != 200:
        return _error(502, "processor_error", f"The processor answered {status}.")
    charge_id = msgspec.json.decode(charged)["id"]

    async with pool.acquire() as connection, connection.transaction():
        account = await connection.fetchrow(
            "SELECT currency FROM accounts WHERE id = $1 FOR UPDATE", body.account
        )
        if account is None:
            return _error(404, "resource_missing", "No such account.")
        replayed = await connection.fetchrow(
            "SELECT id, amount_minor, currency, payment_method, applied_minor,"
            " extract(epoch FROM created_at)::bigint AS created"
            " FROM payments WHERE account_id = $1 AND idempotency_key = $2",
            body.account, key,
        )  # fmt: skip
        if replayed is not None:
            rows = await connection.fetch(
                "SELECT invoice_id, amount_minor FROM allocations WHERE payment_id = $1",
                replayed["id"],
            )
            return _json(200, PaymentOut(
                id=replayed["id"], account=body.account, amount=replayed["amount_minor"],
                currency=replayed["currency"], status="succeeded",
                payment_method=replayed["payment_method"],
                allocations=[Allocation(r["invoice_id"], r["amount_minor"]) for r in rows],
                amount_applied=replayed["applied_minor"],
                amount_unapplied=replayed["amount_minor"] - replayed["applied_minor"],
                created=replayed["created"],
            ))  # fmt: skip
        invoices = await connection.fetch(
            "SELECT id, amount_minor - paid_minor AS remaining FROM invoices"
            " WHERE account_id = $1 AND status = 'open' ORDER BY due_date, id",
            body.account,
        )  # fmt: skip
        left = body.amount
        allocations: list[Allocation] = []
        for invoice in invoices:
            if left == 0:
                break
            part = min(left, invoice["remaining"])
            allocations.append(Allocation(invoice["id"], part))
            left -= part
        if allocations:
            await connection.executemany(
                "UPDATE invoices SET paid_minor = paid_minor + $2, status = CASE WHEN"
                " paid_minor + $2 >= amount_minor THEN 'paid' ELSE 'open' END WHERE id = $1",
                [(a.invoice, a.amount) for a in allocations],
            )  # fmt: skip
        payment_id = f"pay_{secrets.token_hex(10)}"
        applied = body.amount - left
        await connection.execute(
            "INSERT INTO payments (id, account_id, idempotency_key, amount_minor, currency,"
            " status, payment_method, charge_id, applied_minor)"
            " VALUES ($1, $2, $3, $4, $5, 'succeeded', $6, $7, $8)",
            payment_id, body.account, key, body.amount, account["currency"],
            body.payment_method, charge_id, applied,
        )  # fmt: skip
        if allocations:
            await connection.executemany(
                "INSERT INTO allocations (payment_id, invoice_id, amount_minor)"
                " VALUES ($1, $2, $3)",
                [(payment_id, a.invoice, a.amount) for a in allocations],
            )  # fmt: skip
        await connection.execute(
            "UPDATE accounts SET outstanding_minor = outstanding_minor - $2,"
            " credit_minor = credit_minor + $3 WHERE id = $1",
            body.account, applied, left,
        )  # fmt: skip
    return _json(200, PaymentOut(
        id=payment_id, account=body.account, amount=body.amount,
        currency=account["currency"], status="succeeded", payment_method=body.payment_method,
        allocations=allocations, amount_applied=applied, amount_unapplied=left,
        created=int(time.time()),
    ))  # fmt: skip


async def get_account(request: web.Request) -> web.Response:
    if not await _authenticated(request):
        return _error(401, "authentication_failed", "Invalid API key.")
    row = await request.app[POOL].fetchrow(
        "SELECT id, currency, outstanding_minor, credit_minor FROM accounts WHERE id = $1",
        request.match_info["id"],
    )
    if row is None:
        return _error(404, "resource_missing", "No such account.")
    return _json(200, AccountOut(
        id=row["id"], currency=row["currency"],
        balance=Balance(row["outstanding_minor"], row["credit_minor"], row["currency"]),
    ))  # fmt: skip


async def get_payment(request: web.Request) -> web.Response:
    if not await _authenticated(request):
        return _error(401, "authentication_failed", "Invalid API key.")
    row = await request.app[POOL].fetchrow(
        "SELECT id, account_id, amount_minor, currency, status, payment_method,"
        " applied_minor, extract(epoch FROM created_at)::bigint AS created"
        " FROM payments WHERE id = $1",
        request.match_info["id"],
    )  # fmt: skip
    if row is None:
        return _error(404, "resource_missing", "No such payment.")
    return _json(200, PaymentOut(
        id=row["id"], account=row["account_id"], amount=row["amount_minor"],
        currency=row["currency"], status=row["status"], payment_method=row["payment_method"],
        allocations=[], amount_applied=row["applied_minor"],
        amount_unapplied=row["amount_minor"] - row["applied_minor"], created=row["created"],
    ))  # fmt: skip


async def processor_callback(request: web.Request) -> web.Response:
    # The processor's signed callbacks tell us what the charge's answer already did.
    await request.read()
    return web.Response(body=b"{}", content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def create_app(database_url: str, processor_url: str, *, pool_size: int = 20) -> web.Application:
    app = web.Application()
    app[PROCESSOR_URL] = processor_url.rstrip("/")
    app[VERIFIED] = {}

    async def lifecycle(app: web.Application) -> Any:
        app[POOL] = await asyncpg.create_pool(database_url, min_size=pool_size,
                                              max_size=pool_size)  # fmt: skip
        app[HTTP] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=PROCESSOR_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=PROCESSOR_TIMEOUT_S),
        )
        yield
        await app[HTTP].close()
        await app[POOL].close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/payments", create_payment)
    app.router.add_get("/v1/payments/{id}", get_payment)
    app.router.add_get("/v1/accounts/{id}", get_account)
    app.router.add_post("/v1/processors/sandbox/callbacks", processor_callback)
    app.router.add_get("/healthz", healthz)
    return app
