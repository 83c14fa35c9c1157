"""Logging for every payportal process: structlog and the standard library's logging
through one pipeline whose output is safe by construction.

The model: structlog's events and the standard library's records (aiohttp's server
log, SQLAlchemy, our stdlib loggers) all end in one stdlib handler, whose
``ProcessorFormatter`` runs the same processors for both. Before anything is rendered,

- exceptions are rendered by ``format_exc_info``: the standard library's traceback,
  frames and source lines but never a frame's local variables. structlog's default
  console renderer prints every frame's locals (through rich or better-exceptions),
  and a request handler's locals hold the raw body: a password, a card token;
- a request the HTTP parser refused is logged with the error's class only: the
  parser's message and traceback quote the request's bytes (a header line and its
  credential);
- ``redact`` replaces the value of every field whose name says it holds a secret or a
  body (``password``, ``token``, ``secret``, ``api_key``, ``authorization``,
  ``cookie``, ``cvc``, ``body`` …), renders bytes as their length only, and masks
  inside all text — messages, values, exception text — card numbers (Luhn-valid runs
  of 13-19 digits), bearer credentials, our secret prefixes (``sk_``, ``pt_``,
  ``whsec_`` …) and ``password=…``-like pairs.

So a careless ``log.info("x", body=raw)`` or an exception whose message quotes a body
renders harmlessly. ``configure_logging`` is idempotent; each process that serves
requests or runs shards calls it once at start.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import structlog
from stdnum import luhn

__all__ = ["REDACTED", "configure_logging", "redact", "redact_text"]

REDACTED: Final = "[redacted]"

# Field names are split into their words (snake_case, kebab-case, dotted); a field is
# secret when one of its words is one of these ...
_SECRET_WORDS: Final = frozenset({
    "password", "passwd", "pwd", "passphrase", "secret", "secrets", "token", "tokens",
    "authorization", "cookie", "cookies", "credential", "credentials", "cvc", "cvv", "csc",
    "pan", "body", "raw", "payload", "signature", "form",
})  # fmt: skip
# ... or when it is one of these names (a lone "key" is a credential; "key_id" is not).
_SECRET_NAMES: Final = frozenset({
    "key", "apikey", "api_key", "secret_key", "private_key", "card", "card_number",
    "number", "data", "set_cookie",
})  # fmt: skip
_SECRET_NAME_ENDINGS: Final = ("_api_key", "_apikey", "_secret_key", "_private_key")
_WORD_SPLIT: Final = re.compile(r"[^a-z0-9]+")

# A run of 13-19 digits, maybe grouped by single spaces or dashes, not part of a longer
# word or number: what a card number looks like in text.
_DIGIT_RUN: Final = re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w]|\.\d)")
_SEPARATORS: Final = re.compile(r"[ -]")
# Unix times in 2000-2039 as ms, µs or ns lead with 0946-2208…; no card network issues
# numbers that start there (Mastercard's 2-series starts at 2221).
_EPOCH_S_MIN: Final = 946_684_800
_EPOCH_S_MAX: Final = 2_208_988_800
# Our credentials and the processor's: API keys, payer/portal/console sessions, reset
# and invitation links, card tokens, webhook secrets; Stripe's restricted keys and its
# Customer ids (sensitive: docs/processors.md "What is sealed").
_PREFIXED: Final = re.compile(r"\b(sk|pt|ps|rs|iv|cs|tok|rk|cus)_[A-Za-z0-9_-]{6,}")
_WEBHOOK_SECRET: Final = re.compile(r"whsec_[A-Za-z0-9+/=_-]+")
_BEARER: Final = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
# "password": "…", 'token': '…', password=…, cvc: 123 in any text (a JSON, repr or
# url-encoded body quoted in a message or an exception).
_PAIR: Final = re.compile(
    r"""(?ix)
    (["']?)\b(password|passwd|passphrase|new_password|current_password|confirm|secret
             |token|api_key|cvc|cvv|csc|authorization|cookie)\1
    (\s*[:=]\s*)
    ("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s&,;}\]]+)
    """
)


def _is_timestamp(digits: str) -> bool:
    return len(digits) in (13, 16, 19) and _EPOCH_S_MIN <= int(digits[:10]) < _EPOCH_S_MAX


def _card_number(match: re.Match[str]) -> str:
    digits = _SEPARATORS.sub("", match.group())
    if 13 <= len(digits) <= 19 and luhn.is_valid(digits) and not _is_timestamp(digits):
        return "[card number]"
    return match.group()


def redact_text(text: str) -> str:
    """``text`` with card numbers, credentials and ``password=…`` values masked."""
    text = _DIGIT_RUN.sub(_card_number, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _WEBHOOK_SECRET.sub("whsec_" + REDACTED, text)
    text = _PREFIXED.sub(lambda m: f"{m.group(1)}_{REDACTED}", text)
    return _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{REDACTED}", text)


def _secret_name(name: object) -> bool:
    words = [word for word in _WORD_SPLIT.split(str(name).lower()) if word]
    joined = "_".join(words)
    if joined in _SECRET_NAMES or joined.endswith(_SECRET_NAME_ENDINGS):
        return True
    return any(word in _SECRET_WORDS for word in words)


def _value(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        # A body, a payload, a hash: none of them is something to read in a log.
        return f"<{len(value)} bytes>"
    if depth < 4 and isinstance(value, Mapping):
        return {k: REDACTED if _secret_name(k) else _value(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple | set | frozenset):
        return [_value(v, depth + 1) for v in value]
    # Anything else is rendered by its repr, which may quote what it holds.
    return redact_text(repr(value))


# Keys structlog's own machinery needs untouched.
_PASSED: Final = frozenset({"event", "level", "timestamp", "logger", "_record", "_from_structlog"})


def redact(_logger: Any, _method: str, event_dict: structlog.typing.EventDict
           ) -> structlog.typing.EventDict:  # fmt: skip
    """structlog processor: secrets and bodies out of every field (see the module)."""
    for key, value in list(event_dict.items()):
        if key == "exc_info":
            continue  # rendered (without locals) and redacted by the processors after it
        if key in _PASSED:
            if isinstance(value, str):
                event_dict[key] = redact_text(value)
            continue
        event_dict[key] = REDACTED if _secret_name(key) else _value(value)
    return event_dict


_HANDLER_NAME: Final = "payportal"
# The HTTP parser's errors (``aiohttp.http_exceptions``): the request was not HTTP, the
# client's fault, and their text quotes the offending bytes — a header line with its
# credential or cookie, whatever followed a control character in it.
_PROTOCOL_ERRORS_MODULE: Final = "aiohttp.http_exceptions"


def _without_request_bytes(record: logging.LogRecord) -> bool:
    """Handler filter: a record of a request the HTTP parser refused keeps the error's
    class and the client's address, not the error's text or a traceback (which quote
    the request), at INFO rather than ERROR."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and type(exc).__module__ == _PROTOCOL_ERRORS_MODULE:
        record.msg = f"{record.getMessage()}: malformed request ({type(exc).__name__})"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def configure_logging(*, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library through the safe pipeline to ``stream``
    (stderr by default). payportal's own loggers log at ``level``; everything else at
    WARNING, as the standard library's default does. Calling it again replaces the
    handler it installed, so it never logs a line twice."""
    stream = stream if stream is not None else sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Exceptions rendered without locals, then everything redacted: structlog's events
    # on their way in, the standard library's records in the formatter's pre-chain.
    safe: list[Any] = [structlog.processors.format_exc_info, redact]
    structlog.configure(
        processors=[
            # Level first: a debug line on a hot path then costs one lookup, not the
            # timestamp, the redaction and the rendering it would have had.
            structlog.stdlib.filter_by_level,
            *shared, structlog.processors.StackInfoRenderer(), *safe,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: structlog.testing.capture_logs must still see every event.
        cache_logger_on_first_use=False,
    )
    renderer = structlog.dev.ConsoleRenderer(
        colors=stream.isatty(),
        # Never reached with exc_info (format_exc_info ran); and never with locals.
        exception_formatter=structlog.dev.plain_traceback,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, *safe],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_without_request_bytes)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("payportal").setLevel(level)
