"""The front door's application: routes from the table, one middleware, resources.

The middleware does two things for every request: it gives the request an id
(``X-Request-Id``, taken from the client when sane, else generated) that is bound into
structlog's context — so every log line of the request carries it — and returned in the
response headers; and it turns every failure into the contract's error shape
(``errors.ApiError``; ``Overloaded`` → 429 with Retry-After; a client that left, or was
cut off as too slow, before its body arrived → logged as abandoned; anything unexpected
→ 500 ``api_error``, logged with its traceback and never with a request body).
Outside it, ``connections.connection_phase_middleware`` tells the connection guard when a
request's headers are in and when its handler is done (only the request counter of
``payportal.metrics`` sits further out).

Inside it, ``ratelimit.rate_limit_middleware`` applies the per-address and per-principal
limits and the login lockout, so its 429s take the same shape.

Resources live in ``cleanup_ctx``: a processor adapter the app created itself is closed,
and charges still in flight when the server stops are awaited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import structlog
from aiohttp import web

from payportal.actors import Overloaded, ShardRouter
from payportal.config import Settings
from payportal.metrics.http import install_metrics
from payportal.persistence import Store, directory
from payportal.processors import ProcessorAdapter

from . import ids
from .auth import Authenticator
from .cached import ImmutableRows
from .connections import connection_phase_middleware
from .errors import ApiError, not_found
from .events import end_streams_on_shutdown
from .gateway import Gateway
from .methods import PaymentMethods
from .ratelimit import RateLimits, install_rate_limits, rate_limit_middleware
from .routes import ROUTE_TABLE
from .typedefs import (
    AUTHENTICATOR,
    CLOCK_MS,
    GATEWAY,
    IN_FLIGHT,
    METHODS,
    PROCESSOR,
    PROFILES,
    ROUTER,
    ROUTES,
    SETTINGS,
    STORE,
    TASKS,
)

__all__ = ["PAGE_ERRORS", "create_app"]

log = structlog.get_logger("payportal.http")
# Asked before a debug line is built: through structlog's lazy proxy even a line that is
# filtered out costs a bound logger per request.
_DEBUG_LOGGER: Final = logging.getLogger("payportal.http")

REQUEST_ID_HEADER: Final = "X-Request-Id"
# A client's request id is kept only if it is short and plain: it goes into every log line.
_REQUEST_ID_OK: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Charges in flight when the server stops get this long to record their outcome.
SHUTDOWN_GRACE_S: Final = 20.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Set by ``payportal.web``: turns an error answered to a browser page into an HTML page
# (it returns API responses unchanged), so pages never show the API's JSON.
PAGE_ERRORS: web.AppKey[Callable[[web.Request, web.Response], web.Response]] = web.AppKey(
    "page_errors"
)


def _error_response(error: ApiError) -> web.Response:
    return web.Response(
        status=error.status, body=error.encode(), content_type="application/json",
        headers=error.headers,
    )  # fmt: skip


def _http_error(error: web.HTTPException) -> ApiError:
    if error.status == 404:
        return not_found(None, "route")
    if error.status == 405:
        # RFC 9110 requires the methods the resource does answer; aiohttp put them in Allow.
        allow = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return ApiError(405, "invalid_request_error", "method_not_allowed", error.reason,
                        headers=allow)  # fmt: skip
    if error.status == 413:
        return ApiError(413, "invalid_request_error", "parameter_invalid", "Body too large.")
    return ApiError(error.status, "invalid_request_error", "parameter_invalid", error.reason)


def _logged_path(request: web.Request) -> str:
    """The path as logged: a one-time link's token (``/reset/{token}``) is a secret, so
    such a path is logged as its route."""
    resource = request.match_info.route.resource
    if resource is not None and "{token}" in resource.canonical:
        return resource.canonical
    return request.path


def _failed(request: web.Request) -> web.Response:
    log.exception("request_failed", method=request.method, path=_logged_path(request))
    return _error_response(ApiError(
        500, "api_error", "api_error",
        "Something went wrong on our side; retry with the same Idempotency-Key.",
    ))  # fmt: skip


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = supplied if _REQUEST_ID_OK.fullmatch(supplied) else f"req_{uuid.uuid4().hex}"
    started = time.perf_counter()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except ApiError as error:
            response = _error_response(error)
        except Overloaded as error:
            seconds = max(1, math.ceil(error.retry_after_ms / 1000))
            response = _error_response(ApiError(
                429, "rate_limit_error", "rate_limited",
                "Too many requests in flight; retry after the Retry-After delay.",
                headers={"Retry-After": str(seconds)},
            ))  # fmt: skip
        except web.HTTPException as error:
            if error.status < 400:
                raise
            response = _error_response(_http_error(error))
        except asyncio.CancelledError:
            raise
        except ConnectionResetError as error:
            if not _client_gone(request):
                response = _failed(request)
            else:
                # The client left (or was cut off as too slow) before its body arrived:
                # not our failure, and nobody will read this answer.
                log.info("request_abandoned", method=request.method, path=_logged_path(request),
                         error=type(error).__name__)  # fmt: skip
                response = _error_response(ApiError(
                    400, "invalid_request_error", "parameter_invalid",
                    "The connection closed before the request arrived.",
                ))  # fmt: skip
        except Exception:
            response = _failed(request)
        page_errors = request.app.get(PAGE_ERRORS)
        if page_errors is not None and response.status >= 400:
            response = page_errors(request, response)  # type: ignore[arg-type]
        response.headers[REQUEST_ID_HEADER] = request_id
        # Every request is counted and timed in /metrics; the log has the ones that went
        # wrong, and all of them only at debug (thousands of lines a second at peak).
        if response.status >= 400 or _DEBUG_LOGGER.isEnabledFor(logging.DEBUG):
            (log.info if response.status >= 400 else log.debug)(
                "request", method=request.method, path=_logged_path(request),
                status=response.status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )  # fmt: skip
        return response


def create_app(
    *,
    router: ShardRouter,
    store: Store,
    settings: Settings | None = None,
    processor: ProcessorAdapter | None = None,
    clock_ms: Callable[[], int] | None = None,
    charge_timeout_ms: int | None = None,
    rate_limits: RateLimits | None = None,
) -> web.Application:
    """The API as an aiohttp application around a shard router and a store.

    ``processor`` is the adapter the gateway charges through (the caller owns it); when
    None and ``settings`` name the sandbox, the app opens one to the local sandbox port
    and closes it on cleanup. ``clock_ms`` is for tests and future time-based features.
    ``rate_limits`` (the caller closes it) replaces the limiter built from ``settings``.
    """
    # The limiter sits inside the error middleware, so its 429s get the contract's shape;
    # the connection guard's marks (headers in, handler done) wrap everything.
    app = web.Application(
        middlewares=[connection_phase_middleware, request_middleware, rate_limit_middleware]
    )
    app[ROUTER] = router
    app[STORE] = store
    app[SETTINGS] = settings
    app[CLOCK_MS] = clock_ms or (lambda: time.time_ns() // 1_000_000)
    app[AUTHENTICATOR] = Authenticator(store)
    app[ROUTES] = ROUTE_TABLE
    app[TASKS] = set()
    install_rate_limits(app, settings, rate_limits)
    install_metrics(app)
    owned: ProcessorAdapter | None = None
    if processor is None and settings is not None and settings.processor == "sandbox":
        from payportal.processors.sandbox_client import SandboxProcessor

        # Opens no connection until the first charge, inside the running loop.
        processor = owned = SandboxProcessor.from_settings(settings)
    elif processor is None and settings is not None and settings.processor == "stripe":
        from payportal.processors.stripe import StripeProcessor

        processor = owned = StripeProcessor.from_settings(settings)
    app[PROCESSOR] = processor

    methods = app[METHODS] = PaymentMethods(store.engine)

    async def profile(account_id: str) -> directory.AccountProfile | None:
        return await directory.account_profile(store.engine, account_id)

    app[PROFILES] = ImmutableRows(profile)
    app[IN_FLIGHT] = set()
    options = {} if charge_timeout_ms is None else {"charge_timeout_ms": charge_timeout_ms}
    app[GATEWAY] = Gateway(router, processor, methods.token_for, **options)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        yield
        tasks = list(app[TASKS])
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
        if owned is not None:
            await owned.close()  # type: ignore[attr-defined]

    app.cleanup_ctx.append(resources)
    # Streams never end by themselves; a stop must not wait for their clients.
    end_streams_on_shutdown(app)
    for route in ROUTE_TABLE:
        app.router.add_route(route.method, ids.routed(route.path), route.handler)
    return app
