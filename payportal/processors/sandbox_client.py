"""The gateway's side of the sandbox: ``SandboxProcessor``, a ``ProcessorAdapter`` over HTTP.

One shared ``aiohttp.ClientSession`` per adapter (connections are reused), a timeout on
every call, and at most ``concurrency_max`` calls in flight (an ``asyncio.Semaphore``),
so a slow processor makes callers wait here instead of opening sockets without bound.
How answers map to outcomes:

| the sandbox answered | outcome |
|---|---|
| 200 | ``succeeded``; ``requires_action`` (with ``next_action``) for a 3-D Secure challenge |
| 402 card error | ``declined`` with its codes; ``errored`` if technical (``processing_error``) |
| 400 / 404 (e.g. an unknown token) | ``declined``: sending it again cannot help |
| 409 (the key is still being decided) | ``unknown``: ask again by inquiry |
| 422 (the key was used with another body) | raises ``ProcessorRequestError``: our bug |
| 429, 5xx | ``errored``: nothing captured, send again under the same key |
| a timeout, a dropped or refused connection, an unreadable 200 | ``unknown`` |

TLS: an https:// URL is verified against the system's CAs (``SSL_CERT_FILE`` honoured)
plus ``ca_file`` (``PAYPORTAL_TLS_CA_FILE``, e.g. the development CA); verification is
never turned off. A certificate that does not verify is a refused connection, so the
outcome is ``unknown`` and the payment waits for an inquiry, never a guess.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, TypeVar

import aiohttp
import msgspec

from payportal.engine import OutcomeKind
from payportal.engine.retry_policy import TECHNICAL_CODES
from payportal.outgoing_tls import https_context

from ._settlement import Payout, SettlementLine, SettlementReport
from .adapter import ChargeResult, InquiryStatus, NextAction, ProcessorRequestError, RefundResult

if TYPE_CHECKING:
    from payportal.config import Settings

__all__ = ["SandboxProcessor"]

# Long enough for the sandbox's injected latency in development, short enough that a
# stuck call does not hold a payment in ``processing`` for long.
TIMEOUT_MS_DEFAULT: Final = 10_000
# Charges in flight at once: at a processor's few hundred ms a charge, this many
# connections carry a few thousand charges a second.
CONCURRENCY_MAX_DEFAULT: Final = 1_024


class _ChargeWire(msgspec.Struct, kw_only=True):
    id: str
    amount: int
    currency: str
    status: str
    decline_code: str | None = None
    visa_category: int | None = None
    advice_code: str | None = None
    next_action: NextAction | None = None


class _ChargeList(msgspec.Struct, kw_only=True):
    data: list[_ChargeWire]


class _RefundWire(msgspec.Struct, kw_only=True):
    id: str
    charge: str
    amount: int
    currency: str


class _TokenWire(msgspec.Struct, kw_only=True):
    token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class _ErrorWire(msgspec.Struct, kw_only=True):
    type: str | None = None
    code: str | None = None
    message: str = ""
    decline_code: str | None = None
    charge: str | None = None
    visa_category: int | None = None
    advice_code: str | None = None


class _SettlementList(msgspec.Struct, kw_only=True):
    data: list[SettlementLine]
    covers_from: int = 0


class _PayoutList(msgspec.Struct, kw_only=True):
    data: list[Payout]


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorWire


_R = TypeVar("_R")


class _Timeout(Exception):
    """No answer in time, or the connection went away: the outcome is unknown."""


class SandboxProcessor:
    """``ProcessorAdapter`` for the sandbox. Use as ``async with`` or call ``close``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        concurrency_max: int = CONCURRENCY_MAX_DEFAULT,
        session: aiohttp.ClientSession | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``ca_file``: a CA trusted besides the system's for an HTTPS ``base_url`` (the
        development CA of ``payportal dev-cert``)."""
        assert timeout_ms > 0
        assert concurrency_max > 0
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._concurrency_max = concurrency_max
        self._semaphore = asyncio.Semaphore(concurrency_max)
        self._session = session
        self._owns_session = session is None
        self._ca_file = ca_file

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxProcessor:
        """The sandbox at ``settings.sandbox_url``, trusting ``PAYPORTAL_TLS_CA_FILE``."""
        return cls(settings.sandbox_url, ca_file=settings.tls_ca_file)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop, as aiohttp requires.
        if self._session is None:
            https = self._base_url.startswith("https:")
            context = https_context(self._ca_file) if https else True  # True: verify
            connector = aiohttp.TCPConnector(limit=self._concurrency_max, ssl=context)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _request(
        self, method: str, path: str, *, json: object = None, params: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        async with self._semaphore:
            try:
                async with self._client().request(
                    method, self._base_url + path, json=json, params=params, timeout=self._timeout
                ) as response:
                    return response.status, await response.read()
            except (TimeoutError, aiohttp.ClientError):
                # No trustworthy answer (timeout, refused or dropped connection, a broken
                # response): the request may or may not have been acted on.
                raise _Timeout from None

    # -- ProcessorAdapter -------------------------------------------------------------------

    async def charge(
        self, token: str, amount_minor: int, currency: str, idempotency_key: str,
        metadata: Mapping[str, str] | None = None, *, off_session: bool = False,
        return_url: str | None = None,
    ) -> ChargeResult:  # fmt: skip
        body: dict[str, object] = {
            "token": token,
            "amount": amount_minor,
            "currency": currency,
            "idempotency_key": idempotency_key,
        }
        if metadata:
            body["metadata"] = dict(metadata)
        if off_session:
            body["off_session"] = True
        if return_url:
            body["return_url"] = return_url
        try:
            status, raw = await self._request("POST", "/v1/charges", json=body)
        except _Timeout:
            return ChargeResult(outcome=OutcomeKind.unknown)
        if status == 200:
            try:
                return _charge_result(msgspec.json.decode(raw, type=_ChargeWire))
            except msgspec.MsgspecError:
                # Something was answered 200 that we cannot read: it may have captured.
                return ChargeResult(outcome=OutcomeKind.unknown)
        error = _error_of(raw)
        if status == 402:
            technical = error.code in TECHNICAL_CODES or error.decline_code in TECHNICAL_CODES
            return ChargeResult(
                outcome=OutcomeKind.errored if technical else OutcomeKind.declined,
                charge_id=error.charge,
                decline_code=error.decline_code or error.code,
                visa_category=error.visa_category,
                advice_code=error.advice_code,
                amount_minor=amount_minor if error.charge else None,
                currency=currency.upper() if error.charge else None,
            )
        return _result_of_failure(status, error)

    async def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        body = {"charge": charge_id, "amount": amount_minor, "idempotency_key": idempotency_key}
        try:
            status, raw = await self._request("POST", "/v1/refunds", json=body)
        except _Timeout:
            return RefundResult(outcome=OutcomeKind.unknown, charge_id=charge_id)
        if status == 200:
            try:
                refund = msgspec.json.decode(raw, type=_RefundWire)
            except msgspec.MsgspecError:
                return RefundResult(outcome=OutcomeKind.unknown, charge_id=charge_id)
            return RefundResult(
                outcome=OutcomeKind.succeeded,
                refund_id=refund.id,
                charge_id=refund.charge,
                amount_minor=refund.amount,
                currency=refund.currency,
            )
        error = _error_of(raw)
        outcome = _result_of_failure(status, error).outcome
        return RefundResult(outcome=outcome, charge_id=charge_id, failure_code=error.code)

    async def inquire(self, idempotency_key: str) -> ChargeResult:
        try:
            status, raw = await self._request(
                "GET", "/v1/charges", params={"idempotency_key": idempotency_key}
            )
        except _Timeout:
            return ChargeResult(outcome=OutcomeKind.unknown)
        if status != 200:
            return _result_of_failure(status, _error_of(raw))
        try:
            charges = msgspec.json.decode(raw, type=_ChargeList).data
        except msgspec.MsgspecError:
            return ChargeResult(outcome=OutcomeKind.unknown)
        if not charges:
            return ChargeResult(outcome=OutcomeKind.errored, inquiry=InquiryStatus.not_found)
        assert len(charges) == 1, "one charge per idempotency key"
        result = _charge_result(charges[0])
        inquiry = {
            OutcomeKind.succeeded: InquiryStatus.succeeded,
            OutcomeKind.declined: InquiryStatus.declined,
            OutcomeKind.requires_action: InquiryStatus.requires_action,
        }.get(result.outcome, InquiryStatus.processing)
        return msgspec.structs.replace(result, inquiry=inquiry)

    # -- settlement reports (for reconciliation) ----------------------------------------------

    async def settlement_report(self) -> SettlementReport:
        """Every settlement line and payout the processor reports. Raises
        ``ProcessorRequestError`` when it cannot answer (reconciliation then waits for its
        next run: nothing is matched against a partial report)."""
        lines = await self._report("/v1/settlements", _SettlementList)
        payouts = await self._report("/v1/payouts", _PayoutList)
        return SettlementReport(lines=lines.data, payouts=payouts.data,
                                covers_from=lines.covers_from)  # fmt: skip

    async def _report(self, path: str, type_: type[_R]) -> _R:
        try:
            status, raw = await self._request("GET", path)
        except _Timeout:
            raise ProcessorRequestError(0, None, f"no answer for {path}") from None
        if status != 200:
            error = _error_of(raw)
            raise ProcessorRequestError(status, error.code, error.message)
        try:
            return msgspec.json.decode(raw, type=type_)
        except msgspec.MsgspecError as error:
            raise ProcessorRequestError(status, None, f"unreadable {path}: {error}") from None

    # -- sandbox only -----------------------------------------------------------------------

    async def tokenize_test_card(
        self, number: str, *, exp_month: int = 12, exp_year: int | None = None, cvc: str = "123"
    ) -> str:
        """A token for a test card, the way the payer's browser gets one. For tests and
        the demo seed only: the portal itself never handles a card number."""
        body = {
            "type": "card",
            "number": number,
            "exp_month": exp_month,
            # Three years ahead, like a freshly issued card.
            "exp_year": exp_year or dt.date.today().year + 3,
            "cvc": cvc,
        }
        status, raw = await self._request("POST", "/v1/tokens", json=body)
        if status != 200:
            error = _error_of(raw)
            raise ProcessorRequestError(status, error.code, error.message)
        return msgspec.json.decode(raw, type=_TokenWire).token


def _charge_result(charge: _ChargeWire) -> ChargeResult:
    outcome = {
        "succeeded": OutcomeKind.succeeded,
        "failed": OutcomeKind.declined,
        "requires_action": OutcomeKind.requires_action,
    }.get(charge.status, OutcomeKind.unknown)
    return ChargeResult(
        outcome=outcome,
        charge_id=charge.id,
        decline_code=charge.decline_code,
        visa_category=charge.visa_category,
        advice_code=charge.advice_code,
        amount_minor=charge.amount,
        currency=charge.currency,
        next_action=charge.next_action if charge.status == "requires_action" else None,
    )


def _error_of(raw: bytes) -> _ErrorWire:
    try:
        return msgspec.json.decode(raw, type=_ErrorEnvelope).error
    except msgspec.MsgspecError:
        return _ErrorWire()


def _result_of_failure(status: int, error: _ErrorWire) -> ChargeResult:
    """Every answer but 200 and 402."""
    if status == 409:
        return ChargeResult(outcome=OutcomeKind.unknown)
    if status == 422:
        raise ProcessorRequestError(status, error.code, error.message)
    if status == 429:
        return ChargeResult(outcome=OutcomeKind.errored, decline_code="rate_limited")
    if status >= 500:
        return ChargeResult(outcome=OutcomeKind.errored, decline_code="api_error")
    # 400 / 404: the request cannot succeed as it is (an unknown or used-up token).
    return ChargeResult(outcome=OutcomeKind.declined, decline_code=error.code)
