"""Stripe as a ``ProcessorAdapter``, through the official SDK's async client (docs/processors.md).

Payments are PaymentIntents created and confirmed in one request (``confirm=true``) with
the saved PaymentMethod, under our attempt id as Stripe's ``Idempotency-Key``: the same
attempt sent again (a retry after ``errored``, a re-send after an inquiry found nothing)
is answered by Stripe with the first request's result and never charges twice. The
attempt id also goes into the intent's metadata (``attempt``) beside our payment id, so
that a webhook and an inquiry find their attempt.

A saved card's token is ``<customer id>:<payment method id>`` (``cus_…:pm_…``), or a bare
``pm_…`` for a PaymentMethod attached to no Customer. The token is sealed at rest like
every processor token (``payment_methods.token``, docs/operations.md "Data at rest"), so
the Customer id is sealed with it. ``save_card`` makes one: a Customer (new, or the given
one) and the PaymentMethod attached through a confirmed SetupIntent for off-session use.

How answers map to outcomes (docs/processors.md has the decline table):

| Stripe answered | outcome |
|---|---|
| an intent ``succeeded`` | ``succeeded``; the charge id is the intent's ``latest_charge`` |
| 402 card error; an intent in ``requires_payment_method``, ``canceled`` | ``declined``, its codes |
| an intent ``processing``, ``requires_action`` (3-D Secure) | ``unknown``: asked again |
| 400 / 404 (an unknown or detached payment method) | ``declined`` with Stripe's ``code`` |
| 409 (the key is in use by a request still running) | ``unknown`` |
| the key reused with another body (``IdempotencyError``) | raises ``ProcessorRequestError`` |
| 401 / 403 (a key without the rights), 429, 5xx | ``errored``: nothing captured, send again |
| a timeout, a dropped or refused connection, an unreadable answer | ``unknown`` |

A technical decline code (``processing_error``) is ``errored``, not ``declined``. The
SDK's own network retries are off (``max_network_retries=0``): the engine decides
when an attempt is sent again (docs/design.md 6) and counts every send.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import stripe

from payportal.engine import OutcomeKind
from payportal.engine.retry_policy import TECHNICAL_CODES

from ._settlement import Payout, SettlementLine, SettlementReport
from .adapter import (
    ChargeResult,
    InquiryStatus,
    NextAction,
    ProcessorRequestError,
    RedirectToUrl,
    RefundResult,
)
from .charging import METADATA_PAYMENT

if TYPE_CHECKING:
    from payportal.config import Settings

__all__ = [
    "METADATA_ATTEMPT",
    "STRIPE_API_BASE",
    "SavedCard",
    "StripeProcessor",
    "intent_result",
    "split_token",
]

log = logging.getLogger(__name__)

STRIPE_API_BASE: Final = "https://api.stripe.com"
# The intent's metadata key that names our attempt (the idempotency key); callbacks and
# inquiries find the attempt by it.
METADATA_ATTEMPT: Final = "attempt"
# As the sandbox adapter: long enough for a 3-D Secure frictionless flow at the issuer,
# short enough that a stuck call does not hold a payment in ``processing`` for long.
TIMEOUT_MS_DEFAULT: Final = 10_000
# Charges in flight at once (connections to Stripe), as for the sandbox adapter.
CONCURRENCY_MAX_DEFAULT: Final = 1_024
# How far back a settlement report reaches: Stripe keeps every payout, and reconciliation
# re-reads the report on each run; older payouts were matched by earlier runs.
REPORT_DAYS_DEFAULT: Final = 35
_DAY_S: Final = 86_400
# Stripe's name for a decline whose intent was canceled before it captured.
CANCELED_CODE: Final = "payment_intent_canceled"
# Stripe's own advice on a decline that forbids retrying the card (docs/processors.md).
STRIPE_ADVICE_STOP: Final = "do_not_try_again"
# Balance transactions that carry a card charge in a payout.
_CHARGE_TYPES: Final = frozenset({"charge", "payment"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class SavedCard:
    """A card saved for later: its token (``cus_…:pm_…``) and the card's display facts.
    The ids are sensitive (docs/operations.md "Data at rest"): never in a repr."""

    token: str = dataclasses.field(repr=False)
    customer_id: str = dataclasses.field(repr=False)
    payment_method_id: str = dataclasses.field(repr=False)
    brand: str | None
    last4: str | None


def split_token(token: str) -> tuple[str | None, str]:
    """(customer id or None, payment method id) of a saved card's token."""
    customer, separator, method = token.partition(":")
    if not separator:
        return None, token
    return customer, method


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` of a StripeObject or a dict, None when absent."""
    if obj is None:
        return None
    try:
        return obj[name]
    except (KeyError, TypeError):
        return None


def _id_of(value: Any) -> str | None:
    """An expandable field's id: the string, or the expanded object's ``id``."""
    if value is None or isinstance(value, str):
        return value
    found = _field(value, "id")
    return str(found) if found is not None else None


def _stop_signals(error: Any) -> tuple[int | None, str | None]:
    """(Visa category, advice code) for ``classify`` from a Stripe error object: the
    network's advice code as Stripe relays it, and Stripe's own ``do_not_try_again`` as
    the category that means "the issuer will never approve" (docs/processors.md)."""
    advice = _field(error, "network_advice_code")
    category = 1 if _field(error, "advice_code") == STRIPE_ADVICE_STOP else None
    return category, advice


def intent_result(intent: Any) -> ChargeResult:
    """A PaymentIntent (a StripeObject or the dict of a webhook) as our outcome."""
    status = _field(intent, "status")
    charge_id = _id_of(_field(intent, "latest_charge")) or _field(intent, "id")
    currency = _field(intent, "currency")
    common: dict[str, Any] = {
        "charge_id": charge_id,
        "amount_minor": _field(intent, "amount"),
        "currency": currency.upper() if isinstance(currency, str) else None,
    }
    if status == "succeeded":
        return ChargeResult(outcome=OutcomeKind.succeeded, **common)
    if status in ("requires_payment_method", "canceled"):
        error = _field(intent, "last_payment_error")
        code = _field(error, "decline_code") or _field(error, "code")
        if code is None:
            # Canceled (by us, by Stripe after a failed 3-D Secure, or an intent left
            # unconfirmed) without a card error: nothing was captured and nothing will be.
            code = CANCELED_CODE
        category, advice = _stop_signals(error)
        technical = code in TECHNICAL_CODES
        return ChargeResult(
            outcome=OutcomeKind.errored if technical else OutcomeKind.declined,
            decline_code=code, visa_category=category, advice_code=advice, **common,
        )  # fmt: skip
    if status == "requires_action":
        # The payer's 3-D Secure step. Charges are confirmed with a return_url, so Stripe
        # answers with a page to send the payer to (docs/processors.md "3-D Secure").
        action = _field(intent, "next_action")
        redirect = _field(action, "redirect_to_url")
        url = _field(redirect, "url")
        next_action = None
        if isinstance(url, str) and url:
            next_action = NextAction(redirect_to_url=RedirectToUrl(
                url=url, return_url=_field(redirect, "return_url")))  # fmt: skip
        return ChargeResult(outcome=OutcomeKind.requires_action, next_action=next_action,
                            **common)  # fmt: skip
    # processing, requires_confirmation, requires_capture: no decision yet; asked again.
    return ChargeResult(outcome=OutcomeKind.unknown, **common)


class StripeProcessor:
    """``ProcessorAdapter`` for Stripe. Use as ``async with`` or call ``close``."""

    def __init__(
        self,
        secret_key: str,
        *,
        api_base: str = STRIPE_API_BASE,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        concurrency_max: int = CONCURRENCY_MAX_DEFAULT,
        report_days: int = REPORT_DAYS_DEFAULT,
        public_url: str | None = None,
    ) -> None:
        """``public_url``: the portal as payers reach it; a 3-D Secure step returns the
        payer to their payment's page there."""
        assert timeout_ms > 0
        assert concurrency_max > 0
        assert report_days > 0
        # The SDK's aiohttp client opens its session on first use, inside the running loop.
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000))
        self._client = stripe.StripeClient(
            secret_key, base_addresses={"api": api_base.rstrip("/")}, http_client=self._http,
            max_network_retries=0,
        )  # fmt: skip
        self._semaphore = asyncio.Semaphore(concurrency_max)
        self._report_days = report_days
        self._public_url = public_url.rstrip("/") if public_url else None

    def _return_url(self, payment_id: str | None) -> str | None:
        if self._public_url is None or not payment_id:
            return None
        return f"{self._public_url}/payments/{payment_id}"

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeProcessor:
        assert settings.stripe_secret_key is not None, "PAYPORTAL_PROCESSOR=stripe checks it"
        return cls(settings.stripe_secret_key, api_base=settings.stripe_api_base,
                   public_url=settings.public_url)  # fmt: skip

    @property
    def client(self) -> stripe.StripeClient:
        """The SDK client, for the webhook receiver's signature check."""
        return self._client

    async def __aenter__(self) -> StripeProcessor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        # The SDK opens its session lazily; closing one never opened would open it.
        if getattr(self._http, "_cached_session", None) is not None:
            await self._http.close_async()  # type: ignore[no-untyped-call]

    # -- ProcessorAdapter -------------------------------------------------------------------

    async def charge(
        self, token: str, amount_minor: int, currency: str, idempotency_key: str,
        metadata: Mapping[str, str] | None = None, *, off_session: bool = False,
        return_url: str | None = None,
    ) -> ChargeResult:  # fmt: skip
        customer, method = split_token(token)
        params: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "payment_method": method,
            "confirm": True,
            # Cards only: with Stripe's automatic payment methods a confirm on the server
            # would need a return_url for redirect-based methods we do not offer.
            "payment_method_types": ["card"],
            "metadata": {**(metadata or {}), METADATA_ATTEMPT: idempotency_key},
        }
        if customer is not None:
            params["customer"] = customer
        if off_session:
            # Merchant-initiated (a retry, autopay): the issuer is told the payer is not
            # there to authenticate, and Stripe answers authentication_required instead
            # of waiting for a 3-D Secure step no one will take.
            params["off_session"] = True
        else:
            # With the payer there, a 3-D Secure step is a page to send them to, and back
            # from: the payment's own page in the portal (docs/processors.md "3-D Secure").
            back = return_url or self._return_url((metadata or {}).get(METADATA_PAYMENT))
            if back is not None:
                params["return_url"] = back
        try:
            async with self._semaphore:
                intent = await self._client.v1.payment_intents.create_async(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": idempotency_key},
                )
        except stripe.CardError as error:
            return _card_error_result(error, amount_minor, currency)
        except stripe.IdempotencyError as error:
            raise ProcessorRequestError(409, "idempotency_error", _message(error)) from None
        except stripe.StripeError as error:
            return _failure_result(error)
        except (TimeoutError, aiohttp.ClientError):
            # The SDK's reading of the body is outside its own error handling.
            return ChargeResult(outcome=OutcomeKind.unknown)
        return intent_result(intent)

    async def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        params: dict[str, Any] = {"amount": amount_minor}
        # A charge id (ch_/py_) as the engine records it; an intent id when a charge id
        # was never learnt (docs/processors.md).
        params["payment_intent" if charge_id.startswith("pi_") else "charge"] = charge_id
        try:
            async with self._semaphore:
                refund = await self._client.v1.refunds.create_async(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": idempotency_key},
                )
        except stripe.IdempotencyError as error:
            raise ProcessorRequestError(409, "idempotency_error", _message(error)) from None
        except stripe.StripeError as error:
            outcome = _failure_result(error).outcome
            return RefundResult(outcome=outcome, charge_id=charge_id, failure_code=error.code)
        except (TimeoutError, aiohttp.ClientError):
            return RefundResult(outcome=OutcomeKind.unknown, charge_id=charge_id)
        status = _field(refund, "status")
        currency = _field(refund, "currency")
        outcome = {
            # A card refund is pending only until the network acknowledges it; one that
            # fails later arrives as refund.failed (docs/processors.md).
            "succeeded": OutcomeKind.succeeded, "pending": OutcomeKind.succeeded,
            "failed": OutcomeKind.declined, "canceled": OutcomeKind.declined,
        }.get(status, OutcomeKind.unknown)  # fmt: skip
        return RefundResult(
            outcome=outcome, refund_id=_field(refund, "id"),
            charge_id=_id_of(_field(refund, "charge")) or charge_id,
            amount_minor=_field(refund, "amount"),
            currency=currency.upper() if isinstance(currency, str) else None,
            failure_code=_field(refund, "failure_reason"),
        )  # fmt: skip

    async def inquire(self, idempotency_key: str) -> ChargeResult:
        """By searching intents on their ``attempt`` metadata (docs/processors.md "Status
        inquiry"). Search trails writes by up to a minute; an intent not found yet is
        ``not_found``, and the engine's re-send under the same idempotency key is then
        answered by Stripe with the first request's result, never a second charge."""
        query = f"metadata['{METADATA_ATTEMPT}']:'{_quoted(idempotency_key)}'"
        try:
            async with self._semaphore:
                found = await self._client.v1.payment_intents.search_async({"query": query})
        except stripe.StripeError as error:
            return _failure_result(error)
        except (TimeoutError, aiohttp.ClientError):
            return ChargeResult(outcome=OutcomeKind.unknown)
        intents = list(found.data)
        if not intents:
            return ChargeResult(outcome=OutcomeKind.errored, inquiry=InquiryStatus.not_found)
        # One intent per key while Stripe keeps the key (24 h); should a later re-send
        # have made another, a success among them is the answer.
        intents.sort(key=lambda i: _field(i, "status") != "succeeded")
        result = intent_result(intents[0])
        inquiry = {
            OutcomeKind.succeeded: InquiryStatus.succeeded,
            OutcomeKind.declined: InquiryStatus.declined,
        }.get(result.outcome, InquiryStatus.processing)
        return ChargeResult(
            outcome=result.outcome, charge_id=result.charge_id,
            decline_code=result.decline_code, visa_category=result.visa_category,
            advice_code=result.advice_code, amount_minor=result.amount_minor,
            currency=result.currency, inquiry=inquiry,
        )  # fmt: skip

    # -- saved cards --------------------------------------------------------------------------

    async def save_card(
        self, payment_method_id: str, *, customer_id: str | None = None,
        email: str | None = None, idempotency_key: str,
    ) -> SavedCard:  # fmt: skip
        """Attach ``payment_method_id`` (from Stripe.js) to a Customer for off-session use
        through a confirmed SetupIntent; the Customer is created when none is given.
        Raises ``ProcessorRequestError`` when Stripe refuses (the card failed its check,
        or it needs the payer's authentication: docs/processors.md "Saved cards")."""
        try:
            if customer_id is None:
                params: dict[str, Any] = {"email": email} if email else {}
                customer = await self._client.v1.customers.create_async(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": f"{idempotency_key}-customer"},
                )
                customer_id = str(customer["id"])
            setup_params: dict[str, Any] = {
                "customer": customer_id, "payment_method": payment_method_id,
                "confirm": True, "usage": "off_session", "payment_method_types": ["card"],
            }  # fmt: skip
            setup = await self._client.v1.setup_intents.create_async(
                setup_params,  # type: ignore[arg-type]
                {"idempotency_key": f"{idempotency_key}-setup"},
            )
        except stripe.StripeError as error:
            raise ProcessorRequestError(error.http_status or 0, error.code,
                                        _message(error)) from None  # fmt: skip
        status = _field(setup, "status")
        if status != "succeeded":
            raise ProcessorRequestError(402, status, "the card was not set up for later use")
        method = _field(setup, "payment_method")
        method_id = _id_of(method) or payment_method_id
        card = _field(method, "card") if not isinstance(method, str) else None
        return SavedCard(
            token=f"{customer_id}:{method_id}", customer_id=customer_id,
            payment_method_id=method_id, brand=_field(card, "brand"),
            last4=_field(card, "last4"),
        )  # fmt: skip

    # -- settlement reports (for reconciliation) ----------------------------------------------

    async def settlement_report(self, *, now_s: int | None = None) -> SettlementReport:
        """Stripe's payouts of the last ``report_days`` and the charges each paid out, from
        their balance transactions (docs/processors.md "Reconciliation"). Raises
        ``ProcessorRequestError`` when Stripe cannot answer: nothing is matched against a
        partial report."""
        now = int(dt.datetime.now(dt.UTC).timestamp()) if now_s is None else now_s
        since = now - self._report_days * _DAY_S
        lines: list[SettlementLine] = []
        payouts: list[Payout] = []
        newest_settled = 0
        try:
            payout_page = await self._client.v1.payouts.list_async(
                {"created": {"gte": since}, "limit": 100}
            )
            async for payout in payout_page.auto_paging_iter():
                payout_id = str(payout["id"])
                others_net = 0
                count = 0
                page = await self._client.v1.balance_transactions.list_async(
                    {"payout": payout_id, "limit": 100}
                )
                async for txn in page.auto_paging_iter():
                    kind = _field(txn, "type")
                    if kind == "payout":
                        continue  # the payout's own withdrawal from the balance
                    if kind not in _CHARGE_TYPES:
                        # Refunds, disputes, adjustments netted into the payout.
                        others_net += int(txn["net"])
                        continue
                    created = int(txn["created"])
                    newest_settled = max(newest_settled, created)
                    count += 1
                    lines.append(SettlementLine(
                        charge=str(_id_of(txn["source"])), payout=payout_id,
                        amount=int(txn["amount"]), currency=str(txn["currency"]).upper(),
                        fee=int(txn["fee"]), net=int(txn["net"]), created=created,
                    ))  # fmt: skip
                status = _field(payout, "status")
                payouts.append(Payout(
                    id=payout_id,
                    date=dt.datetime.fromtimestamp(int(payout["arrival_date"]), dt.UTC).date(),
                    currency=str(payout["currency"]).upper(),
                    # What the payout paid for its charges: Stripe's total less what it
                    # netted for refunds and disputes, so the total still checks Stripe's
                    # arithmetic against the charge lines (docs/processors.md).
                    amount=int(payout["amount"]) - others_net,
                    charges=count, status="paid" if status == "paid" else "pending",
                ))  # fmt: skip
        except stripe.StripeError as error:
            raise ProcessorRequestError(error.http_status or 0, error.code,
                                        _message(error)) from None  # fmt: skip
        except (TimeoutError, aiohttp.ClientError):
            raise ProcessorRequestError(0, None, "no answer from Stripe") from None
        payouts.sort(key=lambda p: (p.date, p.currency, p.id))
        # Charges captured after the newest one paid out wait for their payout (Stripe
        # pays out days later): not missing yet.
        return SettlementReport(lines=lines, payouts=payouts, covers_from=since,
                                covers_until=newest_settled or since)  # fmt: skip


def _message(error: stripe.StripeError) -> str:
    # The SDK's user message only: its str() may quote the request's body.
    return str(error.user_message or type(error).__name__)


def _quoted(value: str) -> str:
    """``value`` inside a single-quoted Stripe search string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _card_error_result(error: stripe.CardError, amount_minor: int, currency: str) -> ChargeResult:
    detail = error.error
    code = _field(detail, "decline_code") or error.code or _field(detail, "code")
    intent = _field(detail, "payment_intent")
    charge_id = _id_of(_field(detail, "charge")) or _id_of(_field(intent, "latest_charge"))
    category, advice = _stop_signals(detail)
    technical = code in TECHNICAL_CODES
    return ChargeResult(
        outcome=OutcomeKind.errored if technical else OutcomeKind.declined,
        charge_id=charge_id, decline_code=code, visa_category=category, advice_code=advice,
        amount_minor=amount_minor if charge_id else None,
        currency=currency.upper() if charge_id else None,
    )  # fmt: skip


def _failure_result(error: stripe.StripeError) -> ChargeResult:
    """Every error but a card error and a reused key."""
    if isinstance(error, stripe.APIConnectionError):
        return ChargeResult(outcome=OutcomeKind.unknown)
    status = error.http_status or 0
    if isinstance(error, stripe.RateLimitError) or status == 429:
        return ChargeResult(outcome=OutcomeKind.errored, decline_code="rate_limited")
    if status == 409:
        return ChargeResult(outcome=OutcomeKind.unknown)
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        # Our configuration, not the card: nothing was captured. Said once per call so
        # an operator sees it; the key itself never is.
        log.error("stripe refused our credentials (%s)", type(error).__name__)
        return ChargeResult(outcome=OutcomeKind.errored, decline_code="processor_unavailable")
    if isinstance(error, stripe.APIError) or status >= 500:
        return ChargeResult(outcome=OutcomeKind.errored, decline_code="api_error")
    if isinstance(error, stripe.InvalidRequestError):
        # An unknown or detached payment method, an amount Stripe refuses: sending the
        # same request again cannot help.
        return ChargeResult(outcome=OutcomeKind.declined, decline_code=error.code)
    return ChargeResult(outcome=OutcomeKind.unknown)
