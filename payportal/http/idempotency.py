"""Idempotent requests (docs/api.md "Idempotency"; brandur's atomic phases, Stripe's rules).

The model: a key is scoped to (principal, account). The first request with a key inserts
an in-flight row in ``idempotency_records``; the database's UNIQUE constraint lets
exactly one request win, however many arrive at once and whichever front door they hit.
The winner runs and stores its response (status and exact bytes); every later request
with the key gets those bytes back, or 409 while the winner is still in flight, or 422
when its request differs. Behind that, the engine holds the same key (``engine_key``)
on the payment, so even a request that slipped past a lost record cannot create a
second payment, and the processor holds the attempt id, so it cannot charge twice.

What is stored: every answer except 400 (validation), 409, 429 and 5xx. Those are not
the request's result: the record is deleted, and a retry with the same key runs again
(which the engine's and the processor's idempotency make safe).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from payportal.persistence import directory

from .auth import Principal
from .errors import ApiError
from .typedefs import STORE, TASKS

__all__ = [
    "IN_FLIGHT_MAX_MS",
    "REPLAYED_HEADER",
    "engine_key",
    "hash_request",
    "idempotency_key",
    "key_in_use",
    "request_hash",
    "run_idempotent",
]

HEADER: Final = "Idempotency-Key"
KEY_LENGTH_MAX: Final = 255
# Set on an answer replayed from a stored one (Stripe's header).
REPLAYED_HEADER: Final = "Idempotent-Replayed"
# An unanswered payment younger than this may still have its first request running in
# some front-door process (409); an older one was left by a process that died and is
# taken over. Longer than any charge can take (the gateway's timeout is 15 s).
IN_FLIGHT_MAX_MS: Final = 60_000
# Statuses whose response is not the request's result (see the module's rules).
_NOT_STORED: Final = frozenset({400, 409, 429})

Operation = Callable[[], Awaitable[tuple[int, bytes, dict[str, str]]]]


def idempotency_key(request: web.Request, *, required: bool) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        if required:
            raise ApiError(
                400, "invalid_request_error", "idempotency_key_missing",
                f"This request moves money: send an {HEADER} header (1-255 printable ASCII).",
                param=HEADER,
            )  # fmt: skip
        return None
    # Printable ASCII (space to tilde), as two C loops rather than one per character.
    if not 1 <= len(key) <= KEY_LENGTH_MAX or not (key.isascii() and key.isprintable()):
        raise ApiError(
            400, "invalid_request_error", "parameter_invalid",
            f"{HEADER} must be 1-255 printable ASCII characters.", param=HEADER,
        )  # fmt: skip
    return key


def key_in_use() -> ApiError:
    return ApiError(
        409, "idempotency_error", "idempotency_key_in_use",
        "A request with this idempotency key is still being processed; retry later.",
        param=HEADER,
    )  # fmt: skip


def engine_key(principal: Principal, key: str) -> str:
    """The key the engine keeps on the payment: the principal's scope plus the client's
    key, hashed when the two together would pass the engine's 255-character limit."""
    scoped = f"{principal.id}:{key}"
    if len(scoped) <= KEY_LENGTH_MAX:
        return scoped
    return f"{principal.id}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def request_hash(request: web.Request, canonical_body: bytes) -> str:
    """What "the same request" means: method, path and the decoded body re-encoded (so
    whitespace and key order do not matter, but every value does)."""
    return hash_request(request.method, request.path, canonical_body)


def hash_request(method: str, path: str, canonical_body: bytes) -> str:
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical_body)
    return digest.hexdigest()


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)  # fmt: skip


async def run_idempotent(
    request: web.Request, *, principal: Principal, account_id: str, key: str, hashed: str,
    operation: Operation,
) -> web.Response:  # fmt: skip
    engine = request.app[STORE].engine
    scope = {"principal": principal.id, "account_id": account_id, "key": key}
    existing = await directory.idempotency_begin(engine, **scope, request_hash=hashed)
    if existing is not None:
        if existing.request_hash != hashed:
            raise ApiError(
                422, "idempotency_error", "idempotency_key_reused",
                "This idempotency key was used with a different request.", param=HEADER,
            )  # fmt: skip
        if existing.status_code is None or existing.response_body is None:
            raise key_in_use()
        return _json(existing.status_code, existing.response_body, {REPLAYED_HEADER: "true"})

    async def run_and_store() -> tuple[int, bytes, dict[str, str]]:
        try:
            status, body, headers = await operation()
        except ApiError as error:
            status, body, headers = error.status, error.encode(), error.headers
            if status in _NOT_STORED or status >= 500:
                await directory.idempotency_abandon(engine, **scope)
                raise
        except BaseException:
            await asyncio.shield(directory.idempotency_abandon(engine, **scope))
            raise
        await directory.idempotency_finish(engine, **scope, status_code=status, response_body=body)
        return status, body, headers

    # The charge and its record must finish even if the client hangs up meanwhile.
    task = asyncio.get_running_loop().create_task(run_and_store())
    tasks = request.app[TASKS]
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    status, body, headers = await asyncio.shield(task)
    return _json(status, body, headers)
