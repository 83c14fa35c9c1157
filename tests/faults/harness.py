"""What the fault tests share: a real ``payportal serve`` on a scratch PostgreSQL database,
clients paying through it from threads, and the invariants checked from the database
once the fault is over.

The clients behave as a careful integration would: every payment has its own
Idempotency-Key, and a request that got no answer (connection refused or reset, a 5xx,
409 while the first send is still in flight) is sent again with the same key and body.
Every answer that names a payment (2xx, or a 402 decline carrying ``error.payment``) is
recorded as acknowledged; those are what must never be lost or doubled.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loadtests.run_and_check import _wait_for_projection, check_invariants
from payportal.persistence import Store, tables
from tests.serve_process import Served, free_port, serving

ACCOUNT = "acct_demo_acme"
# How many times the tests that repeat their fault do so (make soak sets more).
ROUNDS = int(os.environ.get("PAYPORTAL_TEST_FAULT_ROUNDS", "1"))
AMOUNT_MINOR = 100
CLIENTS = 8
SHARDS = 2
# A client sends one payment again for this long before it gives up on it: longer than
# any fault here lasts, and than the 60 s after which a payment whose request died with
# its process is taken over (http.idempotency.IN_FLIGHT_MAX_MS; 409 until then), so a
# give-up means the portal stayed unavailable.
CLIENT_PATIENCE_S = 90.0
RESEND_PAUSE_S = 0.2
# The HTTP timeout of one request: above the gateway's 15 s charge timeout.
REQUEST_TIMEOUT_S = 30.0
# Settings every fault test's serve runs with: no billing (nothing but the clients moves
# money) and rate limits out of the way of a few threads paying flat out.
SERVE_ENV = {
    "PAYPORTAL_BILLING_INTERVAL_S": "0",
    "PAYPORTAL_RATE_LIMITS_SCALE": "1000",
    "PAYPORTAL_SHARDS": str(SHARDS),
}
# Unknown outcomes are inquired at 1 min (retry_policy.INQUIRY_DELAYS_MS), and an attempt
# left ``processing`` by a front door that died mid-charge once it is 10 min old
# (janitor.PROCESSING_STALE_MS_DEFAULT): the shards' clocks are moved past both instead
# of waiting.
INQUIRY_DUE_MS = 11 * 60_000
RESOLVE_S_MAX = 120.0
UNSETTLED = ("processing", "retry_scheduled")


def request(port: int, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(
            method,
            path,
            body=payload,
            headers={"content-type": "application/json", **(headers or {})},
        )
        response = connection.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None)
    finally:
        connection.close()


def ok(port: int, method: str, path: str, body: Any = None, **headers: str) -> Any:
    status, answer = request(port, method, path, body, headers)
    assert status in (200, 201), (method, path, status, answer)
    return answer


@dataclass
class Portal:
    """A started serve and what the clients need to pay through it."""

    served: Served
    database_url: str
    session: str = ""
    method: str = ""

    @property
    def port(self) -> int:
        return self.served.port

    def sign_in(self) -> None:
        payer = re.search(r"payer login:?\s+(\S+) / (\S+)", self.served.banner)
        assert payer is not None, "no payer login in serve's banner"
        login = {"email": payer.group(1), "password": payer.group(2)}
        self.session = ok(self.port, "POST", "/v1/payer/sessions", login)["token"]

    def add_card(self, sandbox_port: int) -> str:
        """A new token at the processor and the payment method that holds it; new
        payments use it from now on."""
        token = ok(sandbox_port, "POST", "/v1/tokens", {
            "type": "card", "number": "4242424242424242", "exp_month": 12,
            "exp_year": 2035, "cvc": "123"})["token"]  # fmt: skip
        self.method = ok(self.port, "POST", f"/v1/accounts/{ACCOUNT}/payment_methods",
                         {"token": token, "brand": "visa", "last4": "4242"},
                         Authorization=f"Bearer {self.session}")["id"]  # fmt: skip
        return self.method


@contextmanager
def portal(workdir: Path, database_url: str, *, env: dict[str, str] | None = None,
           args: tuple[str, ...] = (), port: int | None = None) -> Iterator[Portal]:  # fmt: skip
    """serve --seed-demo on ``database_url``, signed in as the demo payer. ``port``, when
    a process started before serve must know where serve will listen."""
    settings = {**SERVE_ENV, "PAYPORTAL_DATABASE_URL": database_url, **(env or {})}
    if port is not None:
        settings["PAYPORTAL_PORT"] = str(port)
    with serving(workdir, args=args, env=settings) as served:
        if port is not None:
            served.port = port
        running = Portal(served, database_url)
        running.sign_in()
        yield running


@dataclass
class Load:
    """Clients paying through ``portal`` until stopped."""

    portal: Portal
    clients: int = CLIENTS
    # payment id -> the status it was last answered with
    acknowledged: dict[str, str] = field(default_factory=dict)
    # Idempotency-Key -> the payment id its answers named (all of them must agree)
    answered_keys: dict[str, str] = field(default_factory=dict)
    disagreements: list[str] = field(default_factory=list)
    # (monotonic time the payment was first sent, time of its answer, status, resends,
    # payment id)
    timeline: list[tuple[float, float, str, int, str]] = field(default_factory=list)
    # What came back other than a payment: HTTP statuses and connection errors.
    refusals: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(self.clients)]  # fmt: skip
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + CLIENT_PATIENCE_S)
        assert not any(t.is_alive() for t in self._threads), "a client did not stop"
        assert not self.errors, self.errors[:5]

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def wait_for(self, payments: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count() < payments:
            assert time.monotonic() < deadline, (
                f"only {self.count()} payments acknowledged in {timeout_s:.0f} s; "
                f"refusals {dict(self.refusals)}")  # fmt: skip
            assert not self.errors, self.errors[:5]
            time.sleep(0.05)

    def first_success_after(self, moment: float) -> float | None:
        """When the first payment sent after ``moment`` was answered ``succeeded``."""
        with self._lock:
            times = [answered for sent, answered, status, _, _ in self.timeline
                     if sent >= moment and status == "succeeded"]  # fmt: skip
        return min(times) if times else None

    def made_since(self, moment: float) -> list[str]:
        """The payments first sent at or after ``moment``, in the order answered."""
        with self._lock:
            return [payment for sent, _, _, _, payment in self.timeline if sent >= moment]

    def interrupted_answers(self, moment: float) -> list[float]:
        """When each payment that had to be resent after ``moment`` was answered."""
        with self._lock:
            return sorted(answered for _, answered, _, resends, _ in self.timeline
                          if resends and answered >= moment)  # fmt: skip

    def _client(self) -> None:
        connection: http.client.HTTPConnection | None = None
        try:
            while not self._stop.is_set():
                connection = self._pay_once(connection)
        except Exception as error:  # reported by stop(), which the test calls
            with self._lock:
                self.errors.append(repr(error))
        finally:
            if connection is not None:
                connection.close()

    def _pay_once(
        self, connection: http.client.HTTPConnection | None
    ) -> http.client.HTTPConnection | None:
        key = uuid.uuid4().hex
        # The method at the first send is the one every resend carries: same key, same body.
        body = json.dumps({"account": ACCOUNT, "amount": AMOUNT_MINOR, "currency": "USD",
                           "payment_method": self.portal.method})  # fmt: skip
        headers = {"Authorization": f"Bearer {self.portal.session}",
                   "content-type": "application/json", "Idempotency-Key": key}  # fmt: skip
        sent = time.monotonic()
        deadline = sent + CLIENT_PATIENCE_S
        resends = 0
        while True:
            if connection is None:
                connection = http.client.HTTPConnection(
                    "127.0.0.1", self.portal.port, timeout=REQUEST_TIMEOUT_S
                )
            try:
                connection.request("POST", "/v1/payments", body=body, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                connection = None
                refusal = type(error).__name__
            else:
                payment = _payment_named(status, raw)
                if payment is not None:
                    self._acknowledge(key, payment, sent, resends)
                    return connection
                if status not in (409, 429) and status < 500:
                    raise AssertionError(f"payment answered {status}: {raw[:300]!r}")
                refusal = str(status)
            with self._lock:
                self.refusals[refusal] += 1
            # Not on stop: a payment once sent is followed until answered, or its fate
            # would stay unknown to the audit.
            if time.monotonic() > deadline:
                with self._lock:
                    self.gave_up += 1
                return connection
            resends += 1
            time.sleep(RESEND_PAUSE_S)

    def _acknowledge(self, key: str, payment: dict[str, Any], sent: float, resends: int) -> None:
        with self._lock:
            earlier = self.answered_keys.setdefault(key, payment["id"])
            if earlier != payment["id"]:
                self.disagreements.append(f"{key}: {earlier} then {payment['id']}")
            self.acknowledged[payment["id"]] = payment["status"]
            self.timeline.append(
                (sent, time.monotonic(), payment["status"], resends, payment["id"])
            )


def _payment_named(status: int, raw: bytes) -> dict[str, Any] | None:
    if status in (200, 201):
        answer: dict[str, Any] = json.loads(raw)
        return answer
    if status == 402:
        payment = json.loads(raw).get("error", {}).get("payment")
        return payment if isinstance(payment, dict) else None
    return None


# -- the other processes a fault test starts ---------------------------------------------------


@dataclass
class Sandbox:
    """``payportal sandbox`` as a process of the test's own, so the test can kill it."""

    workdir: Path
    callback_port: int
    faults: str = "{}"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    starts: int = 0

    def start(self) -> None:
        log = self.workdir / f"sandbox-{self.starts}.log"
        self.starts += 1
        callback = f"http://127.0.0.1:{self.callback_port}/v1/processors/sandbox/callbacks"
        with log.open("w") as out:
            # In serve's directory: the webhook secret is derived from the secret key
            # kept there, so serve verifies what this sandbox signs.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "payportal", "sandbox", "--host", "127.0.0.1",
                 "--port", str(self.port), "--callback-url", callback, "--faults", self.faults],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, text=True,
                env=_without_settings(),
            )  # fmt: skip
        wait_http(self.port, "/healthz", self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def _without_settings() -> dict[str, str]:
    # The run's data keys stay: the audits open the same database from this process.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PAYPORTAL_") or k == "PAYPORTAL_DATA_KEYS"}  # fmt: skip


def wait_http(port: int, path: str, process: subprocess.Popen[str] | None = None,
              timeout_s: float = 60.0) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if request(port, "GET", path)[0] == 200:
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        assert process is None or process.poll() is None, f"exited {process.returncode}"
        assert time.monotonic() < deadline, f"127.0.0.1:{port}{path} did not answer"
        time.sleep(0.1)


ADVANCE_CLOCKS = """
import json, sys
from pathlib import Path
import ray
from payportal.actors.cluster import connect_ray_for_command, get_shards
assert connect_ray_for_command(None, Path(sys.argv[1])), "serve's Ray was not found"
shards = get_shards(int(sys.argv[2]))
print(json.dumps(ray.get([s.advance_clock.remote(int(sys.argv[3])) for s in shards])))
"""


def advance_shard_clocks(workdir: Path, ms: int) -> None:
    """Move the clocks of serve's shards (and so their janitors') forward by ``ms``, from
    a process that joins serve's Ray the way a CLI command does."""
    subprocess.run(
        [sys.executable, "-c", ADVANCE_CLOCKS, str(workdir / "var"), str(SHARDS), str(ms)],
        cwd=workdir, env=_without_settings(), check=True, capture_output=True, timeout=120,
    )  # fmt: skip


# -- what must hold after every fault ------------------------------------------------------------


@dataclass
class Figures:
    fault: str
    acknowledged: int
    lost: int
    applied_twice: int
    charged_twice: int
    recovery_s: float | None
    extra: str = ""

    def line(self) -> str:
        recovery = "n/a" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return (f"faults: {self.fault}: {self.acknowledged} payments acknowledged, "
                f"lost {self.lost}, applied twice {self.applied_twice}, charged twice "
                f"{self.charged_twice}, recovery {recovery}"
                + (f"; {self.extra}" if self.extra else ""))  # fmt: skip


def statuses(database_url: str, payment_ids: list[str]) -> Counter[str]:
    """How many of ``payment_ids`` the payments read model shows in each status."""

    async def query() -> Counter[str]:
        store = await Store.connect(database_url)
        try:
            async with store.engine.connect() as connection:
                p = tables.payments
                return Counter((await connection.execute(
                    sa.select(p.c.status).where(p.c.payment_id.in_(payment_ids))
                )).scalars())  # fmt: skip
        finally:
            await store.close()

    return asyncio.run(query())


def journal_captures(database_url: str) -> Counter[str]:
    """How many times the journal captured each payment (``attempt_succeeded``)."""

    async def query() -> Counter[str]:
        store = await Store.connect(database_url)
        try:
            async with store.engine.connect() as connection:
                j = tables.journal
                return Counter((await connection.execute(
                    sa.select(j.c.payment_id).where(j.c.event_type == "attempt_succeeded")
                )).scalars())  # fmt: skip
        finally:
            await store.close()

    return asyncio.run(query())


def settle(workdir: Path, load: Load) -> tuple[int, float, Counter[str]]:
    """Resolve every acknowledged payment whose outcome is unknown or that waits for a
    technical re-send, the way production does (the janitor's inquiries; the quick
    re-send of what the processor failed or never received, 30 s to 10 min later), with
    the shards' clocks moved instead of waiting, until none is ``processing`` or
    ``retry_scheduled``: (how many were, seconds it took, the statuses they ended in).
    The audit then reads a database the janitor has stopped writing to."""
    url = load.portal.database_url
    ids = list(load.acknowledged)
    started = time.monotonic()
    # What the read models show is only "processing" once they have caught up.
    assert asyncio.run(_caught_up(url)), "the read models did not catch up with the journal"
    unknown = [p for p, n in _statuses_by_payment(url, ids).items() if n in UNSETTLED]
    while (left := statuses(url, unknown))["processing"] + left["retry_scheduled"]:
        assert time.monotonic() - started < RESOLVE_S_MAX, f"still unresolved: {dict(left)}"
        advance_shard_clocks(workdir, INQUIRY_DUE_MS)
        time.sleep(1.0)
        # The read models again, so a status read above is not a stale one.
        asyncio.run(_caught_up(url))
    return len(unknown), time.monotonic() - started, statuses(url, unknown)


async def _caught_up(database_url: str) -> bool:
    store = await Store.connect(database_url)
    try:
        return await _wait_for_projection(store, SHARDS)
    finally:
        await store.close()


async def _projection_state(database_url: str) -> str:
    """Where each shard's read models are against its journal, and what the database's
    sessions are doing: what a stuck projection is diagnosed from."""
    store = await Store.connect(database_url)
    try:
        j = tables.journal
        async with store.engine.connect() as connection:
            last = dict((await connection.execute(
                sa.select(j.c.shard_id, sa.func.max(j.c.id)).group_by(j.c.shard_id)
            )).all())  # fmt: skip
            recent = (await connection.execute(
                sa.select(j.c.shard_id, j.c.event_type, sa.func.count())
                .where(j.c.id > sa.select(sa.func.max(j.c.id) - 200).scalar_subquery())
                .group_by(j.c.shard_id, j.c.event_type)
            )).all()  # fmt: skip
            sessions = (await connection.execute(sa.text(
                "SELECT state, wait_event_type, wait_event, left(query, 80), "
                "now() - state_change FROM pg_stat_activity WHERE datname = current_database()"
            ))).all()  # fmt: skip
        cursors = {s: await store.projection_cursor(s) for s in range(SHARDS)}
    finally:
        await store.close()
    return (
        f"journal last ids {last}, projection cursors {cursors}; the last 200 rows "
        f"{[tuple(r) for r in recent]}; sessions {[tuple(map(str, r)) for r in sessions]}"
    )


def _statuses_by_payment(database_url: str, payment_ids: list[str]) -> dict[str, str]:
    async def query() -> dict[str, str]:
        store = await Store.connect(database_url)
        try:
            async with store.engine.connect() as connection:
                p = tables.payments
                return dict((await connection.execute(
                    sa.select(p.c.payment_id, p.c.status).where(p.c.payment_id.in_(payment_ids))
                )).all())  # fmt: skip
        finally:
            await store.close()

    return asyncio.run(query())


def audit(fault: str, load: Load, recovery_s: float | None, extra: str = "") -> Figures:
    """Everything the clients were answered, against the database: nothing acknowledged
    missing, no key or payment applied twice, no payment or charge captured twice, the
    ledger balanced and every balance equal to its journal's replay. Asserts, then
    returns the figures (printed by the caller's line)."""
    figures, failures = asyncio.run(_audit(fault, load, recovery_s, extra))
    print(figures.line())
    assert load.count() > 0, "no payment was acknowledged"
    assert not failures, "; ".join(failures)
    return figures


async def _audit(fault: str, load: Load, recovery_s: float | None,
                 extra: str) -> tuple[Figures, list[str]]:  # fmt: skip
    url = load.portal.database_url
    store = await Store.connect(url)
    try:
        caught_up = await _wait_for_projection(store, SHARDS)
        j = tables.journal
        async with store.engine.connect() as connection:
            created = Counter((await connection.execute(
                sa.select(j.c.payment_id).where(j.c.event_type == "payment_created")
            )).scalars())  # fmt: skip
            # Keys are journaled scoped by who sent them ("<principal>:<key>").
            keys = Counter((await connection.execute(
                sa.select(j.c.idempotency_key).where(j.c.event_type == "payment_created")
            )).scalars())  # fmt: skip
            captures = (await connection.execute(
                sa.select(j.c.payment_id, j.c.charge_id)
                .where(j.c.event_type == "attempt_succeeded")
            )).all()  # fmt: skip
    finally:
        await store.close()
    acknowledged = dict(load.acknowledged)
    lost = [p for p in acknowledged if created[p] == 0]
    by_key = {key.rpartition(":")[2]: n for key, n in keys.items() if key}
    applied_twice = ([p for p in acknowledged if created[p] > 1]
                     + [k for k in load.answered_keys if by_key.get(k, 0) > 1]
                     + load.disagreements)  # fmt: skip
    per_payment = Counter(p for p, _ in captures)
    per_charge = Counter(c for _, c in captures)
    charged_twice = ([p for p, n in per_payment.items() if n > 1]
                     + [c for c, n in per_charge.items() if n > 1])  # fmt: skip
    failures = (await check_invariants(url, acknowledged)).messages
    if not caught_up:
        failures.append("the read models did not catch up with the journal")
        failures.append(await _projection_state(url))
    for name, found in (("lost", lost), ("applied twice", applied_twice),
                        ("charged twice", charged_twice)):  # fmt: skip
        if found:
            failures.append(f"{len(found)} {name}, e.g. {found[:3]}")
    statuses = Counter(acknowledged.values())
    gave_up = f", {load.gave_up} given up" if load.gave_up else ""
    detail = (f"by status {dict(sorted(statuses.items()))}, not answered "
              f"{dict(sorted(load.refusals.items()))}{gave_up}")  # fmt: skip
    figures = Figures(fault, len(acknowledged), len(lost), len(applied_twice),
                      len(charged_twice), recovery_s,
                      "; ".join(x for x in (extra, detail) if x))  # fmt: skip
    return figures, failures
