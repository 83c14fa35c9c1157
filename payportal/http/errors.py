"""Errors: every failure the API answers, as one shape and one mapping.

Hierarchy::

    ApiError                      {"error": {type, code, message, param?, decline_code?}}
    ├── invalid_request_error     400 parameter_invalid / parameter_missing /
    │                                 idempotency_key_missing / <engine rule>;
    │                             404 resource_missing (unknown id, or another principal's)
    ├── authentication_error      401
    ├── card_error                402 card_declined (+ decline_code, + payment)
    ├── idempotency_error         409 idempotency_key_in_use / 422 idempotency_key_reused
    ├── rate_limit_error          429 (+ Retry-After)
    └── api_error                 5xx: our fault; safe to retry with the same key

``from_rejection`` maps the engine's ``Rejection`` (checked in its declared precedence
order) to this shape; ``from_validation`` maps a msgspec decode error, naming the field
in ``param``. The error middleware in ``app`` turns every exception into a response.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from payportal.engine import Rejection

from .schemas import ErrorBody, ErrorResponse

__all__ = [
    "ApiError",
    "authentication_failed",
    "from_rejection",
    "from_validation",
    "not_found",
    "parameter_invalid",
    "parameter_missing",
]

_ENCODER: Final = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type_: str,
        code: str,
        message: str,
        *,
        param: str | None = None,
        decline_code: str | None = None,
        payment: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(
            type=type_, code=code, message=message, param=param, decline_code=decline_code,
            payment=payment,
        )  # fmt: skip
        self.headers = headers or {}

    def encode(self) -> bytes:
        return _ENCODER.encode(ErrorResponse(error=self.body))


def not_found(param: str | None = None, what: str = "object") -> ApiError:
    return ApiError(
        404, "invalid_request_error", "resource_missing", f"No such {what}.", param=param
    )


def parameter_invalid(param: str | None, message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", "parameter_invalid", message, param=param)


def parameter_missing(param: str, message: str | None = None) -> ApiError:
    return ApiError(
        400, "invalid_request_error", "parameter_missing",
        message or f"Missing required parameter: {param}.", param=param,
    )  # fmt: skip


def authentication_failed(message: str = "Invalid or missing credentials.") -> ApiError:
    return ApiError(
        401, "authentication_error", "authentication_required", message,
        headers={"WWW-Authenticate": 'Bearer realm="payportal"'},
    )  # fmt: skip


# msgspec names the offending field as `field` (missing / unknown) or at `$.path`.
_FIELD: Final = re.compile(r"field `([^`]+)`")
_PATH: Final = re.compile(r"at `\$\.?([^`]*)`")


def from_validation(error: msgspec.MsgspecError, *, where: str = "body") -> ApiError:
    """A request that does not decode: 400, with ``param`` naming the field."""
    message = str(error)
    if not isinstance(error, msgspec.ValidationError):
        return parameter_invalid(None, f"The request {where} is not valid JSON.")
    path = _PATH.search(message)
    field = _FIELD.search(message)
    parts = [p for p in ((path.group(1) if path else ""), field.group(1) if field else "") if p]
    param = ".".join(parts) or None
    if "missing required field" in message:
        assert param is not None
        return parameter_missing(param, f"Missing required parameter: {param}.")
    return parameter_invalid(param, message)


# Engine rules that name a field the client sent wrong: the contract's parameter_invalid.
_FIELD_RULES: Final = frozenset({
    Rejection.amount_must_be_positive,
    Rejection.currency_must_be_valid,
    Rejection.idempotency_key_must_be_valid,
    Rejection.service_period_must_be_ordered,
    Rejection.description_must_be_valid,
    Rejection.allocation_amount_must_be_positive,
    Rejection.allocation_invoice_must_be_unique,
    Rejection.allocations_must_not_exceed_amount,
    Rejection.currency_must_match_account,
    Rejection.allocation_must_not_exceed_invoice_remaining,
    Rejection.refund_must_not_exceed_refundable,
})  # fmt: skip

_NOT_FOUND: Final = {
    Rejection.account_not_found: ("account", "account"),
    Rejection.invoice_not_found: ("invoice", "invoice"),
    Rejection.payment_not_found: ("id", "payment"),
    Rejection.attempt_not_found: ("id", "attempt"),
    Rejection.payment_method_not_found: ("payment_method", "payment method"),
}


def from_rejection(rejection: Rejection, *, not_found_param: str | None = None) -> ApiError:
    """The engine said no. ``exists_with_different_*`` is an id or key used for another
    request (422); a missing reference is 404 (``not_found_param`` names where the
    request referred to it); a broken field rule is 400 parameter_invalid; a state the
    object is not in is 400 with the rule's name as the code."""
    message = rejection.value.replace("_", " ").capitalize() + "."
    param = rejection.param
    if rejection.name.startswith("exists_with_different_"):
        return ApiError(
            422, "idempotency_error", "idempotency_key_reused",
            f"This idempotency key was used with a different request ({rejection.value}).",
            param=param,
        )  # fmt: skip
    if rejection in _NOT_FOUND:
        default_param, what = _NOT_FOUND[rejection]
        return not_found(not_found_param or default_param, what)
    if rejection in _FIELD_RULES:
        return parameter_invalid(param, f"{rejection.value}: {message}")
    return ApiError(400, "invalid_request_error", rejection.value, message, param=param)
