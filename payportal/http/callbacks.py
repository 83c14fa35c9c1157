"""Processor callbacks: ``POST /v1/processors/{processor}/callbacks``, verified, deduped, applied.

The model (docs/api.md "Processor callbacks", docs/design.md decisions 4-5): a processor reports an
attempt's outcome by a signed Standard Webhooks v1 request. The receiver is thin:

1. verify — the timestamp against our clock (more than ``tolerance_s`` old or ahead →
   400), then the signature with ``standardwebhooks`` on the raw bytes, under each of
   the processor's secrets in turn (rotation), before a byte of the body is parsed;
2. decode the body and find the attempt's account and payment: from the charge's
   metadata (``processors.charging.METADATA_PAYMENT``, set when we charged; the payment
   id names its account), else — a charge made before metadata was sent — in the read
   models (they may lag the journal briefly: retried, then 503 so the processor sends it
   again);
3. submit the outcome to the account's shard (``RecordOutcome``; ``DisputePayment``). The
   engine is the deduplication: an event seen before changes nothing and is answered
   ``exists`` (a duplicate), and an outcome arriving out of order never moves a payment
   backwards. No database round trip of its own is on this path;
4. record the event id in ``processor_callbacks`` — an audit trail of what was received,
   written in batches after the answer (``CallbackLog``), never a gate.

Answers: 200 for every verified, understood event, including one whose effect the engine
refused as stale (an outcome arriving out of order never moves a payment backwards; it
is logged); 400 in the contract's error shape for a missing header, a malformed or
out-of-tolerance timestamp (``timestamp_out_of_tolerance``), a body that is not UTF-8
(``parameter_invalid``), a signature that does not verify (``signature_invalid``) or a
body that is not the documented JSON; 404 for a
processor we hold no secret for; 503 (``api_error``) when the shards or the read models
cannot take the event now — the processor retries. Headers, signatures, secrets and
bodies are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec
import sqlalchemy as sa
import structlog
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from payportal.actors import Overloaded, ShardRouter
from payportal.engine import (
    Command,
    DisputePayment,
    OutcomeKind,
    PaymentStatus,
    RecordOutcome,
    Result,
)
from payportal.engine.retry_policy import TECHNICAL_CODES
from payportal.persistence import tables
from payportal.persistence._engine import READ
from payportal.persistence.upserts import insert_all_ignoring_conflicts
from payportal.processors.charging import METADATA_PAYMENT

from . import ids
from .gateway import RecentOutcomes
from .typedefs import GATEWAY

__all__ = [
    "CALLBACK_PATH",
    "TOLERANCE_S_DEFAULT",
    "CallbackBody",
    "CallbackData",
    "add_callback_routes",
    "callback_routes",
]

log = structlog.get_logger("payportal.http.callbacks")

CALLBACK_PATH: Final = "/v1/processors/{processor}/callbacks"
# The contract's tolerance: timestamps more than 5 minutes old or ahead are refused, which
# bounds how long a captured request could be replayed.
TOLERANCE_S_DEFAULT: Final = 300
# The read models trail the journal by ~100 ms; a callback can race the charge's own
# reply. Waiting a little longer than that lag before answering 503 spares most retries.
LOOKUP_ATTEMPTS: Final = 6
LOOKUP_WAIT_MS: Final = 50
# Unix seconds as digits only: the signed string is the header itself, so a header that
# parses to the same number with other bytes ("1.7e9", "+17…") must not verify.
_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}")
# Header names, as Standard Webhooks v1 spells them.
HEADER_ID: Final = "webhook-id"
HEADER_TIMESTAMP: Final = "webhook-timestamp"
HEADER_SIGNATURE: Final = "webhook-signature"
# HMAC-SHA256, in bytes.
MAC_LENGTH: Final = 32
# Longer than any id a processor sends and our column holds.
EVENT_ID_LENGTH_MAX: Final = 128


class CallbackData(msgspec.Struct, frozen=True, kw_only=True):
    charge: str
    attempt: str
    amount: int
    currency: str
    decline_code: str | None = None
    # The network's signals on a decline (Visa's category, Mastercard's merchant advice
    # code). A stop signal makes a decline hard whatever its code, and the callback may be
    # the first report of the decline the engine gets: without them it would schedule
    # retries the network forbids, and the charge's own reply would then be a duplicate.
    visa_category: int | None = None
    advice_code: str | None = None
    # What we sent with the charge; names our payment (``METADATA_PAYMENT``).
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    # A dispute's id and fee (``charge.disputed``), posted with it.
    dispute: str | None = None
    fee: int | None = None


class CallbackBody(msgspec.Struct, frozen=True, kw_only=True):
    """What the processor sends. Unknown fields are tolerated, unlike the public API's
    inbound types: a processor adds fields over time, and refusing a verified event for
    one would only make it send the event again, forever."""

    type: str
    data: CallbackData


_DECODER: Final = msgspec.json.Decoder(CallbackBody)
_ENCODER: Final = msgspec.json.Encoder()
_RECEIVED: Final = _ENCODER.encode({"received": True})
_DUPLICATE: Final = _ENCODER.encode({"received": True, "duplicate": True})


class _Refused(Exception):
    """An answer other than 200, in the contract's error shape."""

    def __init__(
        self, status: int, type_: str, code: str, message: str, *, param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.error: dict[str, str] = {"type": type_, "code": code, "message": message}
        if param is not None:
            self.error["param"] = param
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=_ENCODER.encode({"error": self.error}),
            content_type="application/json", headers=self.headers,
        )  # fmt: skip


def _invalid(code: str, message: str, param: str | None = None) -> _Refused:
    return _Refused(400, "invalid_request_error", code, message, param=param)


def _unavailable(message: str, retry_after_s: int = 1) -> _Refused:
    return _Refused(503, "api_error", "api_error", message,
                    headers={"Retry-After": str(retry_after_s)})  # fmt: skip


class _Receiver:
    def __init__(
        self,
        *,
        store: Any,
        router: ShardRouter,
        secrets: Mapping[str, Sequence[str]],
        clock_s: Callable[[], float] | None,
        tolerance_s: int,
        lookup_attempts: int,
        lookup_wait_ms: int,
        recent: RecentOutcomes | None = None,
    ) -> None:
        assert tolerance_s > 0
        self._recent = recent
        assert lookup_attempts > 0
        # Built once: a malformed secret fails at start-up, not on the first callback.
        self._webhooks = {
            processor: tuple(Webhook(secret) for secret in processor_secrets)
            for processor, processor_secrets in secrets.items()
        }
        assert all(self._webhooks.values()), "every processor needs at least one secret"
        self._reader = store.engine.execution_options(**READ)
        self.log = CallbackLog(store.engine)
        self._router = router
        self._clock_s = clock_s or time.time
        self._tolerance_s = tolerance_s
        self._lookup_attempts = lookup_attempts
        self._lookup_wait_s = lookup_wait_ms / 1000

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except _Refused as refused:
            return refused.response()

    async def _handle(self, request: web.Request) -> web.Response:
        processor = request.match_info["processor"]
        webhooks = self._webhooks.get(processor)
        if webhooks is None:
            raise _Refused(404, "invalid_request_error", "resource_missing",
                           "No such processor.", param="processor")  # fmt: skip
        raw = await request.read()
        event_id = self._verify(webhooks, raw, request.headers)
        # Verified: from here on the bytes are the processor's.
        try:
            body = _DECODER.decode(raw)
        except msgspec.ValidationError as error:
            raise _invalid("parameter_invalid", f"The callback body is invalid: {error}") from None
        except msgspec.DecodeError:
            raise _invalid("parameter_invalid", "The callback body is not valid JSON.") from None
        duplicate = await self._apply(processor, event_id, body)
        self.log.add(processor, event_id)
        answer = _DUPLICATE if duplicate else _RECEIVED
        return web.Response(status=200, body=answer, content_type="application/json")

    # -- verification -------------------------------------------------------------------

    def _verify(self, webhooks: Sequence[Webhook], raw: bytes, headers: Mapping[str, str]) -> str:
        """The verified event id; raises ``_Refused`` (400) for anything else."""
        values: dict[str, str] = {}
        for name in (HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE):
            value = headers.get(name)
            if not value:
                raise _invalid("parameter_missing", f"The {name} header is missing.", param=name)
            values[name] = value
        event_id = values[HEADER_ID]
        if len(event_id) > EVENT_ID_LENGTH_MAX:
            raise _invalid("parameter_invalid", "The webhook-id is too long.", HEADER_ID)
        timestamp = values[HEADER_TIMESTAMP]
        if _TIMESTAMP.fullmatch(timestamp) is None:
            raise _invalid("timestamp_invalid", "The webhook-timestamp is not unix seconds.",
                           HEADER_TIMESTAMP)  # fmt: skip
        skew_s = int(timestamp) - self._clock_s()
        if skew_s < -self._tolerance_s:
            raise _invalid("timestamp_out_of_tolerance",
                           "The webhook-timestamp is too old.", HEADER_TIMESTAMP)  # fmt: skip
        if skew_s > self._tolerance_s:
            raise _invalid("timestamp_out_of_tolerance",
                           "The webhook-timestamp is too far ahead.", HEADER_TIMESTAMP)  # fmt: skip
        if not _is_utf8(raw):
            # Standard Webhooks signs the body as text: bytes that are not UTF-8 cannot be
            # a genuine event, and their decoding error would carry the body on.
            raise _invalid("parameter_invalid", "The callback body is not valid UTF-8.")
        signatures = _canonical_signatures(values[HEADER_SIGNATURE])
        if not signatures:
            raise _invalid("signature_invalid", "No signature matches the callback.",
                           HEADER_SIGNATURE)  # fmt: skip
        values[HEADER_SIGNATURE] = signatures
        for webhook in webhooks:
            try:
                webhook.verify(raw, values, json_parse=False)
            except WebhookVerificationError:
                continue
            except ValueError:
                # The library raises these for malformed signature lists (no comma, bad
                # base64) and a body that is not UTF-8: none of them can be genuine.
                continue
            return event_id
        raise _invalid("signature_invalid", "No signature matches the callback.",
                       HEADER_SIGNATURE)  # fmt: skip

    # -- the effect ---------------------------------------------------------------------

    async def apply(self, processor: str, event_id: str, body: CallbackBody) -> bool:
        """Apply a verified event in the sandbox's vocabulary (other processors' receivers
        translate theirs into it: ``stripe_callbacks``); True when a duplicate. Raises
        ``_Refused`` (503) when it cannot be applied now."""
        return await self._apply(processor, event_id, body)

    async def _apply(self, processor: str, event_id: str, body: CallbackBody) -> bool:
        """Apply the event; True when the engine had it already (a duplicate)."""
        data = body.data
        if body.type == "charge.refunded":
            # Refunds are recorded when the portal asks for them (RefundPayment carries
            # our refund id); the processor's notice confirms one and changes nothing.
            log.info("callback_refund_noted", processor=processor, event_id=event_id,
                     attempt_id=data.attempt, charge_id=data.charge)  # fmt: skip
            return False
        if body.type not in _APPLIED:
            log.warning("callback_type_ignored", processor=processor, event_id=event_id,
                        type=body.type)  # fmt: skip
            return False
        command: Command
        if body.type == "charge.disputed":
            account_id, payment_id = await self._owner(data)
            command = DisputePayment(account_id=account_id, payment_id=payment_id,
                                     dispute_id=data.dispute or "",
                                     fee_minor=max(0, data.fee or 0))  # fmt: skip
        else:
            outcome_kind = _outcome_of(body.type, data.decline_code)
            if self._recent is not None:
                # The processor sends this as it decides, often before its reply to our
                # own charge arrives: if that charge is this process's, let it land first.
                await self._recent.settled(data.attempt)
                if self._recent.recorded(data.attempt, outcome_kind, data.charge,
                                         data.decline_code):  # fmt: skip
                    return True  # this process recorded it from the charge's own reply
            account_id, payment_id = await self._owner(data)
            command = RecordOutcome(
                account_id=account_id, payment_id=payment_id, attempt_id=data.attempt,
                outcome=outcome_kind, charge_id=data.charge,
                decline_code=data.decline_code, visa_category=data.visa_category,
                advice_code=data.advice_code, amount_minor=data.amount,
                currency=data.currency.upper(),
            )  # fmt: skip
        try:
            reply = await self._router.submit(command)
        except Overloaded as error:
            raise _unavailable("The portal is busy; send the callback again.",
                               max(1, error.retry_after_ms // 1000)) from None  # fmt: skip
        except Exception:
            log.exception("callback_submit_failed", processor=processor, event_id=event_id)
            raise _unavailable("The callback could not be applied; send it again.") from None
        outcome = reply.outcome
        payment = reply.payment
        if (
            isinstance(command, DisputePayment)
            and outcome.result is Result.rejected
            and payment is not None
            and payment.status in _NOT_YET_CAPTURED
        ):
            # Early, not stale: the dispute overtook the capture's own callback. Refused
            # for now (and not remembered), so the processor sends it again later.
            log.info("callback_dispute_early", processor=processor, event_id=event_id,
                     payment_id=payment_id)  # fmt: skip
            raise _unavailable("The payment is not captured yet; send the dispute again.", 5)
        if outcome.result is Result.rejected:
            # Verified and understood, but stale or contradictory: the engine keeps what
            # it has (a payment never moves backwards). The processor is told 200, or it
            # would send the same stale news again.
            log.warning("callback_refused_by_engine", processor=processor, event_id=event_id,
                        type=body.type, attempt_id=data.attempt, payment_id=payment_id,
                        rejection=outcome.rejection)  # fmt: skip
            return False
        # Debug: at peak every charge brings one, and the journal has what it did.
        log.debug("callback_applied", processor=processor, event_id=event_id, type=body.type,
                  attempt_id=data.attempt, payment_id=payment_id,
                  result=outcome.result.value)  # fmt: skip
        return outcome.result is Result.exists

    async def _owner(self, data: CallbackData) -> tuple[str, str]:
        """(account id, payment id) of our attempt: from the charge's metadata, else from
        the read models (waiting briefly for them)."""
        payment_id = data.metadata.get(METADATA_PAYMENT)
        if payment_id is not None:
            account_id = ids.account_of(payment_id, "pay")
            if account_id is not None:
                return account_id, payment_id
        attempt_id = data.attempt
        a, p = tables.attempts, tables.payments
        query = (
            sa.select(p.c.account_id, p.c.payment_id)
            .join(a, a.c.payment_id == p.c.payment_id)
            .where(a.c.attempt_id == attempt_id)
        )
        for lookup in range(self._lookup_attempts):
            if lookup:
                await asyncio.sleep(self._lookup_wait_s)
            async with self._reader.connect() as connection:
                row = (await connection.execute(query)).first()
            if row is not None:
                return row.account_id, row.payment_id
        log.warning("callback_attempt_unknown", attempt_id=attempt_id)
        raise _unavailable("The attempt is not known yet; send the callback again.", 5)


_APPLIED: Final = frozenset({
    "charge.succeeded", "charge.failed", "charge.requires_action", "charge.disputed",
})
# A dispute for a payment in these statuses arrived before its capture was recorded.
_NOT_YET_CAPTURED: Final = frozenset({
    PaymentStatus.processing, PaymentStatus.retry_scheduled, PaymentStatus.requires_action,
})


def _outcome_of(type_: str, decline_code: str | None) -> OutcomeKind:
    if type_ == "charge.succeeded":
        return OutcomeKind.succeeded
    if type_ == "charge.requires_action":
        # The challenge itself (its URL) is not in the event: clients ask for it.
        return OutcomeKind.requires_action
    # A processor failure before any decision is retried under the same key, as when
    # the charge's own reply says so.
    return OutcomeKind.errored if decline_code in TECHNICAL_CODES else OutcomeKind.declined


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _canonical_signatures(header: str) -> str:
    """The header's ``v1`` signatures that are canonical base64 of a SHA-256 MAC.

    Base64 is malleable: the last character's spare bits are ignored on decoding, so
    ``…B=`` and ``…C=`` can carry the same MAC. Only the canonical spelling is passed on,
    so no byte of an accepted callback can be changed and still verify. Other versions
    (``v1a``, asymmetric) are not ours to check and are dropped."""
    canonical = []
    for entry in header.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            mac = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if len(mac) == MAC_LENGTH and base64.b64encode(mac).decode() == encoded:
            canonical.append(entry)
    return " ".join(canonical)


class CallbackLog:
    """The event ids received, written to ``processor_callbacks`` in batches: one
    statement per ``FLUSH_MS`` (or ``BATCH_MAX`` ids) instead of one round trip per
    callback. An audit trail only — the engine is what makes a repeated event harmless —
    so ids still in memory when a process dies are simply not in it."""

    FLUSH_MS: Final = 200
    BATCH_MAX: Final = 1_000

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._pending: dict[tuple[str, str], None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, processor: str, event_id: str) -> None:
        self._pending[(processor, event_id)] = None
        if len(self._pending) >= self.BATCH_MAX:
            self._flush_soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.FLUSH_MS / 1000, self._flush_soon
            )

    def _flush_soon(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending = list(self._pending), {}
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[tuple[str, str]]) -> None:
        try:
            async with self._engine.begin() as connection:
                await insert_all_ignoring_conflicts(
                    connection, tables.processor_callbacks,
                    [{"processor": p, "event_id": e} for p, e in batch],
                    keys=["processor", "event_id"],
                )  # fmt: skip
        except Exception:
            log.exception("callback_log_not_written", events=len(batch))

    async def close(self) -> None:
        """Write what is pending and wait for every write."""
        self._flush_soon()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def callback_routes(
    *,
    store: Any,
    router: ShardRouter,
    secrets: Mapping[str, Sequence[str]],
    clock_s: Callable[[], float] | None = None,
    tolerance_s: int = TOLERANCE_S_DEFAULT,
    lookup_attempts: int = LOOKUP_ATTEMPTS,
    lookup_wait_ms: int = LOOKUP_WAIT_MS,
    recent: RecentOutcomes | None = None,
) -> web.RouteTableDef:
    """The callback route. ``secrets`` maps a processor name (the path segment) to its
    Standard Webhooks secrets (``whsec_…``), newest first; during a rotation both the old
    and the new one verify. ``clock_s`` is unix seconds (``time.time`` by default).

    The standardwebhooks package also checks the timestamp against the wall clock with
    its own fixed 5 minutes, so ``clock_s`` may narrow the window but not move it.
    ``recent`` is the gateway's record of the outcomes it recorded itself (a callback
    repeating one is answered without a hop to the shard)."""
    receiver = _Receiver(
        store=store, router=router, secrets=secrets, clock_s=clock_s, tolerance_s=tolerance_s,
        lookup_attempts=lookup_attempts, lookup_wait_ms=lookup_wait_ms, recent=recent,
    )  # fmt: skip
    routes = web.RouteTableDef()
    routes.post(CALLBACK_PATH)(receiver.handle)
    return routes


def add_callback_routes(app: web.Application, **options: Any) -> None:
    """``callback_routes(**options)`` added to ``app``; the route needs no bearer token
    (the signature is the processor's credential), so auth must let it through. The
    received-events log is written out when the app is cleaned up. The app's gateway
    (``create_app``'s) shares what it recorded, unless ``recent`` is given."""
    if "recent" not in options and GATEWAY in app:
        options["recent"] = app[GATEWAY].recent
    routes = callback_routes(**options)
    app.add_routes(routes)
    handler = next(iter(routes)).handler
    assert isinstance(getattr(handler, "__self__", None), _Receiver), handler
    log_of_receiver = handler.__self__.log  # type: ignore[attr-defined]

    async def close_log(_: web.Application) -> None:
        await log_of_receiver.close()

    app.on_cleanup.append(close_log)
