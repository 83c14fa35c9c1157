"""Slow clients are cut off and one address cannot take every connection: the front door's
``GuardedSite`` on a real loopback socket, with raw TCP clients that trickle headers,
stall a body or open one connection too many. The limits come from settings (a few
hundred milliseconds here); a small app with the front door's two outer middlewares
stands in for the API, so the tests need no database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from payportal.config import load_settings
from payportal.http.app import request_middleware
from payportal.http.codec import decode_body, respond
from payportal.http.connections import ClientLimits, GuardedSite, connection_phase_middleware

HEADER_TIMEOUT_MS = 300
BODY_TIMEOUT_MS = 300
# How much later than its deadline a cut may come on a busy shared machine.
SLACK_S = 2.0
OTHER_ADDRESS = "127.0.0.2"  # another loopback address: another client


class Echo(msgspec.Struct):
    text: str


class Served:
    def __init__(self, site: GuardedSite, outcomes: list[str]) -> None:
        self.site = site
        self.port = site.port
        self.outcomes = outcomes  # what the body handler ended with

    async def connect(self, local: str = "127.0.0.1") -> tuple[asyncio.StreamReader,
                                                               asyncio.StreamWriter]:  # fmt: skip
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(local, 0))


def _limits(tmp_path: Path, **env: str) -> ClientLimits:
    settings = load_settings({
        "PAYPORTAL_HEADER_TIMEOUT_MS": str(HEADER_TIMEOUT_MS),
        "PAYPORTAL_BODY_TIMEOUT_MS": str(BODY_TIMEOUT_MS), **env,
    }, cwd=tmp_path)  # fmt: skip
    return ClientLimits.from_settings(settings)


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServeFactory]:
    runners: list[web.AppRunner] = []

    async def start(**env: str) -> Served:
        outcomes: list[str] = []

        async def hello(_: web.Request) -> web.Response:
            return web.Response(text="hello")

        async def slow(_: web.Request) -> web.Response:
            await asyncio.sleep(3 * HEADER_TIMEOUT_MS / 1000)
            return web.Response(text="done")

        async def echo(request: web.Request) -> web.Response:
            try:
                body, _ = await decode_body(request, Echo)
            except BaseException as error:
                outcomes.append(type(error).__name__)
                raise
            outcomes.append("read")
            return respond({"length": len(body.text)})

        app = web.Application(middlewares=[connection_phase_middleware, request_middleware])
        app.router.add_get("/hello", hello)
        app.router.add_get("/slow", slow)
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = GuardedSite(runner, "127.0.0.1", 0, limits=_limits(tmp_path, **env))
        await site.start()
        return Served(site, outcomes)

    yield start
    for runner in runners:
        await runner.cleanup()


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (or a response's end)."""
    return await asyncio.wait_for(reader.read(65_536), timeout=10)


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
                   ) -> bytes:  # fmt: skip
    writer.write(raw)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    return head + await asyncio.wait_for(reader.readexactly(length), timeout=10)


async def _trickle(writer: asyncio.StreamWriter, parts: list[bytes], every_s: float) -> None:
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(every_s)


async def test_a_client_trickling_its_headers_is_cut_off_within_the_header_timeout(
    serve: ServeFactory,
) -> None:
    served = await serve()
    reader, writer = await served.connect()
    started = time.monotonic()
    # One header byte every 50 ms: never done, always "making progress".
    trickling = asyncio.create_task(_trickle(
        writer, [b"GET /hello HTTP/1.1\r\n"] + [b"X"] * 200, every_s=0.05))  # fmt: skip
    answer = await _answer(reader)
    elapsed_s = time.monotonic() - started
    trickling.cancel()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert await _answer(reader) == b""  # and closed
    assert HEADER_TIMEOUT_MS / 1000 * 0.9 <= elapsed_s < HEADER_TIMEOUT_MS / 1000 + SLACK_S
    writer.close()


async def test_many_trickling_and_silent_clients_are_all_cut_off(serve: ServeFactory) -> None:
    served = await serve()
    clients = [await served.connect() for _ in range(40)]
    started = time.monotonic()
    endless = [b"GET / HTTP/1.1\r\nHost: x"] + [b"x"] * 100
    # Half of them trickle a header; the other half send nothing at all.
    tasks = [asyncio.create_task(_trickle(writer, endless, every_s=0.1))
             for _, writer in clients[:20]]
    answers = await asyncio.gather(*(_answer(reader) for reader, _ in clients))
    elapsed_s = time.monotonic() - started
    for task in tasks:
        task.cancel()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers[:20]), answers[:20]
    assert answers[20:] == [b""] * 20  # a silent connection is just closed
    assert elapsed_s < HEADER_TIMEOUT_MS / 1000 + SLACK_S
    for _, writer in clients:
        writer.close()
    await asyncio.sleep(0.05)
    assert served.site.open_connections == {}


async def test_a_body_that_stalls_is_cut_off_and_the_handler_sees_the_client_leave(
    serve: ServeFactory,
) -> None:
    served = await serve()
    reader, writer = await served.connect()
    body = b'{"text": "' + b"a" * 80 + b'"}'
    started = time.monotonic()
    with capture_logs() as logs:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:20])  # fmt: skip
        await writer.drain()
        answer = await _answer(reader)  # then nothing more: a stall
        elapsed_s = time.monotonic() - started
        await asyncio.sleep(0.1)
    assert answer == b""  # cut, mid-request: there is no answer to give
    assert BODY_TIMEOUT_MS / 1000 * 0.9 <= elapsed_s < BODY_TIMEOUT_MS / 1000 + SLACK_S
    assert served.outcomes == ["ConnectionResetError"]
    events = [entry["event"] for entry in logs]
    assert "request_abandoned" in events, logs
    assert "request_failed" not in events, logs  # the client's doing: no traceback
    writer.close()


async def test_slow_but_steady_bodies_long_handlers_and_idle_keep_alive_are_not_cut(
    serve: ServeFactory,
) -> None:
    served = await serve()
    reader, writer = await served.connect()
    body = b'{"text": "' + b"b" * 18 + b'"}'
    head = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    writer.write(head)
    # Three times the stall allowance in all, but never a pause as long as it.
    start = body[:-1]
    await _trickle(writer, [start[i:i + 3] for i in range(0, len(start), 3)], every_s=0.1)
    answer = await _request(reader, writer, body[-1:])
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b'{"length":18}')
    # A handler busy for longer than the header allowance is not the client's delay.
    slow = await _request(reader, writer, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert slow.startswith(b"HTTP/1.1 200 ")
    # Idle between requests (keep-alive) longer than the header allowance: still open.
    await asyncio.sleep(3 * HEADER_TIMEOUT_MS / 1000)
    again = await _request(reader, writer, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 200 ")
    assert served.outcomes == ["read"]
    writer.close()


async def test_one_address_gets_its_cap_of_connections_and_others_are_still_served(
    serve: ServeFactory,
) -> None:
    # Headers may take long here: the connections wait idle while the cap is tested.
    served = await serve(PAYPORTAL_CONNECTIONS_PER_ADDRESS="3",
                         PAYPORTAL_HEADER_TIMEOUT_MS="20000")  # fmt: skip
    held = [await served.connect() for _ in range(3)]
    await asyncio.sleep(0.05)
    assert served.site.open_connections == {"127.0.0.1": 3}

    reader, writer = await served.connect()
    refused = await _answer(reader)
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    assert await _answer(reader) == b""
    writer.close()

    other_reader, other_writer = await served.connect(OTHER_ADDRESS)
    answer = await _request(other_reader, other_writer, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    other_writer.close()
    # One of the three closes: its address may connect again.
    held[0][1].close()
    await asyncio.sleep(0.1)
    reader, writer = await served.connect()
    answer = await _request(reader, writer, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    for _, held_writer in [*held[1:], (reader, writer)]:
        held_writer.close()


async def test_a_trusted_proxy_is_not_capped(serve: ServeFactory) -> None:
    served = await serve(PAYPORTAL_CONNECTIONS_PER_ADDRESS="2",
                         PAYPORTAL_TRUSTED_PROXIES="127.0.0.1/32")  # fmt: skip
    clients = [await served.connect() for _ in range(5)]
    answers = [await _request(r, w, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n") for r, w in clients]
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    assert served.site.open_connections == {}  # not counted
    for _, writer in clients:
        writer.close()


async def test_the_site_refuses_an_app_without_the_phase_middleware(tmp_path: Path) -> None:
    app: Any = web.Application(middlewares=[request_middleware])
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        with pytest.raises(RuntimeError, match="connection_phase_middleware"):
            GuardedSite(runner, "127.0.0.1", 0, limits=_limits(tmp_path))
    finally:
        await runner.cleanup()
