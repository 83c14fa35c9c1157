"""Live status over Server-Sent Events: ``GET /v1/accounts/{id}/events`` and
``GET /v1/payments/{id}/events``.

The model: each event is one payment status change, ``data:`` a ``StatusEvent`` and
``id:`` its journal id, read from the account's status stream (``payportal.live``),
which the publisher fills only from committed journal rows. Ids grow per account, so
resuming is "everything above ``Last-Event-ID``". Rules:

- A connection sends only ids above the last it sent (or the client's
  ``Last-Event-ID``): no duplicates, even if a stream held a re-published entry.
- No gaps: when the stream no longer holds everything after the resume point (trimmed,
  expired, or an in-process stream after a restart), the missing part is read from the
  journal itself before the stream takes over.
- Without ``Last-Event-ID``, the account endpoint starts at "now" and the payment
  endpoint at the payment's creation, so a client that subscribes after ``POST
  /v1/payments`` still sees ``processing`` and whatever followed.
- The payment endpoint is the account stream filtered to one payment. Authorization is
  the other routes': a payer sees only their accounts; anything else is 404.
- Keep-alive: aiohttp-sse's ``: ping`` comment every ``PING_INTERVAL_S``.
- An app without ``STATUS_STREAMS`` (no publisher runs for it) answers these routes 404.
- A stopping server ends its streams at once (``on_shutdown``) instead of waiting for
  clients that would never leave; EventSource reconnects with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

from aiohttp import web
from aiohttp_sse import sse_response

from payportal.live import (
    StatusStreams,
    journal_last_id,
    journal_payment_start,
    journal_status_after,
)

from . import ids
from .auth import authenticate, authorize_account
from .errors import not_found, parameter_invalid
from .typedefs import STORE

__all__ = [
    "EVENT_ID_MAX", "LIVE_WAIT_S", "STATUS_STREAMS", "account_events",
    "end_streams_on_shutdown", "last_event_id",
    "parse_event_id", "payment_events", "serve_status_stream",
]  # fmt: skip

# Set by whoever runs the status publisher (``payportal serve``, tests): the same
# streams the publisher appends to.
STATUS_STREAMS: web.AppKey[StatusStreams] = web.AppKey("status_streams")
# How long one wait for new entries lasts before the connection is checked again; a
# client that went away is noticed within this time. Tests shorten it.
LIVE_WAIT_S: web.AppKey[float] = web.AppKey("live_wait_s")
LIVE_WAIT_S_DEFAULT: Final = 5.0
# The handlers of the streams open now, ended by ``end_open_streams`` when the app stops.
_OPEN_STREAMS: web.AppKey[set[asyncio.Task[object]]] = web.AppKey("open_status_streams")
# Proxies and mobile networks drop connections idle for 30-60 s; 15 s keeps them open.
PING_INTERVAL_S: Final = 15.0
LAST_EVENT_ID: Final = "Last-Event-ID"
# Event ids are journal ids: the database's signed 64-bit keys.
EVENT_ID_MAX: Final = 2**63 - 1
_EVENT_ID: Final = re.compile(r"[0-9]{1,19}")


def parse_event_id(raw: str) -> int | None:
    """An event id as this API sends them (a journal id: ASCII digits, 0 to
    ``EVENT_ID_MAX``), or None. ``str.isdigit`` would take "²" and "٣", which ``int``
    refuses or reads; and a number past the database's 64-bit ids fails only once the
    stream has been answered 200."""
    value = raw.strip()
    if _EVENT_ID.fullmatch(value) is None:
        return None
    number = int(value)
    return number if number <= EVENT_ID_MAX else None


def last_event_id(request: web.Request) -> int | None:
    """The ``Last-Event-ID`` a reconnecting EventSource sent (None: a first connection);
    400 for anything that is not an id we could have sent, before the stream starts."""
    raw = request.headers.get(LAST_EVENT_ID)
    if raw is None or not raw.strip():
        return None
    value = parse_event_id(raw)
    if value is None:
        raise parameter_invalid(
            LAST_EVENT_ID,
            f"Last-Event-ID must be an event id we sent: an integer from 0 to {EVENT_ID_MAX}.",
        )
    return value


def _streams(request: web.Request) -> StatusStreams:
    streams = request.app.get(STATUS_STREAMS)
    if streams is None:
        # An app assembled without a publisher (some tests, tools) has no live status:
        # answered like a route it does not serve, never as a server error.
        raise not_found(None, "route")
    return streams


async def account_events(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request)
    account_id = request.match_info["id"]
    await authorize_account(request, principal, account_id)
    streams = _streams(request)
    newest = await journal_last_id(request.app[STORE].engine, account_id)
    if newest == 0:
        raise not_found("id", "account")
    after = last_event_id(request)
    return await serve_status_stream(
        request, streams, account_id, None, newest if after is None else after
    )


async def payment_events(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request)
    payment_id = request.match_info["id"]
    account_id = ids.account_of(payment_id, "pay")
    if account_id is None:
        raise not_found("id", "payment")
    await authorize_account(request, principal, account_id)
    streams = _streams(request)
    created = await journal_payment_start(request.app[STORE].engine, account_id, payment_id)
    if created is None:
        raise not_found("id", "payment")
    after = max(created - 1, last_event_id(request) or 0)
    return await serve_status_stream(request, streams, account_id, payment_id, after)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def serve_status_stream(
    request: web.Request, streams: StatusStreams, account_id: str, payment_id: str | None,
    after: int,
) -> web.StreamResponse:  # fmt: skip
    """Status events of ``account_id`` (one payment's when ``payment_id``) after journal id
    ``after``, as Server-Sent Events: from the journal first when the live stream may have
    lost them, then live. Used by the API and by the portal's pages."""
    with streams.subscription():  # before the first read: see live/_streams.py
        return await _stream_events(request, streams, account_id, payment_id, after)


async def _stream_events(
    request: web.Request, streams: StatusStreams, account_id: str, payment_id: str | None,
    position: int,
) -> web.StreamResponse:  # fmt: skip
    engine = request.app[STORE].engine
    wait_s = request.app.get(LIVE_WAIT_S, LIVE_WAIT_S_DEFAULT)
    # ``position``: the last journal id this connection has passed (sent or not).
    handler = asyncio.current_task()
    open_streams = request.app.get(_OPEN_STREAMS)
    if open_streams is not None and handler is not None:
        open_streams.add(handler)
    async with sse_response(request, ping_interval=PING_INTERVAL_S) as sse:
        try:
            first = await streams.first_id(account_id)
            if first is None or first > position:
                # The stream may have lost entries after ``position``: the journal has them.
                while True:
                    entries, scanned = await journal_status_after(
                        engine, account_id, position, before_id=first
                    )
                    for entry in entries:
                        if payment_id is None or entry.payment == payment_id:
                            await sse.send(entry.data.decode(), id=str(entry.id))
                    if scanned == position:
                        break
                    position = scanned
            while not _gone(request):
                for entry in await streams.wait_after(account_id, position, wait_s):
                    if entry.id <= position:
                        continue
                    position = entry.id
                    if payment_id is None or entry.payment == payment_id:
                        await sse.send(entry.data.decode(), id=str(entry.id))
        except ConnectionResetError:
            pass  # the client went away; it resumes with Last-Event-ID
        finally:
            if open_streams is not None and handler is not None:
                open_streams.discard(handler)
    return sse


def end_streams_on_shutdown(app: web.Application) -> None:
    """Make ``app``'s open streams end when it stops: their handlers are cancelled in
    ``on_shutdown``, before the runner waits for in-flight requests."""
    app[_OPEN_STREAMS] = set()

    async def end_open_streams(app: web.Application) -> None:
        for handler in list(app[_OPEN_STREAMS]):
            handler.cancel()

    app.on_shutdown.append(end_open_streams)
