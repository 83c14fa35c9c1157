"""Redis stopped and started again under load: payments do not notice, and live status
resumes without a gap.

serve keeps its live-status streams and rate-limit counters in a Redis the test started
itself on a free port (no persistence: the restarted Redis is empty). While it is down
the clients keep paying and must get every answer, first time, no resend needed; a
payment's status is read by polling ``GET /v1/payments/{id}`` (what the portal's page
falls back to); the event stream ends and its client reconnects with ``Last-Event-ID``
until Redis is back. Then the stream picks up where the client left off, events of the
outage included (read from the journal, as Redis lost them): every acknowledged
payment's status arrives on it, no event twice. The audit holds as after every fault.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .harness import ACCOUNT, Load, audit, free_port, ok, portal

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

BEFORE = 100  # payments acknowledged before Redis stops
DOWN_S = 3.0
AFTER_S = 2.0
STREAM_CATCH_UP_S = 60.0
RECONNECT_PAUSE_S = 0.5


class Redis:
    """redis-server on a free loopback port, in the foreground, persisting nothing."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Listener:
    """An event-stream client of the account, as a browser's EventSource is: when the
    stream ends it reconnects with the last id it saw."""

    port: int
    api_key: str
    seen: dict[str, set[str]] = field(default_factory=dict)  # payment -> statuses
    # (monotonic time received, journal id)
    received: list[tuple[float, int]] = field(default_factory=list)
    repeated: list[int] = field(default_factory=list)
    connections: int = 0
    last_id: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def first_event_after(self, moment: float) -> float | None:
        with self._lock:
            return next((t for t, _ in self.received if t >= moment), None)

    def missing(self, payment_ids: list[str]) -> list[str]:
        with self._lock:
            return [p for p in payment_ids if p not in self.seen]

    def _run(self) -> None:
        while not self._stop.is_set():
            headers = {"Authorization": f"Bearer {self.api_key}"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = str(self.last_id)
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", f"/v1/accounts/{ACCOUNT}/events", headers=headers)
                response = connection.getresponse()
                self.connections += 1
                if response.status == 200:
                    self._read(response)
            except (OSError, http.client.HTTPException):
                pass  # ended, refused, or quiet past the timeout: reconnect
            finally:
                connection.close()
            self._stop.wait(RECONNECT_PAUSE_S)

    def _read(self, response: http.client.HTTPResponse) -> None:
        buffered = b""
        event_id: int | None = None
        while not self._stop.is_set():
            chunk = response.read1(65_536)
            if not chunk:
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                if line.startswith(b"id:"):
                    event_id = int(line[3:].strip())
                elif line.startswith(b"data:") and event_id is not None:
                    data = json.loads(line[5:])
                    with self._lock:
                        if self.last_id is not None and event_id <= self.last_id:
                            self.repeated.append(event_id)
                        self.last_id = event_id
                        self.received.append((time.monotonic(), event_id))
                        self.seen.setdefault(data["payment"], set()).add(data["status"])
                    event_id = None


def test_redis_stopped_and_restarted_leaves_payments_alone_and_streams_resume(
    tmp_path: Path, scratch_postgres: str
) -> None:
    redis = Redis(tmp_path)
    redis.start()
    try:
        with portal(tmp_path, scratch_postgres, env={"PAYPORTAL_REDIS_URL": redis.url}) as running:
            api_key = re.search(r"API key\s+(sk_\S+)", running.served.banner)
            assert api_key is not None, "no API key in serve's banner"
            running.add_card(running.served.sandbox_port)
            listener = Listener(running.port, api_key.group(1))
            listener.start()
            load = Load(running).start()
            try:
                load.wait_for(BEFORE)
                stopped_at = time.monotonic()
                redis.stop()
                time.sleep(DOWN_S / 2)
                # Polling, the fallback: a payment made while Redis is down reads as usual.
                polled = _poll(running.port, running.session, load.made_since(stopped_at))
                time.sleep(DOWN_S / 2)
                redis.start()
                restarted_at = time.monotonic()
                deadline = restarted_at + STREAM_CATCH_UP_S
                while (back := listener.first_event_after(restarted_at)) is None:
                    assert time.monotonic() < deadline, "the event stream did not resume"
                    time.sleep(0.1)
                time.sleep(AFTER_S)
            finally:
                load.stop()
            acknowledged = list(load.acknowledged)
            deadline = time.monotonic() + STREAM_CATCH_UP_S
            while (missing := listener.missing(acknowledged)) and time.monotonic() < deadline:
                time.sleep(0.2)
            listener.stop()
            during = len(load.made_since(stopped_at)) - len(load.made_since(restarted_at))
            assert during, "no payment was made while Redis was down"
            assert not load.refusals, f"payments were refused: {dict(load.refusals)}"
            assert not missing, f"{len(missing)} payments never appeared on the stream"
            assert not listener.repeated, f"events sent twice: {listener.repeated[:5]}"
            times = [t for t, _ in listener.received]
            silent_s = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
        audit(
            "Redis stopped and restarted",
            load,
            back - restarted_at,
            f"Redis down {restarted_at - stopped_at:.1f} s, {during} payments made meanwhile "
            f"with no request refused; polled {polled}; the event stream reconnected "
            f"{listener.connections - 1} times and delivered {len(listener.received)} events, "
            f"every acknowledged payment's included, none twice, silent at most "
            f"{silent_s:.1f} s; recovery is the first event after the restart",
        )
    finally:
        redis.stop()


def _poll(port: int, session: str, made: list[str]) -> str:
    """Read a payment made during the outage as the portal's page does without a stream."""
    assert made, "no payment was made while Redis was down"
    answer = ok(port, "GET", f"/v1/payments/{made[-1]}", Authorization=f"Bearer {session}")
    assert answer["id"] == made[-1]
    return f"a payment made during the outage read {answer['status']}"
