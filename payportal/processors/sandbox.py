"""The sandbox processor: a separate aiohttp service that behaves like a card processor.

Endpoints (JSON, integer minor units, Stripe's error shape
``{"error": {"type", "code", "message", "param"?, "decline_code"?}}``):

- ``POST /v1/tokens`` ``{type: card, number, exp_month, exp_year, cvc}`` or
  ``{type: wallet, wallet: apple_pay|google_pay, card_number}`` →
  ``{token, brand, last4, exp_month, exp_year, funding, type, wallet}``. The number must
  pass Luhn, the expiry must not be past, the CVC must have the brand's length; a
  failure is ``402 card_error`` with ``code`` and ``param``. CORS is open here (and only
  here): browsers post card data straight to it. The number is kept only in this
  process's memory, keyed by token, and is never logged or returned (only ``last4``).
- ``POST /v1/charges`` ``{token, amount, currency, idempotency_key}`` → ``200`` charge,
  or ``402 card_error`` with ``decline_code`` (and ``visa_category`` / ``advice_code``
  and the ``charge`` id). Idempotent on ``idempotency_key``: the same key and body
  replay the first answer and never capture twice; a different body is ``422``; a key
  still being decided is ``409``. A ``processing_error`` (card …0119) is the
  processor failing before a decision: no charge is kept and the key stays free, so
  sending it again is safe.
- ``GET /v1/charges/{id}``; ``GET /v1/charges?idempotency_key=K`` (status inquiry:
  ``{data: [charge], has_more}``, empty when the processor never received ``K``);
  ``GET /v1/charges`` lists every charge, for settlement reports.
- ``POST /v1/refunds`` ``{charge, amount?, idempotency_key}`` → ``re_…``.
- Settlement reports (``_settlement``): ``GET /v1/settlements[?payout=ID]`` (one line per
  settled charge, refund and dispute: type, amount, fee, net, payout) and ``GET
  /v1/payouts`` (per payout: date, currency, total), ``{data, has_more}``, or CSV with
  ``?format=csv``.
- ``GET /v1/hosted/card-fields``: the card form the portal embeds in an iframe.
- 3-D Secure (Stripe's test cards …3184, …3155, …3178; ``_cards``): a charge that needs
  the payer's authentication answers ``200`` with ``status: requires_action`` and
  ``next_action: {type: redirect_to_url, redirect_to_url: {url, return_url}}`` (sent
  ``off_session: true`` it is the decline ``authentication_required`` instead).
  ``GET /v1/challenges/{id}`` is the issuer's challenge page (framable by the portal, like
  the card fields); ``POST /v1/challenges/{id}`` ``{result: complete|fail}`` (a form or
  JSON) decides it: the charge then succeeds or fails (``payment_intent_authentication_
  failure``; …3178 ``insufficient_funds`` after authenticating) and its callback follows.
  The challenge id is the secret: whoever holds the URL can answer it.
- Sandbox controls: ``GET``/``POST /v1/_faults`` (below), ``POST
  /v1/_charges/{id}/dispute`` (sends ``charge.disputed``), ``POST``/``DELETE
  /v1/_settlements/discrepancies`` (seed a wrong settlement report, or clear them all;
  kinds in ``_settlement``), ``GET /healthz``.

Charges keep amount, currency, status (``processing`` → ``succeeded`` | ``failed``),
``fee`` (2.9 % + 30 minor units, rounded half up, in integers) and ``net``.

Callbacks: every decided charge, refund and dispute is sent to ``callback_url`` as
``{type: charge.succeeded|charge.failed|charge.requires_action|charge.refunded|
charge.disputed, data: {charge,
attempt, amount, currency, decline_code?, visa_category?, advice_code?, dispute?, fee?}}``
(a dispute's ``amount`` is what the payer still had charged; ``dispute`` its id, ``fee``
the dispute fee) (``attempt``
is the charge's idempotency key; a decline's network signals as its reply has them),
signed per Standard Webhooks v1 and retried on non-2xx (``_callbacks.py``).

Fault knobs (``_faults.Faults``), set at creation (``faults=``) and at runtime with
``POST /v1/_faults`` carrying any subset of them (and ``seed`` to reseed):

- ``latency_ms``: added before each charge or refund is decided.
- ``timeout_after_capture`` / ``capture_timeout_delay_ms``: decide and capture every
  charge, send its callback, then hold the HTTP response this long (card …3063 always
  does this), so the client times out on a charge that happened.
- ``error_rate_5xx``: this share of charge and refund requests is answered ``503``
  before anything happens, drawn from the seeded random source.
- ``duplicate_callbacks``: each callback is sent N times with the same webhook-id.
- ``reorder_callbacks`` / ``reorder_hold_ms``: hold callbacks until N wait (or the hold
  time passed), then send them in a seeded-shuffled order.
- ``callback_delay_ms``: each callback waits this long before it is sent.

Everything is in memory: a restart forgets tokens, charges and pending callbacks. Run it
alone with ``python -m payportal.processors.sandbox --port 8081``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import random
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from aiohttp import web

from payportal.engine import CURRENCY_EXPONENTS

from . import _cards
from ._callbacks import STANDARD_RETRY_DELAYS_MS, CallbackSender
from ._challenge import render_challenge, render_challenge_done
from ._faults import Faults, FaultsPatch, apply_patch
from ._hosted_fields import render_card_fields
from ._settlement import (
    Discrepancy,
    SettledCharge,
    SettledReversal,
    SettlementKnobs,
    build_settlement,
    payouts_csv,
    settlements_csv,
)
from .adapter import NextAction, RedirectToUrl

__all__ = [
    "SANDBOX",
    "Charge",
    "Faults",
    "Refund",
    "SandboxState",
    "create_sandbox_app",
    "fee_minor",
    "run_sandbox",
    "start_sandbox",
]

log = logging.getLogger("payportal.processors.sandbox")

_T = TypeVar("_T")

# Stripe's standard card pricing, as a plausible default for settlement reports:
# 2.9 % (29 per mille) plus 30 minor units.
FEE_PERMILLE: Final = 29
FEE_FIXED_MINOR: Final = 30
# What the sandbox charges for a dispute, like Stripe's fixed fee (docs/api.md
# "Disputes"); withheld with the disputed amount from the next payout.
DISPUTE_FEE_MINOR: Final = 1500
# Wallet tokens carry the device token's expiry, not the card's; the sandbox makes one
# up this many years ahead.
WALLET_EXPIRY_YEARS: Final = 3
# Cards are not issued for longer than this; a later year is a typing mistake.
EXPIRY_YEARS_MAX: Final = 50

# ``(?!\n)``: Python's ``$`` also matches before a final newline.
IdempotencyKey = Annotated[
    str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[ -~]+$(?!\n)")
]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
ReturnUrl = Annotated[str, msgspec.Meta(max_length=2048, pattern=r"^https?://[!-~]+$(?!\n)")]


def fee_minor(amount_minor: int) -> int:
    """2.9 % + 30, in integers, rounded half up."""
    assert amount_minor > 0
    return (amount_minor * FEE_PERMILLE + 500) // 1000 + FEE_FIXED_MINOR


# -- wire types -----------------------------------------------------------------------------


class _Inbound(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class CardTokenRequest(_Inbound, tag="card", tag_field="type", frozen=True, kw_only=True):
    number: str
    exp_month: int
    exp_year: int
    cvc: str


class WalletTokenRequest(_Inbound, tag="wallet", tag_field="type", frozen=True, kw_only=True):
    wallet: Literal["apple_pay", "google_pay"]
    card_number: str


# Stripe's limits on metadata: 50 keys of at most 40 characters, values of at most 500.
MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=500)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=50)]


class ChargeRequest(_Inbound, frozen=True, kw_only=True):
    token: str
    amount: PositiveInt
    currency: str
    idempotency_key: IdempotencyKey
    # Kept with the charge and sent back in its callbacks, as Stripe does.
    metadata: Metadata = msgspec.field(default_factory=dict)
    # The payer is not there (a retry, autopay): no challenge can be answered.
    off_session: bool = False
    # Where the challenge sends the browser when it is done.
    return_url: ReturnUrl | None = None


class ChallengeAnswer(_Inbound, frozen=True, kw_only=True):
    result: Literal["complete", "fail"]


class RefundRequest(_Inbound, frozen=True, kw_only=True):
    charge: str
    idempotency_key: IdempotencyKey
    amount: PositiveInt | None = None  # the whole refundable rest when absent


class TokenResponse(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    funding: str
    type: str  # card | wallet
    wallet: str | None = None


class Charge(msgspec.Struct, kw_only=True):
    """A charge as the sandbox keeps it and answers it. Never holds card data beyond
    brand and last 4."""

    id: str
    object: str = "charge"
    amount: int
    currency: str
    status: str  # processing | requires_action | succeeded | failed
    idempotency_key: str
    payment_method: str  # the token
    brand: str
    last4: str
    funding: str
    wallet: str | None = None
    fee: int = 0
    net: int = 0
    amount_refunded: int = 0
    refunded: bool = False
    disputed: bool = False
    dispute: str | None = None  # the dispute's id
    failure_code: str | None = None
    decline_code: str | None = None
    visa_category: int | None = None
    advice_code: str | None = None
    created: int
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    next_action: NextAction | None = None


class Dispute(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "dispute"
    charge: str
    amount: int
    fee: int
    currency: str
    created: int


class Refund(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "refund"
    charge: str
    amount: int
    currency: str
    status: str = "succeeded"
    idempotency_key: str
    created: int


class _Card(msgspec.Struct, kw_only=True):
    """A tokenized card: the only place the number lives."""

    number: str
    brand: str
    funding: str
    exp_month: int
    exp_year: int
    wallet: str | None
    charges_started: int = 0
    # The payer authenticated a charge on this token once: off-session charges on a card
    # that asks only until then (…3155) go through.
    set_up: bool = False


class _KeyEntry(msgspec.Struct, kw_only=True):
    fingerprint: tuple[Any, ...]
    charge_id: str | None = None
    # The first answer (status, body), replayed byte for byte; None while being decided.
    response: tuple[int, bytes] | None = None


# -- errors ---------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type_: str,
        code: str,
        message: str,
        *,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type_, "code": code, "message": message}
        if param is not None:
            self.body["param"] = param
        self.body.update({k: v for k, v in extra.items() if v is not None})

    def response(self) -> web.Response:
        return _json(self.status, {"error": self.body})


def _card_error(code: str, message: str, param: str) -> ApiError:
    return ApiError(402, "card_error", code, message, param=param)


# A run of 12-19 digits in text that echoes input could be a card number; it is blanked.
_DIGIT_RUN: Final = re.compile(r"\d[\d -]{10,}\d")
_FIELD_IN_MESSAGE: Final = re.compile(r"field `([^`]+)`|at `\$\.([^`]+)`")


def _decode(raw: bytes, type_: Any, *, strict: bool = True) -> Any:
    try:
        return msgspec.json.decode(raw, type=type_, strict=strict)
    except msgspec.ValidationError as error:
        message = _DIGIT_RUN.sub("…", str(error))
        match = _FIELD_IN_MESSAGE.search(message)
        param = (match.group(1) or match.group(2)) if match else None
        code = "parameter_missing" if "missing required field" in message else ("parameter_invalid")
        raise ApiError(400, "invalid_request_error", code, message, param=param) from None
    except msgspec.DecodeError:
        raise ApiError(
            400, "invalid_request_error", "parameter_invalid", "The body is not valid JSON."
        ) from None


_ENCODER: Final = msgspec.json.Encoder()


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(
        status=status, body=_ENCODER.encode(payload), content_type="application/json"
    )


# -- state ----------------------------------------------------------------------------------


class SandboxState:
    """Everything the sandbox knows, in memory. Handlers change it without awaiting
    between a check and the write it guards, so one event loop serializes them."""

    def __init__(
        self,
        *,
        callback_url: str | None,
        webhook_secret: str,
        clock: Callable[[], float],
        faults: Faults,
        seed: int,
        callback_retry_delays_ms: tuple[int, ...],
        frame_ancestors: str,
    ) -> None:
        self.clock = clock
        self.faults = faults
        self.rng = random.Random(seed)  # noqa: S311 - fault injection, not cryptography
        self.frame_ancestors = frame_ancestors
        self.cards: dict[str, _Card] = {}
        self.charges: dict[str, Charge] = {}
        self.charge_keys: dict[str, _KeyEntry] = {}
        self.refunds: dict[str, Refund] = {}
        self.disputes: dict[str, Dispute] = {}
        # Open 3-D Secure challenges: challenge id → charge id.
        self.challenges: dict[str, str] = {}
        self.refund_keys: dict[str, _KeyEntry] = {}
        self.settlement = SettlementKnobs(covers_from=int(clock()))
        self.callbacks = CallbackSender(
            url=callback_url,
            secret=webhook_secret,
            clock=clock,
            faults=lambda: self.faults,
            rng=lambda: self.rng,
            retry_delays_ms=callback_retry_delays_ms,
        )
        self.closing = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    def now_s(self) -> int:
        return int(self.clock())

    def spawn(self, coroutine: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """A task that finishes even if the request that started it goes away."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def sleep_ms(self, delay_ms: int) -> None:
        """Sleeps, but wakes early when the sandbox shuts down."""
        if delay_ms <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), delay_ms / 1000)

    def fails_with_5xx(self) -> bool:
        rate = self.faults.error_rate_5xx
        return rate > 0 and self.rng.random() < rate

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.callbacks.close()


SANDBOX: Final = web.AppKey("sandbox", SandboxState)


def _unavailable() -> ApiError:
    return ApiError(
        503,
        "api_error",
        "api_error",
        "The sandbox is injecting a processor outage; retry with the same key.",
    )


def _check_idempotency(
    keys: dict[str, _KeyEntry], key: str, fingerprint: tuple[Any, ...]
) -> web.Response | None:
    """The replayed first answer, or None when the key is new."""
    entry = keys.get(key)
    if entry is None:
        return None
    if entry.fingerprint != fingerprint:
        raise ApiError(
            422,
            "idempotency_error",
            "idempotency_key_reused",
            "This idempotency key was used with a different request.",
            param="idempotency_key",
        )
    if entry.response is None:
        raise ApiError(
            409,
            "idempotency_error",
            "idempotency_key_in_use",
            "A request with this idempotency key is still being processed.",
            param="idempotency_key",
        )
    status, body = entry.response
    return web.Response(status=status, body=body, content_type="application/json")


# -- tokens ---------------------------------------------------------------------------------


def _card_number(raw: str, param: str) -> str:
    digits = _cards.normalize_number(raw)
    if digits is None:
        raise _card_error("invalid_number", "The card number is not a valid card number.", param)
    if not _cards.number_is_valid(digits):
        raise _card_error("incorrect_number", "The card number is incorrect.", param)
    return digits


def _check_expiry(exp_month: int, exp_year: int, now: dt.datetime) -> int:
    """The four-digit expiry year; two-digit years are taken as 20YY."""
    if not 1 <= exp_month <= 12:
        raise _card_error("invalid_expiry_month", "The expiry month is invalid.", "exp_month")
    year = exp_year + 2000 if 0 <= exp_year < 100 else exp_year
    if not now.year - EXPIRY_YEARS_MAX <= year <= now.year + EXPIRY_YEARS_MAX:
        raise _card_error("invalid_expiry_year", "The expiry year is invalid.", "exp_year")
    # A card is valid through the last day of its expiry month.
    if (year, exp_month) < (now.year, now.month):
        param = "exp_year" if year < now.year else "exp_month"
        raise _card_error("expired_card", "The card has expired.", param)
    return year


async def _post_token(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    # Browsers often send the expiry as strings: accept "12" for 12.
    body = _decode(await request.read(), CardTokenRequest | WalletTokenRequest, strict=False)
    now = dt.datetime.fromtimestamp(state.clock(), tz=dt.UTC)
    if isinstance(body, CardTokenRequest):
        digits = _card_number(body.number, "number")
        exp_year = _check_expiry(body.exp_month, body.exp_year, now)
        exp_month = body.exp_month
        brand = _cards.brand_of(digits)
        cvc = body.cvc.strip()
        if not (cvc.isascii() and cvc.isdigit() and len(cvc) == _cards.cvc_length_for(brand)):
            raise _card_error("invalid_cvc", "The security code is invalid.", "cvc")
        wallet = None
    else:
        digits = _card_number(body.card_number, "card_number")
        brand = _cards.brand_of(digits)
        exp_month, exp_year = 12, now.year + WALLET_EXPIRY_YEARS
        wallet = body.wallet
    token = f"tok_{secrets.token_hex(12)}"
    funding = _cards.behaviour_of(digits).funding
    state.cards[token] = _Card(
        number=digits,
        brand=brand,
        funding=funding,
        exp_month=exp_month,
        exp_year=exp_year,
        wallet=wallet,
    )
    # The token can be charged: it is never logged, like the number it stands for.
    log.debug("token created: %s …%s", brand, digits[-4:])
    return _json(
        200,
        TokenResponse(
            token=token,
            brand=brand,
            last4=digits[-4:],
            exp_month=exp_month,
            exp_year=exp_year,
            funding=funding,
            type="wallet" if wallet else "card",
            wallet=wallet,
        ),
    )


async def _preflight(request: web.Request) -> web.Response:
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


# -- charges --------------------------------------------------------------------------------


def _currency(raw: str) -> str:
    currency = raw.upper()
    if currency not in CURRENCY_EXPONENTS:
        raise ApiError(
            400,
            "invalid_request_error",
            "parameter_invalid",
            "The currency is not a supported ISO 4217 code.",
            param="currency",
        )
    return currency


async def _post_charge(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    body = _decode(await request.read(), ChargeRequest)
    currency = _currency(body.currency)
    if state.fails_with_5xx():
        raise _unavailable()
    fingerprint = (body.token, body.amount, currency)
    replay = _check_idempotency(state.charge_keys, body.idempotency_key, fingerprint)
    if replay is not None:
        return replay
    card = state.cards.get(body.token)
    if card is None:
        raise ApiError(
            400, "invalid_request_error", "resource_missing", "No such token.", param="token"
        )
    behaviour = _cards.behaviour_of(card.number)
    if behaviour.behaviour is _cards.Behaviour.processing_error:
        await state.sleep_ms(state.faults.latency_ms)
        log.info("charge with key %s: processing_error, nothing captured", body.idempotency_key)
        raise ApiError(
            402,
            "card_error",
            behaviour.error_code,
            "An error occurred while processing the card; try again.",
            decline_code=behaviour.decline_code,
            visa_category=_visa_category(card, behaviour),
            advice_code=_advice_code(card, behaviour),
        )
    first_on_token = card.charges_started == 0
    card.charges_started += 1
    charge = Charge(
        id=f"ch_{secrets.token_hex(12)}",
        amount=body.amount,
        currency=currency,
        status="processing",
        idempotency_key=body.idempotency_key,
        payment_method=body.token,
        brand=card.brand,
        last4=card.number[-4:],
        funding=card.funding,
        wallet=card.wallet,
        created=state.now_s(),
        metadata=dict(body.metadata),
    )
    state.charges[charge.id] = charge
    state.charge_keys[body.idempotency_key] = _KeyEntry(
        fingerprint=fingerprint, charge_id=charge.id
    )
    challenge = _challenge_for(state, request, body, card, behaviour)
    decided = state.spawn(
        _decide_charge(state, charge, card, behaviour, first_on_token, challenge)
    )
    status, payload = await asyncio.shield(decided)
    if behaviour.behaviour is _cards.Behaviour.capture_then_timeout or (
        state.faults.timeout_after_capture
    ):
        await state.sleep_ms(state.faults.capture_timeout_delay_ms)
    return web.Response(status=status, body=payload, content_type="application/json")


def _visa_category(card: _Card, behaviour: _cards.CardBehaviour) -> int | None:
    return behaviour.visa_category if card.brand == "visa" else None


def _advice_code(card: _Card, behaviour: _cards.CardBehaviour) -> str | None:
    return behaviour.advice_code if card.brand == "mastercard" else None


_AUTHENTICATING: Final = frozenset({
    _cards.Behaviour.authenticate_always, _cards.Behaviour.authenticate_unless_set_up,
    _cards.Behaviour.authenticate_then_decline,
})  # fmt: skip
# Stripe's decline for a charge made without the payer that needs their authentication.
AUTHENTICATION_REQUIRED: Final = _cards.CardBehaviour(
    behaviour=_cards.Behaviour.decline, error_code="authentication_required",
    decline_code="authentication_required",
)  # fmt: skip
# Stripe's code for a challenge the payer failed or abandoned.
AUTHENTICATION_FAILED: Final = _cards.CardBehaviour(
    behaviour=_cards.Behaviour.decline, error_code="payment_intent_authentication_failure",
    decline_code="payment_intent_authentication_failure",
)  # fmt: skip


class _Challenge(msgspec.Struct, frozen=True, kw_only=True):
    """What a charge that needs authentication does instead of deciding: ``declined``
    off session, else ``next_action`` for the payer."""

    declined: bool
    next_action: NextAction | None = None


def _challenge_for(
    state: SandboxState, request: web.Request, body: ChargeRequest, card: _Card,
    behaviour: _cards.CardBehaviour,
) -> _Challenge | None:  # fmt: skip
    kind = behaviour.behaviour
    if kind not in _AUTHENTICATING:
        return None
    if kind is _cards.Behaviour.authenticate_unless_set_up and body.off_session and card.set_up:
        return None
    if body.off_session:
        return _Challenge(declined=True)
    challenge_id = f"chl_{secrets.token_urlsafe(24)}"
    url = f"{request.scheme}://{request.host}/v1/challenges/{challenge_id}"
    action = NextAction(redirect_to_url=RedirectToUrl(url=url, return_url=body.return_url))
    state.challenges[challenge_id] = ""  # the charge id is set once the charge exists
    return _Challenge(declined=False, next_action=action)


async def _decide_charge(
    state: SandboxState,
    charge: Charge,
    card: _Card,
    behaviour: _cards.CardBehaviour,
    first_on_token: bool,
    challenge: _Challenge | None = None,
) -> tuple[int, bytes]:
    await state.sleep_ms(state.faults.latency_ms)
    if challenge is not None and challenge.next_action is not None:
        challenge_id = challenge.next_action.redirect_to_url.url.rsplit("/", 1)[1]
        state.challenges[challenge_id] = charge.id
        charge.status = "requires_action"
        charge.next_action = challenge.next_action
        answer = (200, _ENCODER.encode(charge))
        state.charge_keys[charge.idempotency_key].response = answer
        # No URL in the callback: it reaches logs and queues; the client asks for it.
        state.callbacks.emit("charge.requires_action", _event_data(charge, charge.amount))
        return answer
    if challenge is not None:
        behaviour = AUTHENTICATION_REQUIRED
    return _finish_charge(state, charge, card, behaviour, first_on_token)


def _finish_charge(
    state: SandboxState,
    charge: Charge,
    card: _Card,
    behaviour: _cards.CardBehaviour,
    first_on_token: bool,
) -> tuple[int, bytes]:
    declines = behaviour.behaviour is _cards.Behaviour.decline or (
        behaviour.behaviour is _cards.Behaviour.succeed_first_then_decline and not first_on_token
    ) or behaviour.behaviour is _cards.Behaviour.authenticate_then_decline
    charge.next_action = None
    if declines:
        charge.status = "failed"
        charge.failure_code = behaviour.error_code
        charge.decline_code = behaviour.decline_code
        charge.visa_category = _visa_category(card, behaviour)
        charge.advice_code = _advice_code(card, behaviour)
        error = ApiError(
            402,
            "card_error",
            behaviour.error_code,
            "The card was declined.",
            decline_code=charge.decline_code,
            charge=charge.id,
            visa_category=charge.visa_category,
            advice_code=charge.advice_code,
        )
        answer = (402, _ENCODER.encode({"error": error.body}))
        event_type = "charge.failed"
    else:
        charge.status = "succeeded"
        charge.fee = fee_minor(charge.amount)
        charge.net = charge.amount - charge.fee
        answer = (200, _ENCODER.encode(charge))
        event_type = "charge.succeeded"
    entry = state.charge_keys[charge.idempotency_key]
    if entry.response is None:  # a challenge's outcome leaves the first answer as it was
        entry.response = answer
    # Debug, not info: a processor answering thousands of charges a second in a load
    # test should not spend its time writing about each.
    log.debug(
        "charge %s with key %s %s: %d %s",
        charge.id,
        charge.idempotency_key,
        charge.status,
        charge.amount,
        charge.currency,
    )
    data = _event_data(charge, charge.amount)
    if declines:
        data["decline_code"] = charge.decline_code
        # The network's signals as well: a stop signal makes the decline hard whatever
        # its code, and this event may reach the portal before the charge's reply does.
        if charge.visa_category is not None:
            data["visa_category"] = charge.visa_category
        if charge.advice_code is not None:
            data["advice_code"] = charge.advice_code
    state.callbacks.emit(event_type, data)
    return answer


def _event_data(charge: Charge, amount_minor: int) -> dict[str, Any]:
    """A callback's ``data``: the charge, our attempt (its key), the amount the event is
    about, and the metadata the charge was created with."""
    data: dict[str, Any] = {
        "charge": charge.id,
        "attempt": charge.idempotency_key,
        "amount": amount_minor,
        "currency": charge.currency,
    }
    if charge.metadata:
        data["metadata"] = charge.metadata
    return data


def _charge_or_404(state: SandboxState, charge_id: str, param: str) -> Charge:
    charge = state.charges.get(charge_id)
    if charge is None:
        raise ApiError(
            404, "invalid_request_error", "resource_missing", "No such charge.", param=param
        )
    return charge


async def _get_charge(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    return _json(200, _charge_or_404(state, request.match_info["charge_id"], "id"))


async def _list_charges(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    key = request.query.get("idempotency_key")
    if key is None:
        data = list(state.charges.values())
    else:
        entry = state.charge_keys.get(key)
        data = [state.charges[entry.charge_id]] if entry and entry.charge_id else []
    return _json(200, {"data": data, "has_more": False})


# -- settlement reports ---------------------------------------------------------------------


def _settlement(state: SandboxState) -> tuple[list[Any], list[Any]]:
    charges = [
        SettledCharge(id=c.id, amount=c.amount, currency=c.currency, created=c.created)
        for c in state.charges.values()
        if c.status == "succeeded"
    ]
    reversals = [
        SettledReversal(type="refund", id=r.id, charge=r.charge, amount=r.amount, fee=0,
                        currency=r.currency, created=r.created)
        for r in state.refunds.values()
    ] + [
        SettledReversal(type="dispute", id=d.id, charge=d.charge, amount=d.amount, fee=d.fee,
                        currency=d.currency, created=d.created)
        for d in state.disputes.values()
    ]  # fmt: skip
    reversals.sort(key=lambda r: (r.created, r.id))
    today = dt.datetime.fromtimestamp(state.now_s(), dt.UTC).date()
    return build_settlement(charges, state.settlement, today=today, fee_of=fee_minor,
                            reversals=reversals)  # fmt: skip


def _report(
    request: web.Request, data: list[Any], render: Callable[[Any], str], **extra: Any
) -> web.Response:
    report_format = request.query.get("format", "json")
    if report_format == "csv":
        return web.Response(text=render(data), content_type="text/csv")
    if report_format != "json":
        raise ApiError(400, "invalid_request_error", "parameter_invalid",
                       "format must be json or csv.", param="format")  # fmt: skip
    return _json(200, {"data": data, "has_more": False, **extra})


async def _list_settlements(request: web.Request) -> web.Response:
    lines, _ = _settlement(request.app[SANDBOX])
    payout = request.query.get("payout")
    if payout is not None:
        lines = [line for line in lines if line.payout == payout]
    covers_from = request.app[SANDBOX].settlement.covers_from
    return _report(request, lines, settlements_csv, covers_from=covers_from)


async def _list_payouts(request: web.Request) -> web.Response:
    _, payouts = _settlement(request.app[SANDBOX])
    return _report(request, payouts, payouts_csv)


async def _post_discrepancy(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    discrepancy = _decode(await request.read(), Discrepancy)
    if discrepancy.kind != "unknown_charge" and discrepancy.charge is None:
        raise ApiError(400, "invalid_request_error", "parameter_missing",
                       "This kind of discrepancy names a charge.", param="charge")  # fmt: skip
    state.settlement.discrepancies.append(discrepancy)
    return _json(200, {"data": state.settlement.discrepancies, "has_more": False})


async def _delete_discrepancies(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    state.settlement.discrepancies.clear()
    return _json(200, {"data": [], "has_more": False})


# -- refunds and disputes -------------------------------------------------------------------


async def _post_refund(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    body = _decode(await request.read(), RefundRequest)
    if state.fails_with_5xx():
        raise _unavailable()
    fingerprint = (body.charge, body.amount)
    replay = _check_idempotency(state.refund_keys, body.idempotency_key, fingerprint)
    if replay is not None:
        return replay
    charge = _charge_or_404(state, body.charge, "charge")
    if charge.status != "succeeded":
        raise ApiError(
            400,
            "invalid_request_error",
            "charge_not_succeeded",
            "Only a succeeded charge can be refunded.",
            param="charge",
        )
    if charge.disputed:
        raise ApiError(
            400,
            "invalid_request_error",
            "charge_disputed",
            "A disputed charge cannot be refunded.",
            param="charge",
        )
    refundable_minor = charge.amount - charge.amount_refunded
    if refundable_minor == 0:
        raise ApiError(
            400,
            "invalid_request_error",
            "charge_already_refunded",
            "The charge has already been refunded in full.",
            param="charge",
        )
    amount_minor = refundable_minor if body.amount is None else body.amount
    if amount_minor > refundable_minor:
        raise ApiError(
            400,
            "invalid_request_error",
            "amount_too_large",
            "The amount is larger than what is left to refund.",
            param="amount",
        )
    # Decided before any await, so two refunds can never together exceed the charge.
    charge.amount_refunded += amount_minor
    charge.refunded = charge.amount_refunded == charge.amount
    assert charge.amount_refunded <= charge.amount
    refund = Refund(
        id=f"re_{secrets.token_hex(12)}",
        charge=charge.id,
        amount=amount_minor,
        currency=charge.currency,
        idempotency_key=body.idempotency_key,
        created=state.now_s(),
    )
    state.refunds[refund.id] = refund
    answer = (200, _ENCODER.encode(refund))
    state.refund_keys[body.idempotency_key] = _KeyEntry(fingerprint=fingerprint, response=answer)
    log.info("refund %s of %s: %d %s", refund.id, charge.id, amount_minor, charge.currency)
    state.callbacks.emit("charge.refunded", _event_data(charge, amount_minor))
    await state.sleep_ms(state.faults.latency_ms)
    return web.Response(status=answer[0], body=answer[1], content_type="application/json")


async def _post_dispute(request: web.Request) -> web.Response:
    """Sandbox control: the cardholder disputes a succeeded charge."""
    state = request.app[SANDBOX]
    charge = _charge_or_404(state, request.match_info["charge_id"], "id")
    if charge.status != "succeeded":
        raise ApiError(
            400,
            "invalid_request_error",
            "charge_not_succeeded",
            "Only a succeeded charge can be disputed.",
            param="id",
        )
    if not charge.disputed:
        # What the payer still has charged: a refund already made is not disputed again.
        dispute = Dispute(
            id=f"dp_{secrets.token_hex(12)}", charge=charge.id,
            amount=charge.amount - charge.amount_refunded, fee=DISPUTE_FEE_MINOR,
            currency=charge.currency, created=state.now_s(),
        )  # fmt: skip
        state.disputes[dispute.id] = dispute
        charge.disputed = True
        charge.dispute = dispute.id
        data = _event_data(charge, dispute.amount)
        data["dispute"] = dispute.id
        data["fee"] = dispute.fee
        state.callbacks.emit("charge.disputed", data)
    return _json(200, charge)


# -- controls, hosted page, health ----------------------------------------------------------


async def _get_faults(request: web.Request) -> web.Response:
    return _json(200, request.app[SANDBOX].faults)


async def _post_faults(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    patch = _decode(await request.read(), FaultsPatch)
    state.faults = apply_patch(state.faults, patch)
    if patch.seed is not msgspec.UNSET:
        state.rng.seed(patch.seed)
    log.info("faults set: %s", state.faults)
    return _json(200, state.faults)


async def _get_card_fields(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    nonce = secrets.token_urlsafe(16)
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        f"connect-src 'self'; form-action 'none'; base-uri 'none'; "
        f"frame-ancestors {state.frame_ancestors}"
    )
    return web.Response(
        text=render_card_fields(nonce),
        content_type="text/html",
        headers={
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def _challenge_headers(state: SandboxState, nonce: str) -> dict[str, str]:
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
        f"base-uri 'none'; frame-ancestors {state.frame_ancestors}"
    )
    return {
        "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    }  # fmt: skip


def _open_challenge(state: SandboxState, challenge_id: str) -> Charge:
    charge_id = state.challenges.get(challenge_id)
    charge = state.charges.get(charge_id or "")
    if charge is None:
        raise ApiError(404, "invalid_request_error", "resource_missing", "No such challenge.",
                       param="id")  # fmt: skip
    return charge


def _answered_as(charge: Charge) -> str:
    """How a decided challenge was answered: the same answer again changes nothing."""
    return "fail" if charge.decline_code == AUTHENTICATION_FAILED.decline_code else "complete"


async def _get_challenge(request: web.Request) -> web.Response:
    state = request.app[SANDBOX]
    charge = _open_challenge(state, request.match_info["challenge_id"])
    nonce = secrets.token_urlsafe(16)
    page = (
        render_challenge(nonce, amount_minor=charge.amount, currency=charge.currency,
                         brand=charge.brand, last4=charge.last4)
        if charge.status == "requires_action"
        else render_challenge_done(nonce, completed=_answered_as(charge) == "complete")
    )  # fmt: skip
    return web.Response(text=page, content_type="text/html",
                        headers=_challenge_headers(state, nonce))  # fmt: skip


async def _post_challenge(request: web.Request) -> web.StreamResponse:
    """The payer's answer to the challenge (the page's form, or JSON from a test)."""
    state = request.app[SANDBOX]
    charge = _open_challenge(state, request.match_info["challenge_id"])
    as_json = request.content_type == "application/json"
    if as_json:
        answer = _decode(await request.read(), ChallengeAnswer)
    else:
        form = await request.post()
        answer = _decode(_ENCODER.encode({k: str(v) for k, v in form.items()}), ChallengeAnswer)
    if charge.status == "requires_action":
        card = state.cards.get(charge.payment_method)
        assert card is not None, charge.id
        if answer.result == "complete":
            card.set_up = True
            behaviour = _cards.behaviour_of(card.number)
            if behaviour.behaviour is not _cards.Behaviour.authenticate_then_decline:
                behaviour = _cards.CardBehaviour(behaviour=_cards.Behaviour.succeed)
        else:
            behaviour = AUTHENTICATION_FAILED
        log.info("challenge for charge %s: %s", charge.id, answer.result)
        return_url = charge.next_action.redirect_to_url.return_url if charge.next_action else None
        _finish_charge(state, charge, card, behaviour, first_on_token=False)
    elif answer.result != _answered_as(charge):
        raise ApiError(400, "invalid_request_error", "challenge_already_answered",
                       "This challenge was answered otherwise.", param="result")  # fmt: skip
    else:
        return_url = None
    if as_json:
        return _json(200, charge)
    if return_url:
        raise web.HTTPSeeOther(return_url)
    nonce = secrets.token_urlsafe(16)
    return web.Response(
        text=render_challenge_done(nonce, completed=_answered_as(charge) == "complete"),
        content_type="text/html", headers=_challenge_headers(state, nonce),
    )  # fmt: skip


async def _healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


# -- app ------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors_and_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ApiError as error:
        response = error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = "resource_missing" if error.status == 404 else "parameter_invalid"
        response = ApiError(error.status, "invalid_request_error", code, error.reason).response()
    except Exception:
        # The request body is never logged: it may hold a card number.
        log.exception("sandbox error on %s %s", request.method, request.path)
        response = ApiError(500, "api_error", "api_error", "The sandbox failed.").response()
    if request.path == "/v1/tokens":
        response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def create_sandbox_app(
    *,
    callback_url: str | None,
    webhook_secret: str,
    clock: Callable[[], float] | None = None,
    faults: Faults | None = None,
    seed: int = 0,
    callback_retry_delays_ms: tuple[int, ...] = STANDARD_RETRY_DELAYS_MS,
    frame_ancestors: str = "*",
) -> web.Application:
    """The sandbox as an aiohttp app. ``callback_url`` None sends no callbacks;
    ``webhook_secret`` is a Standard Webhooks secret (``whsec_`` + base64); ``clock``
    gives unix seconds (``time.time`` by default); ``frame_ancestors`` is the CSP
    source list of pages that may embed the card fields."""
    app = web.Application(middlewares=[_errors_and_cors])
    state = SandboxState(
        callback_url=callback_url,
        webhook_secret=webhook_secret,
        clock=clock or time.time,
        faults=faults or Faults(),
        seed=seed,
        callback_retry_delays_ms=callback_retry_delays_ms,
        frame_ancestors=frame_ancestors,
    )
    app[SANDBOX] = state

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await state.callbacks.start()
        yield
        await state.close()

    async def on_shutdown(app: web.Application) -> None:
        state.closing.set()  # held responses answer now instead of delaying shutdown

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/v1/tokens", _post_token)
    app.router.add_route("OPTIONS", "/v1/tokens", _preflight)
    app.router.add_post("/v1/charges", _post_charge)
    app.router.add_get("/v1/charges", _list_charges)
    app.router.add_get("/v1/charges/{charge_id}", _get_charge)
    app.router.add_post("/v1/refunds", _post_refund)
    app.router.add_get("/v1/hosted/card-fields", _get_card_fields)
    app.router.add_get("/v1/challenges/{challenge_id}", _get_challenge)
    app.router.add_post("/v1/challenges/{challenge_id}", _post_challenge)
    app.router.add_get("/v1/_faults", _get_faults)
    app.router.add_post("/v1/_faults", _post_faults)
    app.router.add_post("/v1/_charges/{charge_id}/dispute", _post_dispute)
    app.router.add_get("/v1/settlements", _list_settlements)
    app.router.add_get("/v1/payouts", _list_payouts)
    app.router.add_post("/v1/_settlements/discrepancies", _post_discrepancy)
    app.router.add_delete("/v1/_settlements/discrepancies", _delete_discrepancies)
    app.router.add_get("/healthz", _healthz)
    return app


async def start_sandbox(host: str, port: int, **options: Any) -> web.AppRunner:
    """Start the sandbox inside a running event loop (for ``payportal serve``); the
    caller owns the runner and calls ``cleanup()``."""
    runner = web.AppRunner(create_sandbox_app(**options), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


# A stopping sandbox answers held responses at once (on_shutdown); this bounds the rest.
SHUTDOWN_TIMEOUT_S: Final = 5.0


def run_sandbox(host: str, port: int, *, ssl_context: Any = None, **options: Any) -> None:
    """Run the sandbox alone until SIGINT or SIGTERM, on uvloop as ``serve`` runs; over
    HTTPS with ``ssl_context``."""
    with contextlib.suppress(ImportError):  # uvloop is a dependency; Windows lacks it
        import uvloop

        uvloop.install()
    web.run_app(
        create_sandbox_app(**options), host=host, port=port, print=None, access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S, ssl_context=ssl_context,
    )  # fmt: skip


# -- command line ---------------------------------------------------------------------------


def _reload_on_sighup(context: Any, cert_file: str, key_file: str) -> None:
    """SIGHUP (serve forwards its own) loads the renewed pair for new connections; a broken
    renewal is refused and the old pair kept, as at the front door."""
    import signal

    from payportal.tls import reload

    def handler(_signum: int, _frame: Any) -> None:
        try:
            reload(context, cert_file, key_file)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            print(f"sandbox: certificate not reloaded ({type(error).__name__}); the old one "
                  "stays", file=sys.stderr, flush=True)  # fmt: skip
        else:
            print("sandbox: certificate reloaded", file=sys.stderr, flush=True)

    signal.signal(signal.SIGHUP, handler)



def run_for_settings(
    settings: Any, *, host: str | None = None, port: int | None = None,
    callback_url: str | None = None, faults: str = "{}", seed: int = 0,
) -> None:  # fmt: skip
    """``payportal sandbox``: the sandbox for the deployment ``settings`` describe. Its
    callbacks go to the front door on this machine, signed with the secret ``serve``
    derives from the same secret key, so the two agree without a setting. With the
    deployment's TLS pair it serves HTTPS, as the front door does: the portal's HTTPS
    pages frame its card fields, and browsers block an HTTP frame in an HTTPS page
    anywhere but on a loopback address."""
    from payportal.children import die_with_parent
    from payportal.server import front_door_url, sandbox_webhook_secret

    die_with_parent()

    try:
        knobs = msgspec.json.decode(faults, type=Faults)
    except msgspec.MsgspecError as error:
        raise ValueError(f"--faults is malformed: {error}") from error
    host = settings.host if host is None else host
    port = settings.sandbox_port if port is None else port
    if callback_url is None:
        callback_url = f"{front_door_url(settings)}/v1/processors/sandbox/callbacks"
    ssl_context = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        from payportal.tls import server_context

        ssl_context = server_context(settings.tls_cert_file, settings.tls_key_file)
        _reload_on_sighup(ssl_context, settings.tls_cert_file, settings.tls_key_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(f"sandbox processor on {settings.scheme}://{host}:{port}; callbacks to {callback_url}",
          file=sys.stderr, flush=True)  # fmt: skip
    run_sandbox(
        host, port, ssl_context=ssl_context, callback_url=callback_url,
        webhook_secret=sandbox_webhook_secret(settings), faults=knobs, seed=seed,
    )  # fmt: skip


# The name of the variable that holds the secret, not a secret.
SECRET_ENV: Final = "PAYPORTAL_SANDBOX_WEBHOOK_SECRET"  # noqa: S105


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m payportal.processors.sandbox", description="The sandbox processor."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PAYPORTAL_SANDBOX_PORT", "8081"))
    )
    parser.add_argument(
        "--callback-url", default=None, help="where signed callbacks go; none are sent without it"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default="{}", help="initial fault knobs as JSON")
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV)
    if args.callback_url and not secret:
        print(
            f"{SECRET_ENV} is not set: it must hold the callbacks' Standard Webhooks "
            "secret (whsec_ + base64)",
            file=sys.stderr,
        )
        return 2
    try:
        faults = msgspec.json.decode(args.faults, type=Faults)
    except msgspec.MsgspecError as error:
        print(f"--faults is malformed: {error}", file=sys.stderr)
        return 2
    from payportal.logs import configure_logging

    configure_logging()
    print(f"sandbox processor on http://{args.host}:{args.port}", file=sys.stderr)
    run_sandbox(
        args.host,
        args.port,
        callback_url=args.callback_url,
        # Without callbacks nothing is signed, so any well-formed secret will do.
        webhook_secret=secret or "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        faults=faults,
        seed=args.seed,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
