"""Open-loop HTTP load generator for the end-to-end benchmark.

Open loop: request ``i`` of a step is due at ``t0 + i / rate`` whatever happened to the
ones before, and its latency counts from that scheduled time, not from when it was sent.
A server that stalls therefore shows its stall in every request due meanwhile (no
coordinated omission), and a generator that falls behind its schedule is charged to the
server too, so it reports its own send lag and CPU to show that it did not.

Cheap per request, so it is not the bottleneck: uvloop, raw ``asyncio.Protocol``
connections, ``httptools`` to parse responses, request bytes built from pre-encoded
parts (one join per request), HTTP/1.1 keep-alive with one request in flight per
connection, and a pool that opens connections only when every open one is busy, up to
``connections_max``; past that, due requests queue here (and their wait counts).

What counts: a payment only when it ``succeeded``. A 200 saying ``succeeded`` counts at
once; a 200/202 still ``processing`` is followed by polling ``GET /v1/payments/{id}``
(backing off from 5 ms to 500 ms) until it ends, and its latency runs until then. 402s
and terminal failures are declines; anything else is an error, by kind. Every payment
carries a fresh ``Idempotency-Key``.

It runs as a child process of the benchmark, one JSON command a line on stdin
(``configure``, ``step``, ``quit``) and one JSON answer a line on stdout:

    python -m benchmarks.loadgen
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import httptools
import msgspec

from ._keys import make_picker
from ._stats import StepSamples, percentile

__all__ = ["LoadGenerator", "LoadSpec", "StepSpec"]

PAY, POLL, READ = 0, 1, 2
# Payment statuses that are still on their way: follow them.
FOLLOW: Final = frozenset({"processing"})
SUCCEEDED: Final = frozenset({"succeeded", "partially_refunded", "refunded", "disputed"})
# Declined, or waiting minutes for a scheduled retry: not a success within a run.
DECLINED: Final = frozenset({"requires_payment_method", "failed", "canceled", "retry_scheduled"})
POLL_FIRST_S: Final = 0.005
TICK_S: Final = 0.001
# Not the event loop's clock: uvloop's is libuv's, cached per iteration at 1 ms steps,
# too coarse for sub-millisecond latencies.
_clock: Final = time.perf_counter
POLL_MAX_S: Final = 0.5


class LoadSpec(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int
    kind: str  # "pay" or "read"
    api_key: str
    accounts: int
    distribution: str = "uniform"  # uniform | zipf | hot
    zipf_s: float = 1.0
    hot_share: float = 0.4
    account_prefix: str
    method_prefix: str
    id_width: int = 6
    amount_minor: int = 100
    connections_max: int = 512
    follow_timeout_s: float = 30.0
    # Unique per process and run: idempotency keys never repeat across steps or processes.
    key_prefix: str = "lg"
    seed: int = 1


class StepSpec(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    rate: float
    duration_s: float
    # How long answers to the step's requests are awaited after its last one was due;
    # what is still open then is counted as a timeout.
    drain_s: float = 10.0
    # Wall-clock start (time.time()) shared by several processes; 0 = right away.
    start_at: float = 0.0


class _PaymentHead(msgspec.Struct):
    id: str = ""
    status: str = ""


_decode_payment = msgspec.json.Decoder(_PaymentHead).decode


class _Request:
    __slots__ = ("data", "due", "kind", "payment_id", "polls", "step")

    def __init__(self, kind: int, data: bytes, due: float, step: int) -> None:
        self.kind = kind
        self.data = data
        self.due = due  # the scheduled time of the original request (loop clock)
        self.step = step
        self.payment_id = ""
        self.polls = 0


class _Connection(asyncio.Protocol):
    __slots__ = ("body", "closed", "gen", "parser", "request", "transport")

    def __init__(self, gen: LoadGenerator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.request: _Request | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, request: _Request) -> None:
        assert self.transport is not None
        self.request = request
        self.body = []
        self.transport.write(request.data)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.abort()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request, self.request = self.request, None
        if request is None:  # an answer nobody asked for: the connection is confused
            self.abort()
            return
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.gen._answered(self, request, self.parser.get_status_code(), body,
                           self.parser.should_keep_alive())  # fmt: skip

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gen._lost(self)


class LoadGenerator:
    """Sends steps of open-loop load to one server; ``run_step`` returns what it saw."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        host = f"{spec.host}:{spec.port}".encode()
        auth = f"Authorization: Bearer {spec.api_key}\r\n".encode()
        self._pay_head = (b"POST /v1/payments HTTP/1.1\r\nHost: " + host + b"\r\n" + auth
                          + b"Content-Type: application/json\r\nIdempotency-Key: ")  # fmt: skip
        self._poll_head = b"GET /v1/payments/"
        self._poll_tail = b" HTTP/1.1\r\nHost: " + host + b"\r\n" + auth + b"\r\n"
        self._key_prefix = spec.key_prefix.encode() + b"-"
        width = spec.id_width
        self._tails: list[bytes] = []
        self._reads: list[bytes] = []
        for i in range(spec.accounts):
            account = f"{spec.account_prefix}{i:0{width}d}"
            if spec.kind == "pay":
                body = (
                    f'{{"account":"{account}","amount":{spec.amount_minor},"currency":"USD",'
                    f'"payment_method":"{spec.method_prefix}{i:0{width}d}"}}'
                ).encode()
                self._tails.append(b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                self._reads.append(b"GET /v1/accounts/" + account.encode() + self._poll_tail)
        self._seq = 0
        self._step = -1
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._open = 0
        self._connecting = 0
        self._waiting: collections.deque[_Request] = collections.deque()
        self._timers: set[asyncio.TimerHandle] = set()
        self._samples = StepSamples(offered_rate=0, duration_s=0)
        self._outstanding = 0
        self._drained: asyncio.Event | None = None
        self._schedule_end = 0.0
        self._first_ok: float | None = None
        self._lags: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- requests ---------------------------------------------------------------------

    def _payment(self, index: int, due: float) -> _Request:
        self._seq += 1
        data = self._pay_head + self._key_prefix + b"%d" % self._seq + self._tails[index]
        return _Request(PAY, data, due, self._step)

    def _read(self, index: int, due: float) -> _Request:
        return _Request(READ, self._reads[index], due, self._step)

    def _poll(self, original: _Request, payment_id: str) -> _Request:
        data = self._poll_head + payment_id.encode() + self._poll_tail
        request = _Request(POLL, data, original.due, original.step)
        request.payment_id = payment_id
        request.polls = original.polls + 1
        return request

    # -- the pool ---------------------------------------------------------------------

    def _dispatch(self, request: _Request) -> None:
        if request.step != self._step:
            return
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                self._send(connection, request)
                return
        self._waiting.append(request)
        if self._connecting < len(self._waiting) and self._open < self.spec.connections_max:
            self._open += 1
            self._connecting += 1
            self._samples.connections_max = max(self._samples.connections_max, self._open)
            assert self._loop is not None
            self._loop.create_task(self._connect())

    def _send(self, connection: _Connection, request: _Request) -> None:
        self._busy.add(connection)
        connection.send(request)

    async def _connect(self) -> None:
        assert self._loop is not None
        try:
            _, connection = await self._loop.create_connection(
                lambda: _Connection(self), self.spec.host, self.spec.port
            )
        except OSError:
            self._connecting -= 1
            self._open -= 1
            if self._waiting:
                self._fail(self._waiting.popleft(), "connect")
            return
        self._connecting -= 1
        self._free(connection)

    def _free(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        while self._waiting:
            request = self._waiting.popleft()
            if request.step == self._step:
                self._send(connection, request)
                return
        self._idle.append(connection)

    def _lost(self, connection: _Connection) -> None:
        self._open -= 1
        self._busy.discard(connection)
        request = connection.request
        connection.request = None
        if request is not None:
            self._fail(request, "connection lost")

    # -- outcomes ---------------------------------------------------------------------

    def _answered(self, connection: _Connection, request: _Request, status: int, body: bytes,
                  keep_alive: bool) -> None:  # fmt: skip
        if keep_alive:
            self._free(connection)
        else:
            self._busy.discard(connection)
            connection.abort()
        if request.step != self._step:
            return
        if request.kind == READ:
            if status == 200:
                self._succeeded(request)
            else:
                self._fail(request, f"HTTP {status}")
            return
        if status in (200, 202):
            try:
                head = _decode_payment(body)
            except msgspec.DecodeError:
                self._fail(request, f"unreadable {status}")
                return
            if head.status in SUCCEEDED:
                self._succeeded(request)
            elif head.status in FOLLOW and head.id:
                self._follow(request, head.id)
            elif head.status in DECLINED:
                self._finish()
                self._samples.declined += 1
            else:
                self._fail(request, f"status {head.status or '?'}")
        elif status == 402:
            self._finish()
            self._samples.declined += 1
        else:
            self._fail(request, f"HTTP {status}")

    def _follow(self, request: _Request, payment_id: str) -> None:
        assert self._loop is not None
        if _clock() - request.due > self.spec.follow_timeout_s:
            self._fail(request, "still processing")
            return
        poll = self._poll(request, payment_id)
        self._samples.follow_ups += 1
        delay = min(POLL_MAX_S, POLL_FIRST_S * 2 ** (poll.polls - 1))
        timer: asyncio.TimerHandle | None = None

        def due() -> None:
            assert timer is not None
            self._timers.discard(timer)
            self._dispatch(poll)

        timer = self._loop.call_later(delay, due)
        self._timers.add(timer)

    def _succeeded(self, request: _Request) -> None:
        now = _clock()
        self._samples.ok += 1
        self._samples.latencies_us.append(int((now - request.due) * 1e6))
        if now <= self._schedule_end:
            if self._first_ok is None:
                self._first_ok = now
            self._samples.ok_in_window += 1
        self._finish()

    def _fail(self, request: _Request, kind: str) -> None:
        if request.step != self._step:
            return
        errors = self._samples.errors
        errors[kind] = errors.get(kind, 0) + 1
        self._finish()

    def _finish(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0 and self._drained is not None:
            self._drained.set()

    # -- a step -----------------------------------------------------------------------

    async def run_step(self, step: StepSpec) -> StepSamples:
        self._loop = asyncio.get_running_loop()
        self._step = step.index
        self._samples = samples = StepSamples(offered_rate=step.rate, duration_s=step.duration_s)
        # Connections kept from the last step count: they are this step's pool too.
        samples.connections_max = self._open
        self._first_ok = None
        self._lags = []
        self._outstanding = 0
        self._drained = None
        rng = random.Random(self.spec.seed * 1_000_003 + step.index)
        picker = make_picker(self.spec.distribution, self.spec.accounts, rng,
                             zipf_s=self.spec.zipf_s, hot_share=self.spec.hot_share)  # fmt: skip
        pick = picker.pick
        make: Callable[[int, float], _Request] = (
            self._payment if self.spec.kind == "pay" else self._read
        )
        delay = step.start_at - time.time() if step.start_at else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        cpu_started = time.process_time()
        t0 = _clock()
        total = max(1, round(step.rate * step.duration_s))
        interval = 1.0 / step.rate
        self._schedule_end = t0 + step.duration_s
        lags = self._lags
        sent = 0
        while sent < total:
            now = _clock()
            due = t0 + sent * interval
            if due > now:
                # At least a tick: the loop's timers have 1 ms steps, and a shorter sleep
                # returns at once, spinning. What fell due meanwhile goes out together.
                await asyncio.sleep(max(due - now, TICK_S))
                now = _clock()
            while sent < total and t0 + sent * interval <= now:
                due = t0 + sent * interval
                # How late this generator is, by its own fault: its event loop woke late.
                lags.append(now - due)
                self._outstanding += 1
                self._dispatch(make(pick(), due))
                sent += 1
        samples.scheduled = sent
        if self._outstanding > 0:
            self._drained = asyncio.Event()
            remaining = self._schedule_end + step.drain_s - _clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), max(0.0, remaining))
        if self._outstanding > 0:
            samples.errors["timeout"] = samples.errors.get("timeout", 0) + self._outstanding
        self._end_step()
        samples.wall_s = _clock() - t0
        samples.cpu_s = time.process_time() - cpu_started
        if self._first_ok is not None:
            samples.window_s = self._schedule_end - self._first_ok
            if samples.window_s < interval:  # one success at the very end: no span to speak of
                samples.window_s = 0.0
        lags = sorted(self._lags)
        samples.send_lag_p99_ms = 1000 * (percentile(lags, 99) or 0.0)
        return samples

    def _end_step(self) -> None:
        """Forget the step: what is still in flight is abandoned (its connection closed,
        so nothing answered later is mistaken for the next step's)."""
        self._step = -1
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._waiting.clear()
        for connection in list(self._busy):
            connection.abort()
        self._busy.clear()
        self._outstanding = 0

    def close(self) -> None:
        self._end_step()
        for connection in self._idle:
            connection.abort()
        self._idle.clear()


class _Command(msgspec.Struct, kw_only=True):
    op: str
    spec: LoadSpec | None = None
    step: StepSpec | None = None


async def _serve_stdin() -> None:
    """The child-process side: commands on stdin, answers on stdout, until ``quit``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    decode = msgspec.json.Decoder(_Command).decode
    encode = msgspec.json.Encoder().encode
    out = sys.stdout.buffer
    generator: LoadGenerator | None = None
    while line := await reader.readline():
        command = decode(line)
        if command.op == "quit":
            break
        if command.op == "configure":
            assert command.spec is not None
            if generator is not None:
                generator.close()
            generator = LoadGenerator(command.spec)
            out.write(b'{"ok":true}\n')
        elif command.op == "step":
            assert generator is not None
            assert command.step is not None
            out.write(encode(await generator.run_step(command.step)) + b"\n")
        out.flush()
    if generator is not None:
        generator.close()


def main() -> None:
    import uvloop

    uvloop.run(_serve_stdin())


if __name__ == "__main__":
    main()
