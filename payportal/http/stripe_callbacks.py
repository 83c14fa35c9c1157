"""Stripe's webhooks: ``POST /v1/processors/stripe/callbacks``, verified by the SDK, deduped,
and applied through the same path as the sandbox's callbacks (docs/processors.md "Webhooks").

1. verify — ``StripeClient.construct_event`` checks the ``Stripe-Signature`` header
   (``t=…,v1=…``: HMAC-SHA256 of ``"{t}.{body}"``) and the timestamp's age against each of
   our signing secrets in turn (newest first: a rotation verifies under both), before the
   body is trusted;
2. dedupe — an event id this process applied, or one in ``processor_callbacks`` (the
   received-events log, ``CallbackLog``), is answered 200 ``duplicate`` and changes
   nothing. The engine is the last line: a repeated outcome is ``exists``, a stale one
   never moves a payment backwards, so events are safe in any order;
3. translate — a PaymentIntent event becomes the sandbox vocabulary's ``charge.succeeded``
   / ``charge.failed`` with our attempt from the intent's metadata; a dispute becomes
   ``charge.disputed`` with the attempt that captured its charge (from the read models);
   ``charge.refunded`` is noted, as for the sandbox (refunds are recorded when the portal
   asks for them). The translated event goes to ``callbacks._Receiver.apply``: the same
   owner lookup, ``RecentOutcomes`` short cut, early-dispute 503 and engine commands.

Answers: 200 for every verified event, understood or ignored (Stripe would otherwise
send an event we do not act on for three days); 400 for a missing or wrong signature,
a timestamp out of tolerance, a body that is not a Stripe event; 503 when the shards or
the read models cannot take it now (Stripe retries). Headers, secrets, bodies and
customer ids are never logged.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import sqlalchemy as sa
import stripe
import structlog
from aiohttp import web

from payportal.actors import ShardRouter
from payportal.engine import OutcomeKind
from payportal.persistence import tables
from payportal.persistence._engine import READ
from payportal.processors.charging import METADATA_PAYMENT
from payportal.processors.stripe import METADATA_ATTEMPT, intent_result

from .callbacks import (
    LOOKUP_ATTEMPTS,
    LOOKUP_WAIT_MS,
    TOLERANCE_S_DEFAULT,
    CallbackBody,
    CallbackData,
    _invalid,
    _Receiver,
    _Refused,
    _unavailable,
)
from .gateway import RecentOutcomes
from .typedefs import GATEWAY

__all__ = ["PROCESSOR", "STRIPE_CALLBACK_PATH", "add_stripe_callback_routes"]

log = structlog.get_logger("payportal.http.stripe_callbacks")

PROCESSOR: Final = "stripe"
STRIPE_CALLBACK_PATH: Final = "/v1/processors/stripe/callbacks"
HEADER_SIGNATURE: Final = "Stripe-Signature"
# Event ids this process applied, remembered so a redelivery costs no database read.
SEEN_MAX: Final = 100_000
# Longer than any event id Stripe sends and our column holds.
EVENT_ID_LENGTH_MAX: Final = 128
# Dispute events that take money back; the others (updated, closed, funds_reinstated)
# are noted: the engine has no command for a dispute's later course yet.
_DISPUTE_OPENED: Final = frozenset({"charge.dispute.created", "charge.dispute.funds_withdrawn"})
_INTENT_OUTCOMES: Final = frozenset({
    "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
    "payment_intent.requires_action",
})  # fmt: skip
_RECEIVED: Final = msgspec.json.encode({"received": True})
_DUPLICATE: Final = msgspec.json.encode({"received": True, "duplicate": True})


class _StripeReceiver:
    def __init__(
        self,
        *,
        store: Any,
        router: ShardRouter,
        client: stripe.StripeClient,
        secrets: Sequence[str],
        tolerance_s: int,
        lookup_attempts: int,
        lookup_wait_ms: int,
        recent: RecentOutcomes | None,
    ) -> None:
        assert secrets, "Stripe's webhooks need at least one signing secret"
        assert tolerance_s > 0
        self._client = client
        self._secrets = tuple(secrets)
        self._tolerance_s = tolerance_s
        # The sandbox's receiver without secrets of its own: only its ``apply`` is used.
        self._applier = _Receiver(
            store=store, router=router, secrets={}, clock_s=None, tolerance_s=tolerance_s,
            lookup_attempts=lookup_attempts, lookup_wait_ms=lookup_wait_ms, recent=recent,
        )  # fmt: skip
        self.log = self._applier.log
        self._reader = store.engine.execution_options(**READ)
        self._lookup_attempts = lookup_attempts
        self._lookup_wait_s = lookup_wait_ms / 1000
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except _Refused as refused:
            return refused.response()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        event = self._verify(raw, request.headers.get(HEADER_SIGNATURE))
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id or len(event_id) > EVENT_ID_LENGTH_MAX:
            raise _invalid("parameter_invalid", "The event has no usable id.")
        if event_id in self._seen or await self._logged(event_id):
            return web.Response(status=200, body=_DUPLICATE, content_type="application/json")
        duplicate = await self._apply(event_id, event)
        self._seen[event_id] = None
        if len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        self.log.add(PROCESSOR, event_id)
        answer = _DUPLICATE if duplicate else _RECEIVED
        return web.Response(status=200, body=answer, content_type="application/json")

    # -- verification -------------------------------------------------------------------

    def _verify(self, raw: bytes, header: str | None) -> dict[str, Any]:
        """The verified event as a plain dict; raises ``_Refused`` (400) for anything else."""
        if not header:
            raise _invalid("parameter_missing", f"The {HEADER_SIGNATURE} header is missing.",
                           param=HEADER_SIGNATURE)  # fmt: skip
        try:
            raw.decode()
        except UnicodeDecodeError:
            raise _invalid("parameter_invalid", "The callback body is not valid UTF-8.") from None
        too_old = False
        for secret in self._secrets:
            try:
                self._client.construct_event(raw, header, secret, self._tolerance_s)
            except stripe.SignatureVerificationError as error:
                # The SDK checks the signature first, then the age: an old timestamp means
                # this secret's signature matched (its message, not the header, says so).
                too_old = too_old or str(error.user_message or "").startswith("Timestamp")
                continue
            except ValueError:
                # Verified, but not JSON or not a v1 snapshot event.
                raise _invalid("parameter_invalid", "The callback body is not an event.") from None
            # The SDK's Event checked it is one; we read the verified bytes as plain data.
            event = msgspec.json.decode(raw)
            if not isinstance(event, dict):
                raise _invalid("parameter_invalid", "The callback body is not an event.")
            return event
        if too_old:
            raise _invalid("timestamp_out_of_tolerance", "The signature's timestamp is too old.",
                           param=HEADER_SIGNATURE)  # fmt: skip
        raise _invalid("signature_invalid", "No signature matches the callback.",
                       param=HEADER_SIGNATURE)  # fmt: skip

    async def _logged(self, event_id: str) -> bool:
        """The event is in the received-events log (another process, or before a restart)."""
        c = tables.processor_callbacks.c
        query = sa.select(sa.literal(1)).where(c.processor == PROCESSOR, c.event_id == event_id)
        async with self._reader.connect() as connection:
            return (await connection.execute(query)).first() is not None

    # -- translation --------------------------------------------------------------------

    async def _apply(self, event_id: str, event: dict[str, Any]) -> bool:
        type_ = str(event.get("type", ""))
        obj = (event.get("data") or {}).get("object") or {}
        if type_ in _INTENT_OUTCOMES:
            body = _intent_body(obj)
            if body is None:
                # No attempt in its metadata: an intent made outside the portal.
                log.info("stripe_event_not_ours", event_id=event_id, type=type_)
                return False
            return await self._applier.apply(PROCESSOR, event_id, body)
        if type_ == "charge.refunded":
            metadata = obj.get("metadata") or {}
            body = CallbackBody(type="charge.refunded", data=CallbackData(
                charge=str(obj.get("id", "")), attempt=str(metadata.get(METADATA_ATTEMPT, "")),
                amount=int(obj.get("amount_refunded") or 0),
                currency=str(obj.get("currency", "")), metadata=_strings(metadata),
            ))  # fmt: skip
            return await self._applier.apply(PROCESSOR, event_id, body)
        if type_ in _DISPUTE_OPENED:
            charge_id = obj.get("charge")
            if isinstance(charge_id, dict):
                charge_id = charge_id.get("id")
            if not isinstance(charge_id, str):
                raise _invalid("parameter_invalid", "The dispute names no charge.")
            attempt_id = await self._attempt_of_charge(charge_id)
            body = CallbackBody(type="charge.disputed", data=CallbackData(
                charge=charge_id, attempt=attempt_id, amount=int(obj.get("amount") or 0),
                currency=str(obj.get("currency", "")), dispute=_str_or_none(obj.get("id")),
                fee=_dispute_fee(obj),
            ))  # fmt: skip
            return await self._applier.apply(PROCESSOR, event_id, body)
        if type_.startswith("charge.dispute."):
            log.info("stripe_dispute_noted", event_id=event_id, type=type_,
                     status=obj.get("status"))  # fmt: skip
            return False
        log.info("stripe_event_ignored", event_id=event_id, type=type_)
        return False

    async def _attempt_of_charge(self, charge_id: str) -> str:
        """The attempt that captured ``charge_id``, from the read models (which may trail
        the journal briefly: waited for, then 503 so Stripe sends the event again)."""
        a = tables.attempts.c
        query = sa.select(a.attempt_id).where(a.charge_id == charge_id, a.status == "succeeded")
        for lookup in range(self._lookup_attempts):
            if lookup:
                await asyncio.sleep(self._lookup_wait_s)
            async with self._reader.connect() as connection:
                row = (await connection.execute(query)).first()
            if row is not None:
                return str(row.attempt_id)
        log.warning("stripe_dispute_charge_unknown", charge_id=charge_id)
        raise _unavailable("The disputed charge is not known yet; send the event again.", 5)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dispute_fee(dispute: Any) -> int | None:
    """The fee Stripe withdrew for a dispute, from its balance transactions; None when it
    lists none yet (the payout report's fee is then posted: docs/processors.md)."""
    transactions = dispute.get("balance_transactions")
    if not isinstance(transactions, list) or not transactions:
        return None
    fees = [t.get("fee") for t in transactions if isinstance(t, dict)]
    return sum(f for f in fees if isinstance(f, int) and f > 0)


def _strings(metadata: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(metadata).items()}


def _intent_body(intent: dict[str, Any]) -> CallbackBody | None:
    metadata = _strings(intent.get("metadata") or {})
    attempt_id = metadata.get(METADATA_ATTEMPT)
    if not attempt_id or METADATA_PAYMENT not in metadata:
        return None
    result = intent_result(intent)
    if result.outcome is OutcomeKind.unknown:
        return None
    # The payer's 3-D Secure step is an outcome of its own (docs/api.md, requires_action):
    # its callback carries no URL; the payment's next_action is asked of Stripe.
    type_ = {OutcomeKind.succeeded: "charge.succeeded",
             OutcomeKind.requires_action: "charge.requires_action"}.get(
        result.outcome, "charge.failed")  # fmt: skip
    return CallbackBody(type=type_, data=CallbackData(
        charge=result.charge_id or str(intent.get("id", "")), attempt=attempt_id,
        amount=int(intent.get("amount") or 0), currency=str(intent.get("currency", "")),
        decline_code=result.decline_code, visa_category=result.visa_category,
        advice_code=result.advice_code, metadata=metadata,
    ))  # fmt: skip


def add_stripe_callback_routes(
    app: web.Application,
    *,
    store: Any,
    router: ShardRouter,
    client: stripe.StripeClient,
    secrets: Sequence[str],
    tolerance_s: int = TOLERANCE_S_DEFAULT,
    lookup_attempts: int = LOOKUP_ATTEMPTS,
    lookup_wait_ms: int = LOOKUP_WAIT_MS,
    recent: RecentOutcomes | None = None,
) -> None:
    """Stripe's webhook route on ``app``. Add it before ``add_callback_routes``: its
    ``/v1/processors/{processor}/callbacks`` would otherwise answer for ``stripe`` too.
    Like that route it needs no bearer token (the signature is Stripe's credential)."""
    if recent is None and GATEWAY in app:
        recent = app[GATEWAY].recent
    receiver = _StripeReceiver(
        store=store, router=router, client=client, secrets=secrets, tolerance_s=tolerance_s,
        lookup_attempts=lookup_attempts, lookup_wait_ms=lookup_wait_ms, recent=recent,
    )  # fmt: skip
    app.router.add_post(STRIPE_CALLBACK_PATH, receiver.handle)

    async def close_log(_: web.Application) -> None:
        await receiver.log.close()

    app.on_cleanup.append(close_log)
