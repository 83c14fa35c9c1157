"""Slow clients are cut off: header and body deadlines, and a cap on connections per address.

aiohttp reads a request's line and headers with no deadline at all on a new connection,
and waits for a body as long as the client likes: a few hundred clients trickling bytes
(slowloris) hold as many connections and handlers open for ever. The front door is
therefore served by ``GuardedSite``, which puts ``_GuardedProtocol`` — a thin asyncio
protocol that forwards every call — in front of each of aiohttp's connection handlers.

The model: a connection is in one of three phases.

- Awaiting headers: from its opening, or from the first byte after an idle keep-alive
  pause, the request line and headers must be complete within ``header_timeout_s``.
  Otherwise the connection is closed (with a 408 if the client had started a request).
- In a request: ``connection_phase_middleware``, one of the app's outermost middlewares,
  marks when a request's headers are parsed and when its handler is done. While a body is
  still arriving, the client must send something at least every ``body_stall_s`` (a
  stall, not a total: a large upload on a slow link is fine); time aiohttp spends with
  reading paused, because the handler has not read what came, does not count. Otherwise
  the connection is closed, and the handler's read fails as if the client had left.
- Idle between requests: aiohttp's keep-alive timeout applies, as before; a reverse
  proxy's pooled connections are not cut.

One peer address (IPv6 by /64, as the rate limits count) may hold at most
``per_address`` connections at a time in one process; the next is answered 503 and
closed, while other addresses are served. Peers in ``PAYPORTAL_TRUSTED_PROXIES`` are
exempt from the cap: every client comes through their connections, and which client
is behind one is not known before its request is read. The deadlines apply to all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from yarl import URL

__all__ = ["ClientLimits", "GuardedSite", "connection_phase_middleware"]

log = structlog.get_logger("payportal.http.connections")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Addresses of one IPv6 host: a /64 is what one subscriber is given (as ratelimit.py).
IPV6_PREFIX_LENGTH: Final = 64

_REQUEST_TIMEOUT: Final = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)
_TOO_MANY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Length: 0\r\n\r\n"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimits:
    """How long a client may take, and how many connections one address may hold."""

    header_timeout_s: float = 10.0
    body_stall_s: float = 30.0
    per_address: int = 256
    trusted_proxies: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        assert self.header_timeout_s > 0, self
        assert self.body_stall_s > 0, self
        assert self.per_address > 0, self

    @classmethod
    def from_settings(cls, settings: Any) -> ClientLimits:
        return cls(
            header_timeout_s=settings.header_timeout_ms / 1000,
            body_stall_s=settings.body_timeout_ms / 1000,
            per_address=settings.connections_per_address,
            trusted_proxies=tuple(settings.trusted_proxies),
        )


def _bucket(peer: Any, trusted_proxies: Sequence[Network]) -> str | None:
    """The address a connection counts against; None: not counted (a trusted proxy, or
    no IP peer at all)."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in trusted_proxies):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX_LENGTH}", strict=False))
    return str(address)


class _Phase(Enum):
    headers = "headers"
    request = "request"
    idle = "idle"


class _GuardedProtocol(asyncio.Protocol):
    """One connection: aiohttp's handler behind the deadlines (see the module)."""

    def __init__(self, server: web.Server, limits: ClientLimits, peers: Counter[str],
                 loop: asyncio.AbstractEventLoop) -> None:  # fmt: skip
        self._server = server
        self._limits = limits
        self._peers = peers
        self._loop = loop
        self._inner: RequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        self._bucket: str | None = None
        self._phase = _Phase.headers
        self._timer: asyncio.TimerHandle | None = None
        self._received = False  # any byte of the request awaited now
        self._last_received = 0.0
        self._payload: StreamReader | None = None
        self._pipelined = False  # bytes of a next request came during this one

    # -- asyncio.Protocol, forwarded to aiohttp's handler ---------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        bucket = _bucket(transport.get_extra_info("peername"), self._limits.trusted_proxies)
        if bucket is not None:
            if self._peers[bucket] >= self._limits.per_address:
                log.info("connection_refused", reason="too_many_connections", address=bucket)
                transport.write(_TOO_MANY)
                transport.close()
                return
            self._peers[bucket] += 1
            self._bucket = bucket
        self._inner = self._server()
        self._inner.connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        self._last_received = self._loop.time()
        if self._phase is _Phase.idle:
            self._await_headers()
        elif self._phase is _Phase.request and (self._payload is None or self._payload.is_eof()):
            self._pipelined = True
        self._received = True
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None  # as aiohttp's handler: the transport closes its side too

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._bucket is not None:
            self._peers[self._bucket] -= 1
            if self._peers[self._bucket] <= 0:
                del self._peers[self._bucket]
            self._bucket = None
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None

    # -- phases ------------------------------------------------------------------------

    def request_started(self, request: web.BaseRequest) -> None:
        """The request's headers are parsed (called by the middleware)."""
        self._phase = _Phase.request
        self._pipelined = False
        self._cancel_timer()
        payload = request.content
        if request.body_exists and not payload.is_eof():
            self._payload = payload
            self._last_received = self._loop.time()
            self._timer = self._loop.call_later(self._limits.body_stall_s, self._body_check)

    def request_finished(self) -> None:
        """The request's handler is done (called by the middleware)."""
        self._cancel_timer()
        self._payload = None
        if self._pipelined:
            self._await_headers()  # the next request started arriving meanwhile
        else:
            self._phase = _Phase.idle

    def _await_headers(self) -> None:
        self._cancel_timer()
        self._phase = _Phase.headers
        self._received = False
        self._timer = self._loop.call_later(self._limits.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        self._timer = None
        transport = self._transport
        if self._phase is not _Phase.headers or transport is None or transport.is_closing():
            return
        log.info("connection_closed", reason="headers_too_slow", address=self._bucket)
        if self._received:
            # A client that started a request is told why; a silent one (a browser's
            # preconnect, say) is just closed, as an idle connection would be.
            transport.write(_REQUEST_TIMEOUT)
        transport.close()

    def _body_check(self) -> None:
        self._timer = None
        transport = self._transport
        payload = self._payload
        if self._phase is not _Phase.request or payload is None or payload.is_eof():
            return
        if transport is None or transport.is_closing():
            return
        now = self._loop.time()
        if not transport.is_reading():
            # aiohttp paused reading until the handler takes what came: not the client's
            # stall. The clock restarts when reading does.
            self._last_received = now
        stalled_s = now - self._last_received
        if stalled_s >= self._limits.body_stall_s:
            log.info("connection_closed", reason="body_stalled", address=self._bucket)
            transport.close()
            return
        self._timer = self._loop.call_later(self._limits.body_stall_s - stalled_s,
                                            self._body_check)  # fmt: skip

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@web.middleware
async def connection_phase_middleware(request: web.Request, handler: Handler
                                      ) -> web.StreamResponse:  # fmt: skip
    """Tells a guarded connection when its request's headers are in and when its handler
    is done; a no-op on a connection ``GuardedSite`` did not accept. It wraps everything
    that may wait on the client (reading the body), so it sits outside those middlewares."""
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    if not isinstance(guard, _GuardedProtocol):
        return await handler(request)
    guard.request_started(request)
    try:
        return await handler(request)
    finally:
        guard.request_finished()


class GuardedSite(web.BaseSite):
    """A TCP site like ``web.TCPSite`` whose connections are guarded (see the module).
    The runner's app must have ``connection_phase_middleware``."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, limits: ClientLimits,
                 reuse_port: bool | None = None, backlog: int = 128,
                 ssl_context: ssl.SSLContext | None = None) -> None:  # fmt: skip
        super().__init__(runner, backlog=backlog, ssl_context=ssl_context)
        if connection_phase_middleware not in runner.app.middlewares:
            # Without the marks every request would count as headers still arriving.
            raise RuntimeError("the app needs connection_phase_middleware among its middlewares")
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._limits = limits
        self._peers: Counter[str] = Counter()
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return str(URL.build(scheme=scheme, host=self._host or "0.0.0.0", port=self.port))  # noqa: S104

    @property
    def open_connections(self) -> dict[str, int]:
        """Connections held now, by counted address."""
        return dict(self._peers)

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        limits, peers = self._limits, self._peers
        self._server = listening = await loop.create_server(
            lambda: _GuardedProtocol(server, limits, peers, loop), self._host, self._port,
            backlog=self._backlog, reuse_port=self._reuse_port, ssl=self._ssl_context,
        )  # fmt: skip
        sockets = listening.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
