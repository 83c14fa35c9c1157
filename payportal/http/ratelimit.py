"""Rate limits per client address and per principal, and the payer login lockout.

Model: every limit below is a ``limits`` item counted with the **moving-window** strategy:
each hit is a timestamp, and a request is allowed while fewer than N hits fall in the last
window. Chosen over the sliding-window counter because it is exact — the counter
approximates from two fixed windows, which is fine for traffic shaping but not for a
security rule such as "10 failed logins in 15 minutes" — and because the oldest hit in the
window gives a true ``Retry-After``. Its cost, one list entry per hit, is small at these
limits (at most a few thousand entries per key). The counters live in Redis when
``PAYPORTAL_REDIS_URL`` is set, so every front-door process shares them, and in the
library's in-process memory storage otherwise.

Rules:
- Health, readiness and metrics endpoints and processor callbacks are never limited:
  probes must see the truth, and callbacks are authenticated by signature — throttling
  them would only delay money.
- Every other request is counted per principal (merchant API key or payer session), and,
  unless the merchant sent it, per client address. The address is the TCP peer;
  ``X-Forwarded-For`` is believed only from ``PAYPORTAL_TRUSTED_PROXIES``. IPv6 clients
  are counted per /64, which is what one subscriber is routed and can rotate through.
- Money-moving POSTs (payments, refunds) have stricter limits: against card testing, a
  payer's payments are also counted per billing account and per address.
- ``POST /v1/payer/sessions``: 10 failed attempts for one email within 15 minutes lock
  that email for 30 minutes; while locked even the right password is refused. The
  answer is the same 429 whether or not the email exists, and is decided before the
  password is checked. A success clears the email's failures. An address with too many
  failures (over any emails) is refused too. Emails are stored as a keyed hash (HMAC) and
  logged masked.
- Over a limit → 429 ``rate_limit_error`` / ``rate_limited`` with ``Retry-After``: the
  whole seconds after which the oldest counted hit has left the window. A refused hit is not
  counted, so hammering does not extend the wait.
- If the counter storage fails (Redis down), requests are let through and the failure is
  logged: an outage of the limiter must not become an outage of payments.
- The merchant's limits are traffic shaping on the hot path of every API call, not a
  security rule, so they are counted in each front-door process's memory
  (``LocalRateLimiter``, GCRA: no list per hit, no round trip): N processes let the
  merchant through N times the budget. Everything a payer or an anonymous client is
  counted on stays exact and shared.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

import msgspec
import structlog
from aiohttp import web
from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from payportal.config import Settings
from payportal.persistence.sealing import blind_index

from .auth import Principal
from .errors import ApiError
from .typedefs import AUTHENTICATOR, RATE_LIMITS, STORE

__all__ = [
    "KEY_PREFIX",
    "RateLimits",
    "client_address",
    "email_key",
    "install_rate_limits",
    "rate_limit_middleware",
]

log = structlog.get_logger("payportal.http.ratelimit")

# Redis keys start with this, so the limiter's keys are easy to find and never collide
# with the status streams or sessions in the same database.
KEY_PREFIX: Final = "payportal:rl"

# -- the limits ---------------------------------------------------------------------------------

# Per client address, for everything but the merchant: 10 requests a second is far more
# than a payer's browser or app makes (status arrives over SSE, not polling) and leaves
# room for an office of payers behind one NAT; a scraper or a flood wants much more.
ADDRESS_REQUESTS: Final = RateLimitItemPerMinute(600)
# Per payer: 2 a second sustained is a person tapping through the app quickly.
PAYER_REQUESTS: Final = RateLimitItemPerMinute(120)
# The merchant (all of its API keys): 100 a second, Stripe's live-mode default, enough for
# an ERP's bulk sync. Its address is not limited: the key is its identity, and its batch
# jobs run from one host.
MERCHANT_REQUESTS: Final = RateLimitItemPerMinute(6_000)
# Merchant payments and refunds: half its budget, so a runaway charge loop cannot also
# starve its reads.
MERCHANT_MONEY_POSTS: Final = RateLimitItemPerMinute(3_000)
# Card testing is many small charges with many cards. A payer pays a few invoices, and
# after a decline retries with another card or two: 20 attempts an hour is ample for that
# and useless for testing a list of stolen cards.
PAYER_MONEY_POSTS: Final = RateLimitItemPerHour(20)
# The same per billing account (whoever of its payers pays), so several payer logins on
# one account do not multiply the budget.
ACCOUNT_PAYMENTS: Final = RateLimitItemPerHour(10)
# The same per address (payers only): several payers of one office may pay from one NAT.
ADDRESS_MONEY_POSTS: Final = RateLimitItemPerHour(30)
# Login: PCI DSS 8.3.4 asks for a lockout after at most 10 failures, for at least 30 min.
LOGIN_FAILURES_PER_EMAIL: Final = RateLimitItemPerMinute(10, 15)
LOGIN_LOCKOUT: Final = RateLimitItemPerMinute(1, 30)
# Credential stuffing tries many emails from one address: 30 failures in 15 minutes is
# more than a room of people mistyping and less than any list of stolen passwords.
LOGIN_FAILURES_PER_ADDRESS: Final = RateLimitItemPerMinute(30, 15)

LOGIN_PATH: Final = "/v1/payer/sessions"
# (method, canonical route) of the POSTs that move money.
MONEY_ROUTES: Final = frozenset({
    ("POST", "/v1/payments"),
    ("POST", "/v1/payments/{id}/refunds"),
})  # fmt: skip
EXEMPT_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
EXEMPT_PREFIXES: Final = ("/v1/processors/", "/v1/metrics/")
# IPv6 clients are counted per network of this size (one subscriber's allocation).
IPV6_PREFIX_LENGTH: Final = 64

TOO_MANY_REQUESTS: Final = "Too many requests; retry after the Retry-After delay."
TOO_MANY_LOGINS: Final = "Too many failed logins; try again after the Retry-After delay."

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class LocalRateLimiter:
    """The generic cell rate algorithm (a token bucket) in one process's memory: a key may
    take ``item.amount`` hits at once and then one per ``period / amount``. Over time
    that is ``amount`` a period; a burst after a quiet spell can put up to
    ``2 × amount − 1`` into one window of a period, as with Stripe's token buckets, which
    is what traffic shaping wants. One float per key, O(1) per hit."""

    # Keys idle this long (their next hit would be allowed in full) are dropped.
    SWEEP_EVERY_HITS: Final = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._arrival: dict[tuple[str, ...], float] = {}
        self._hits = 0

    def hit(self, item: RateLimitItem, *identifiers: str) -> float:
        """Count one hit and return 0, or return the seconds until one is allowed (the
        refused hit is not counted)."""
        period_s = item.get_expiry()
        interval_s = period_s / item.amount
        now = self._clock()
        key = (item.namespace, str(item.amount), *identifiers)
        arrival = max(self._arrival.get(key, now), now)
        wait_s = arrival - now - (period_s - interval_s)
        if wait_s > 0:
            return wait_s
        self._arrival[key] = arrival + interval_s
        self._hits += 1
        if self._hits % self.SWEEP_EVERY_HITS == 0:
            self._arrival = {k: v for k, v in self._arrival.items() if v > now}
        return 0.0


def rate_limited(retry_after_s: int, message: str = TOO_MANY_REQUESTS) -> ApiError:
    return ApiError(
        429, "rate_limit_error", "rate_limited", message,
        headers={"Retry-After": str(retry_after_s)},
    )  # fmt: skip


class RateLimits:
    """The counters and the rules over them. ``clock`` (unix seconds) turns a window's
    reset time into ``Retry-After``; a test that moves it moves the library's clock too."""

    def __init__(
        self,
        storage: Storage,
        *,
        trusted_proxies: Sequence[Network] = (),
        clock: Callable[[], float] = time.time,
        close: Callable[[], Awaitable[None]] | None = None,
        scale: int = 1,
    ) -> None:
        assert scale >= 1
        self.storage = storage
        self.trusted_proxies = tuple(trusted_proxies)
        self.scale = scale
        self._limiter = MovingWindowRateLimiter(storage)
        self._clock = clock
        self._close = close
        self.local = LocalRateLimiter()

    @classmethod
    def in_memory(
        cls, *, trusted_proxies: Sequence[Network] = (), clock: Callable[[], float] = time.time
    ) -> RateLimits:
        storage = MemoryStorage(wrap_exceptions=True)
        return cls(storage, trusted_proxies=trusted_proxies, clock=clock)

    @classmethod
    def on_redis(
        cls, url: str, *, key_prefix: str = KEY_PREFIX, trusted_proxies: Sequence[Network] = (),
        clock: Callable[[], float] = time.time,
    ) -> RateLimits:  # fmt: skip
        """Counters shared by every process that uses the same Redis and prefix."""
        import redis.asyncio

        pool = redis.asyncio.ConnectionPool.from_url(url)
        storage = RedisStorage(
            "async+" + url.replace("unix://", "redis+unix://", 1), implementation="redispy",
            key_prefix=key_prefix, wrap_exceptions=True,
            connection_pool=pool,  # type: ignore[arg-type]
        )  # fmt: skip
        return cls(storage, trusted_proxies=trusted_proxies, clock=clock, close=pool.aclose)

    @classmethod
    def from_settings(cls, settings: Settings | None) -> RateLimits:
        trusted = settings.trusted_proxies if settings is not None else ()
        if settings is not None and settings.redis_url is not None:
            limits = cls.on_redis(settings.redis_url, trusted_proxies=trusted)
        else:
            limits = cls.in_memory(trusted_proxies=trusted)
        limits.scale = settings.rate_limits_scale if settings is not None else 1
        return limits

    def scaled(self, item: RateLimitItem) -> RateLimitItem:
        """A request-rate limit times ``PAYPORTAL_RATE_LIMITS_SCALE`` (load tests on
        loopback raise it). The login lockout is never scaled."""
        if self.scale == 1:
            return item
        return type(item)(item.amount * self.scale, item.multiples, item.namespace)

    async def close(self) -> None:
        if self._close is not None:
            await self._close()
        # The memory storage expires old hits in a background task of its own.
        timer = getattr(self.storage, "timer", None)
        if timer is not None and not timer.done():
            timer.cancel()

    # -- counting ---------------------------------------------------------------------------

    async def hit(self, item: RateLimitItem, *identifiers: str, message: str = TOO_MANY_REQUESTS
                  ) -> None:  # fmt: skip
        """Count one hit, or raise 429 if the window is full (the hit is then not counted)."""
        try:
            if await self._limiter.hit(item, *identifiers):
                return
            retry_after_s = await self._retry_after_s(item, *identifiers)
        except StorageError as error:
            _storage_failed(error)
            return
        raise rate_limited(retry_after_s, message)

    async def refuse_if_full(self, item: RateLimitItem, *identifiers: str, message: str) -> None:
        """Raise 429 if the window is full; count nothing."""
        try:
            if await self._limiter.test(item, *identifiers):
                return
            retry_after_s = await self._retry_after_s(item, *identifiers)
        except StorageError as error:
            _storage_failed(error)
            return
        raise rate_limited(retry_after_s, message)

    async def remaining(self, item: RateLimitItem, *identifiers: str) -> int:
        try:
            stats = await self._limiter.get_window_stats(item, *identifiers)
        except StorageError as error:
            _storage_failed(error)
            return item.amount
        return stats.remaining

    async def clear(self, item: RateLimitItem, *identifiers: str) -> None:
        try:
            await self._limiter.clear(item, *identifiers)
        except StorageError as error:
            _storage_failed(error)

    async def _retry_after_s(self, item: RateLimitItem, *identifiers: str) -> int:
        stats = await self._limiter.get_window_stats(item, *identifiers)
        # The window includes its edge: at exactly the reset time the hit is still in
        # it, so the answer is the first whole second after.
        return max(1, math.floor(stats.reset_time - self._clock()) + 1)

    def hit_local(self, item: RateLimitItem, *identifiers: str) -> None:
        """``hit`` counted in this process only (``LocalRateLimiter``)."""
        wait_s = self.local.hit(item, *identifiers)
        if wait_s > 0:
            raise rate_limited(max(1, math.ceil(wait_s)))

    # -- the login lockout --------------------------------------------------------------------

    async def guard_login(self, request: web.Request, handler: Handler, address: str
                          ) -> web.StreamResponse:  # fmt: skip
        email = await _login_email(request)
        if email is None:  # the handler answers 400
            return await handler(request)
        email_id = email_key(request, email)
        # Decided before the password is looked at, and without knowing whether the email
        # exists: a locked email answers the same, right password or not, known or not.
        await self.refuse_if_full(LOGIN_LOCKOUT, "login-lock", email_id, message=TOO_MANY_LOGINS)
        await self.refuse_if_full(
            LOGIN_FAILURES_PER_ADDRESS, "login-address", address, message=TOO_MANY_LOGINS
        )
        # Counted before the check, so parallel guesses cannot outrun the count; a success
        # clears it below.
        try:
            await self.hit(LOGIN_FAILURES_PER_EMAIL, "login-email", email_id)
        except ApiError:
            raise await self._lock(email, email_id, address) from None
        try:
            response = await handler(request)
        except ApiError as error:
            if error.status == 401:
                await self._login_failed(email, email_id, address)
            raise
        if response.status < 300:
            await self.clear(LOGIN_FAILURES_PER_EMAIL, "login-email", email_id)
        return response

    async def _login_failed(self, email: str, email_id: str, address: str) -> None:
        # Already full: the next attempt from there is refused anyway.
        with contextlib.suppress(ApiError):
            await self.hit(LOGIN_FAILURES_PER_ADDRESS, "login-address", address)
        if await self.remaining(LOGIN_FAILURES_PER_EMAIL, "login-email", email_id) <= 0:
            await self._lock(email, email_id, address)

    async def _lock(self, email: str, email_id: str, address: str) -> ApiError:
        try:
            await self.hit(LOGIN_LOCKOUT, "login-lock", email_id)
        except ApiError as already:  # a parallel attempt locked it first
            return already
        retry_after_s = LOGIN_LOCKOUT.get_expiry()
        try:
            retry_after_s = await self._retry_after_s(LOGIN_LOCKOUT, "login-lock", email_id)
        except StorageError as error:
            _storage_failed(error)
        log.warning("login_locked", email=mask_email(email), address=address,
                    retry_after_s=retry_after_s)  # fmt: skip
        return rate_limited(retry_after_s, TOO_MANY_LOGINS)


def _storage_failed(error: StorageError) -> None:
    log.error("rate_limit_storage_failed", error=type(error.storage_error).__name__)


def mask_email(email: str) -> str:
    """``a***@example.com``: enough to correlate log lines, not enough to learn the address."""
    local, at, domain = email.partition("@")
    return f"{local[:1]}***{at}{domain}"


class _LoginFields(msgspec.Struct):
    email: str = ""


class _PaymentFields(msgspec.Struct):
    account: str = ""


async def _login_email(request: web.Request) -> str | None:
    try:
        fields = msgspec.json.decode(await request.read() or b"{}", type=_LoginFields)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None  # the handler answers it
    email = fields.email.strip().lower()  # as the handler looks it up
    return email or None


async def _payment_account(request: web.Request, payer: Principal) -> str | None:
    """The billing account a payer's payment is for, if it is theirs: counting another
    account would let anyone with a login spend that account's budget and block its
    payers."""
    # aiohttp keeps the body read here for the handler's own read.
    try:
        fields = msgspec.json.decode(await request.read() or b"{}", type=_PaymentFields)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None  # the handler answers it
    if not fields.account:
        return None
    owns = await request.app[AUTHENTICATOR].payer_owns(payer.id, fields.account)
    return fields.account if owns else None


# -- who is calling, and from where -----------------------------------------------------------


def client_address(request: web.Request, trusted_proxies: Sequence[Network]) -> str:
    """The client's address as counted: the TCP peer, or — when the peer is a trusted
    proxy — the nearest untrusted address in ``X-Forwarded-For`` (read right to left,
    since each proxy appends what it saw and only the right end is ours)."""
    peer = request.remote or ""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer or "unknown"
    if not _trusted(address, trusted_proxies):
        return _bucket(address)
    hops = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")
    for hop in reversed([h.strip() for h in hops if h.strip()]):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            break  # a forged or broken entry: count as the last proxy that was believed
        if not _trusted(address, trusted_proxies):
            return _bucket(address)
    return _bucket(address)


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
             trusted_proxies: Sequence[Network]) -> bool:  # fmt: skip
    return any(address in network for network in trusted_proxies)


def _bucket(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX_LENGTH}", strict=False))
    return str(address)


async def _principal(request: web.Request) -> Principal | None:
    """The verified caller, if the request carries a valid bearer credential (the
    handler still authenticates; a bad one is its 401 to answer)."""
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return await request.app[AUTHENTICATOR].principal_for(credential.strip())


def _canonical(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


# -- the middleware and its installation ---------------------------------------------------


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    limits = request.app.get(RATE_LIMITS)
    path = request.path
    if limits is None or path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES):
        return await handler(request)
    principal = await _principal(request)
    money = (request.method, _canonical(request)) in MONEY_ROUTES
    login = request.method == "POST" and path == LOGIN_PATH
    # Narrowest first: a request refused by a strict limit has not used the broad ones.
    if principal is not None and principal.is_merchant:
        if money:
            limits.hit_local(limits.scaled(MERCHANT_MONEY_POSTS), "merchant-money")
        limits.hit_local(limits.scaled(MERCHANT_REQUESTS), "merchant")
        if not login:  # the merchant's address counts for nothing else
            return await handler(request)
    address = client_address(request, limits.trusted_proxies)
    if principal is None or not principal.is_merchant:
        if money:
            if principal is not None:
                account = await _payment_account(request, principal)
                if account is not None:
                    await limits.hit(limits.scaled(ACCOUNT_PAYMENTS), "account-payments", account)
                await limits.hit(limits.scaled(PAYER_MONEY_POSTS), "payer-money", principal.id)
            await limits.hit(limits.scaled(ADDRESS_MONEY_POSTS), "address-money", address)
        if principal is not None:
            await limits.hit(limits.scaled(PAYER_REQUESTS), "payer", principal.id)
        await limits.hit(limits.scaled(ADDRESS_REQUESTS), "address", address)
    if login:
        return await limits.guard_login(request, handler, address)
    return await handler(request)


def email_key(request: web.Request, email: str) -> str:
    """What the limits count an address under, in Redis: keyed (the database's index
    key), since an unkeyed hash of an address is undone by hashing a list of addresses.
    The API and the portal's sign-in share it, so one lock holds for both."""
    return blind_index(request.app[STORE].engine, "login.email", email)


def install_rate_limits(
    app: web.Application, settings: Settings | None, rate_limits: RateLimits | None = None
) -> None:
    """Give ``app`` its limiter: ``rate_limits`` when given (the caller closes it), else
    one built from ``settings`` and closed on cleanup."""
    if rate_limits is not None:
        app[RATE_LIMITS] = rate_limits
        return
    owned = app[RATE_LIMITS] = RateLimits.from_settings(settings)

    async def close(app: web.Application) -> AsyncIterator[None]:
        yield
        await owned.close()

    app.cleanup_ctx.append(close)
