"""Typed keys for what the application and each request carry (aiohttp ``AppKey``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from payportal.actors import ShardRouter
    from payportal.config import Settings
    from payportal.persistence import Store
    from payportal.persistence.directory import AccountProfile
    from payportal.processors import ProcessorAdapter

    from .auth import Authenticator, Principal
    from .cached import ImmutableRows
    from .gateway import Gateway
    from .methods import PaymentMethods
    from .ratelimit import RateLimits
    from .routes import RouteSpec

__all__ = [
    "AUTHENTICATOR",
    "CLOCK_MS",
    "GATEWAY",
    "IN_FLIGHT",
    "METHODS",
    "PRINCIPAL",
    "PROCESSOR",
    "PROFILES",
    "RATE_LIMITS",
    "ROUTER",
    "ROUTES",
    "SETTINGS",
    "STORE",
    "TASKS",
]

ROUTER: web.AppKey[ShardRouter] = web.AppKey("router")
STORE: web.AppKey[Store] = web.AppKey("store")
SETTINGS: web.AppKey[Settings | None] = web.AppKey("settings")
PROCESSOR: web.AppKey[ProcessorAdapter | None] = web.AppKey("processor")
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")
CLOCK_MS: web.AppKey[Callable[[], int]] = web.AppKey("clock_ms")
RATE_LIMITS: web.AppKey[RateLimits] = web.AppKey("rate_limits")
ROUTES: web.AppKey[list[RouteSpec]] = web.AppKey("routes")
# Work that must finish even if its client goes away (a charge and its outcome).
TASKS: web.AppKey[set[Any]] = web.AppKey("tasks")
# Saved payment methods this process has used (immutable but for deletion).
METHODS: web.AppKey[PaymentMethods] = web.AppKey("methods")
# Account profiles this process has read (immutable).
PROFILES: web.AppKey[ImmutableRows[str, AccountProfile]] = web.AppKey("profiles")
# (account id, scoped idempotency key) of the payments this process is charging now.
IN_FLIGHT: web.AppKey[set[tuple[str, str]]] = web.AppKey("in_flight")

# Set by the auth step of each handler; the request's authenticated caller.
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
