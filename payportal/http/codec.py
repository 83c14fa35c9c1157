"""Decoding requests and encoding responses with msgspec: the handlers' only I/O helpers.

Bodies are decoded strictly (types as declared, unknown fields rejected); query strings
loosely (``"10"`` is the integer 10, ``"true"`` a boolean), since every value in a URL is
text. A failure is a 400 naming the field in ``param``; a body that is not UTF-8 is a 400
too (msgspec raises ``UnicodeDecodeError`` for it, not one of its own errors).
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web

from .errors import ApiError, from_validation, parameter_invalid

__all__ = ["decode_body", "decode_query", "encode", "not_utf8", "respond"]

T = TypeVar("T")

_ENCODER: Final = msgspec.json.Encoder()
# Bodies larger than this are not a request of this API (the biggest is a payment with
# its allocations); refused before decoding.
BODY_BYTES_MAX: Final = 256 * 1024


def not_utf8(where: str) -> ApiError:
    return parameter_invalid(None, f"The request {where} is not valid UTF-8.")


async def decode_body(request: web.Request, type_: type[T]) -> tuple[T, bytes]:
    """The decoded body and its canonical encoding (for idempotency comparisons)."""
    declared = request.headers.get("Content-Type")
    if declared is not None and not (declared.isascii() and declared.isprintable()):
        # Every body is read as JSON whatever type it declares, but a declaration holding
        # control characters or non-ASCII is no media type at all: refused, as any
        # other malformed part of a request.
        raise parameter_invalid("Content-Type", "The Content-Type header is not a media type.")
    raw = await request.read()
    if len(raw) > BODY_BYTES_MAX:
        raise parameter_invalid(None, "The request body is too large.")
    try:
        value = msgspec.json.decode(raw or b"{}", type=type_)
    except msgspec.MsgspecError as error:
        raise from_validation(error) from None
    except UnicodeDecodeError:
        # ``from None``: the error holds the whole body, which must not travel further.
        raise not_utf8("body") from None
    return value, _ENCODER.encode(value)


def decode_query(request: web.Request, type_: type[T]) -> T:
    values: dict[str, Any] = {}
    for name in request.query:
        items = request.query.getall(name)
        if len(items) != 1:
            raise parameter_invalid(name, f"{name} may be given once.")
        values[name] = items[0]
    try:
        return msgspec.convert(values, type=type_, strict=False)
    except msgspec.MsgspecError as error:
        raise from_validation(error, where="query") from None


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)


def respond(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_ENCODER.encode(value), content_type="application/json")
