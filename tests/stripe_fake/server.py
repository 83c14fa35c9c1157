"""A Stripe-shaped HTTP server for the adapter's tests (README.md beside this file)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"

# Stripe's test payment methods: (decline code or None, network advice code)
DECLINES: dict[str, tuple[str, str | None]] = {
    "pm_card_chargeDeclinedInsufficientFunds": ("insufficient_funds", None),
    "pm_card_chargeDeclined": ("generic_decline", None),
    "pm_card_chargeDeclinedLostCard": ("lost_card", "03"),
    "pm_card_chargeDeclinedProcessingError": ("processing_error", None),
}
AUTHENTICATION_REQUIRED = "pm_card_authenticationRequired"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe sends with ``payload``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]
    query: dict[str, str]


@dataclass
class FakeStripe:
    requests: list[Recorded] = field(default_factory=list)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Idempotency-Key -> (params, status, body): a repeat is answered the same.
    keys: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = field(default_factory=dict)
    # Statuses to answer the next requests with, before doing anything (500, 429).
    fail_next: list[int] = field(default_factory=list)
    # Seconds the next idempotent POST waits, after acting, before it is answered.
    delay_next_s: float = 0.0
    payouts: list[dict[str, Any]] = field(default_factory=list)
    payout_transactions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):08d}"

    def posts(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    def event(self, type_: str, obj: dict[str, Any]) -> str:
        """A webhook body as Stripe sends it: the published event example, filled in."""
        event = fixture("event")
        event.update(id=self.new_id("evt"), type=type_, created=int(time.time()),
                     data={"object": obj})  # fmt: skip
        return json.dumps(event)

    def charge_of(self, intent_id: str) -> dict[str, Any]:
        intent = self.intents[intent_id]
        charge = fixture("charge")
        charge.update(id=intent["latest_charge"], amount=intent["amount"],
                      currency=intent["currency"], payment_intent=intent_id,
                      metadata=intent["metadata"], status="succeeded", paid=True)  # fmt: skip
        return charge

    def dispute_of(self, intent_id: str) -> dict[str, Any]:
        intent = self.intents[intent_id]
        dispute = fixture("dispute")
        dispute.update(id=self.new_id("dp"), charge=intent["latest_charge"],
                       payment_intent=intent_id, amount=intent["amount"],
                       currency=intent["currency"], status="needs_response")  # fmt: skip
        return dispute

    def pay_out(self, intent_ids: list[str], *, fee: int = 30, others_net: int = 0,
                status: str = "paid") -> str:  # fmt: skip
        """A payout of the intents' charges (``fee`` each), plus an adjustment of
        ``others_net`` (a refund netted into it)."""
        payout_id = self.new_id("po")
        transactions = []
        total = 0
        for intent_id in intent_ids:
            intent = self.intents[intent_id]
            txn = fixture("balance_transaction")
            txn.update(id=self.new_id("txn"), source=intent["latest_charge"], type="charge",
                       amount=intent["amount"], fee=fee, net=intent["amount"] - fee,
                       currency=intent["currency"], created=intent["created"])  # fmt: skip
            transactions.append(txn)
            total += txn["net"]
        if others_net:
            txn = fixture("balance_transaction")
            txn.update(id=self.new_id("txn"), source=self.new_id("re"), type="refund",
                       amount=others_net, fee=0, net=others_net, reporting_category="refund")
            transactions.append(txn)
            total += others_net
        payout = fixture("payout")
        payout.update(id=payout_id, amount=total, status=status, created=int(time.time()),
                      arrival_date=int(time.time()),
                      currency=intent["currency"] if intent_ids else "usd")  # fmt: skip
        self.payouts.append(payout)
        self.payout_transactions[payout_id] = transactions
        return payout_id


def _error(status: int, type_: str, message: str, **fields: Any) -> web.Response:
    return web.json_response({"error": {"type": type_, "message": message, **fields}},
                             status=status)  # fmt: skip


def _list(data: list[dict[str, Any]], url: str, object_: str = "list") -> dict[str, Any]:
    return {"object": object_, "data": data, "has_more": False, "url": url,
            **({"next_page": None} if object_ == "search_result" else {})}  # fmt: skip


def create_stripe_app(fake: FakeStripe) -> web.Application:
    routes = web.RouteTableDef()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        fake.requests.append(Recorded(request.method, request.path, dict(request.headers),
                                      form, dict(request.query)))  # fmt: skip
        if fake.fail_next:
            status = fake.fail_next.pop(0)
            kind = "rate_limit_error" if status == 429 else "api_error"
            return _error(status, kind, "fake failure")
        key = request.headers.get("Idempotency-Key")
        if request.method == "POST" and key is not None:
            if key in fake.keys:
                params, status, body = fake.keys[key]
                if params != form:
                    return _error(400, "idempotency_error", "Keys for idempotent requests "
                                  "can only be used with the same parameters.")  # fmt: skip
                return web.json_response(body, status=status,
                                         headers={"Idempotent-Replayed": "true"})  # fmt: skip
            response = await handler(request)
            if fake.delay_next_s:
                # Stripe acted on the request; its answer is lost on the way.
                delay, fake.delay_next_s = fake.delay_next_s, 0.0
                fake.keys[key] = (form, response.status, json.loads(bytes(response.body)))  # type: ignore[arg-type]
                await asyncio.sleep(delay)
            assert isinstance(response, web.Response)
            assert response.body is not None
            fake.keys[key] = (form, response.status, json.loads(bytes(response.body)))  # type: ignore[arg-type]
            return response
        return await handler(request)

    @routes.post("/v1/payment_intents")
    async def create_intent(request: web.Request) -> web.Response:
        form = fake.requests[-1].form
        intent = fixture("payment_intent")
        intent_id = fake.new_id("pi")
        method = form["payment_method"]
        metadata = {k[len("metadata["):-1]: v for k, v in form.items()
                    if k.startswith("metadata[")}  # fmt: skip
        intent.update(
            id=intent_id, amount=int(form["amount"]), currency=form["currency"],
            customer=form.get("customer"), payment_method=method, metadata=metadata,
            created=int(time.time()), latest_charge=fake.new_id("ch"),
            client_secret=f"{intent_id}_secret_fake", last_payment_error=None,
            next_action=None, canceled_at=None, status="succeeded",
            amount_received=int(form["amount"]), transfer_data=None,
            automatic_payment_methods=None, payment_method_types=["card"],
            setup_future_usage=None,
        )  # fmt: skip
        off_session = form.get("off_session") == "true"
        if method == AUTHENTICATION_REQUIRED and not off_session:
            # As Stripe answers: a page to send the payer to when the confirm named where
            # they come back to, else a step for Stripe.js.
            back = form.get("return_url")
            action: dict[str, Any] = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            if back:
                action = {"type": "redirect_to_url", "redirect_to_url": {
                    "url": f"https://hooks.stripe.com/3d_secure_2/hosted?intent={intent_id}",
                    "return_url": back}}  # fmt: skip
            intent.update(status="requires_action", latest_charge=None, amount_received=0,
                          next_action=action)
        decline = DECLINES.get(method)
        if method == AUTHENTICATION_REQUIRED and off_session:
            decline = ("authentication_required", None)
        fake.intents[intent_id] = intent
        if decline is None:
            return web.json_response(intent)
        code, advice = decline
        error = {"type": "card_error", "code": "card_declined", "decline_code": code,
                 "message": "Your card was declined.", "charge": intent["latest_charge"],
                 "network_advice_code": advice}  # fmt: skip
        if code == "processing_error":
            error.update(code="processing_error", decline_code=None)
        if code == "authentication_required":
            error.update(code="authentication_required")
        intent.update(status="requires_payment_method", amount_received=0,
                      last_payment_error={k: v for k, v in error.items() if k != "message"})
        fields = {k: v for k, v in error.items() if k not in ("type", "message")}
        return _error(402, "card_error", str(error["message"]), **fields, payment_intent=intent)

    @routes.get("/v1/payment_intents/search")
    async def search_intents(request: web.Request) -> web.Response:
        match = re.fullmatch(r"metadata\['(\w+)'\]:'(.*)'", request.query["query"])
        assert match, request.query["query"]
        key, value = match.groups()
        found = [i for i in fake.intents.values() if i["metadata"].get(key) == value]
        return web.json_response(_list(found, "/v1/payment_intents/search", "search_result"))

    @routes.get("/v1/payment_intents/{id}")
    async def retrieve_intent(request: web.Request) -> web.Response:
        intent = fake.intents.get(request.match_info["id"])
        if intent is None:
            return _error(404, "invalid_request_error", "No such payment_intent",
                          code="resource_missing")  # fmt: skip
        return web.json_response(intent)

    @routes.post("/v1/refunds")
    async def create_refund(request: web.Request) -> web.Response:
        form = fake.requests[-1].form
        charge = form.get("charge")
        intent = next((i for i in fake.intents.values() if i["latest_charge"] == charge), None)
        if intent is None or intent["status"] != "succeeded":
            return _error(404, "invalid_request_error", "No such charge",
                          code="resource_missing")  # fmt: skip
        refund = fixture("refund")
        refund.update(id=fake.new_id("re"), amount=int(form["amount"]), charge=charge,
                      currency=intent["currency"], payment_intent=intent["id"],
                      status="succeeded", created=int(time.time()))  # fmt: skip
        return web.json_response(refund)

    @routes.post("/v1/customers")
    async def create_customer(request: web.Request) -> web.Response:
        customer = fixture("customer")
        customer.update(id=fake.new_id("cus"), email=fake.requests[-1].form.get("email"),
                        created=int(time.time()))  # fmt: skip
        return web.json_response(customer)

    @routes.post("/v1/setup_intents")
    async def create_setup_intent(request: web.Request) -> web.Response:
        form = fake.requests[-1].form
        setup = fixture("setup_intent")
        method = form["payment_method"]
        setup.update(id=fake.new_id("seti"), customer=form.get("customer"),
                     payment_method=method, usage=form.get("usage", "off_session"),
                     status="succeeded", last_setup_error=None, next_action=None,
                     created=int(time.time()))  # fmt: skip
        if method == AUTHENTICATION_REQUIRED:
            setup.update(status="requires_action",
                         next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}})
        return web.json_response(setup)

    @routes.get("/v1/payouts")
    async def list_payouts(request: web.Request) -> web.Response:
        since = int(request.query.get("created[gte]", "0"))
        found = [p for p in fake.payouts if p["created"] >= since]
        return web.json_response(_list(found, "/v1/payouts"))

    @routes.get("/v1/balance_transactions")
    async def list_transactions(request: web.Request) -> web.Response:
        found = fake.payout_transactions.get(request.query.get("payout", ""), [])
        return web.json_response(_list(found, "/v1/balance_transactions"))

    app = web.Application(middlewares=[record])
    app.add_routes(routes)
    return app
