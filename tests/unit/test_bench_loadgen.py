"""The benchmark's load generator counts what a server answered correctly: a tiny aiohttp
server in this process answers each payment by its Idempotency-Key's sequence number —
some succeed at once, some decline, some stay ``processing`` for two polls, some fail —
and one short step's counts must match that plan exactly. Counts only; no timing."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from benchmarks.loadgen import LoadGenerator, LoadSpec, StepSpec

POLLS_PROCESSING = 2


def _plan(n: int) -> str:
    """What the server does with the n-th payment."""
    return ("decline", "follow", "fail", "succeed", "succeed")[n % 5]


class _Server:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.bodies: list[bytes] = []
        self.polls: Counter[str] = Counter()
        self.reads = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/payments", self.pay)
        app.router.add_get("/v1/payments/{id}", self.payment)
        app.router.add_get("/v1/accounts/{id}", self.account)
        return app

    async def pay(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer sk_test"
        key = request.headers["Idempotency-Key"]
        self.keys.append(key)
        self.bodies.append(await request.read())
        n = int(key.rsplit("-", 1)[1])
        what = _plan(n)
        if what == "decline":
            return web.json_response({"error": {"code": "card_declined"}}, status=402)
        if what == "fail":
            return web.json_response({"error": {"code": "oops"}}, status=500)
        status = "processing" if what == "follow" else "succeeded"
        code = 202 if what == "follow" and n % 2 else 200
        return web.json_response({"id": f"pay_t_{n}", "status": status,
                                  "attempts": [{"status": "succeeded"}]}, status=code)  # fmt: skip

    async def payment(self, request: web.Request) -> web.Response:
        payment_id = request.match_info["id"]
        self.polls[payment_id] += 1
        done = self.polls[payment_id] > POLLS_PROCESSING
        return web.json_response({"id": payment_id,
                                  "status": "succeeded" if done else "processing"})  # fmt: skip

    async def account(self, request: web.Request) -> web.Response:
        self.reads += 1
        return web.json_response({"id": request.match_info["id"]})


async def _step(kind: str, server: _Server, rate: float = 400.0) -> tuple[Any, LoadGenerator]:
    test_server = TestServer(server.app(), host="127.0.0.1")
    await test_server.start_server()
    generator = LoadGenerator(LoadSpec(
        port=test_server.port, kind=kind, api_key="sk_test", accounts=50,
        distribution="hot", account_prefix="acct_t", method_prefix="pm_t",
        connections_max=8, key_prefix="k",
    ))  # fmt: skip
    try:
        samples = await generator.run_step(StepSpec(index=1, rate=rate, duration_s=0.5,
                                                    drain_s=5.0))  # fmt: skip
    finally:
        generator.close()
        await test_server.close()
    return samples, generator


async def test_every_payment_is_counted_once_as_success_decline_or_error() -> None:
    server = _Server()
    samples, _ = await _step("pay", server)
    assert samples.scheduled == 200
    assert len(server.keys) == 200
    # A fresh idempotency key for every payment.
    assert len(set(server.keys)) == 200
    plan = Counter(_plan(int(key.rsplit("-", 1)[1])) for key in server.keys)
    assert samples.ok == plan["succeed"] + plan["follow"]
    assert samples.declined == plan["decline"]
    assert samples.errors == {"HTTP 500": plan["fail"]}
    assert samples.ok + samples.declined + sum(samples.errors.values()) == samples.scheduled
    assert len(samples.latencies_us) == samples.ok
    assert all(v >= 0 for v in samples.latencies_us)


async def test_processing_payments_are_polled_until_they_succeed() -> None:
    server = _Server()
    samples, _ = await _step("pay", server)
    followed = [key for key in server.keys if _plan(int(key.rsplit("-", 1)[1])) == "follow"]
    assert followed
    # Each was polled until it answered succeeded, and no further.
    assert len(server.polls) == len(followed)
    assert set(server.polls.values()) == {POLLS_PROCESSING + 1}
    assert samples.follow_ups == sum(server.polls.values())


async def test_payment_bodies_name_an_account_and_its_saved_method() -> None:
    server = _Server()
    await _step("pay", server, rate=100.0)
    body = server.bodies[0].decode()
    assert '"account":"acct_t0000' in body
    assert '"payment_method":"pm_t0000' in body
    assert '"amount":100' in body
    # The hot distribution: account 0 takes about 40 % (loosely: 50 payments).
    hot = sum('"account":"acct_t000000"' in b.decode() for b in server.bodies)
    assert 5 <= hot <= 40


async def test_reads_count_each_answer() -> None:
    server = _Server()
    samples, _ = await _step("read", server)
    assert samples.scheduled == server.reads == 200
    assert samples.ok == 200
    assert samples.errors == {}


async def test_a_server_that_is_not_there_is_counted_as_errors_not_successes() -> None:
    test_server = TestServer(web.Application(), host="127.0.0.1")
    await test_server.start_server()
    port = test_server.port
    await test_server.close()
    generator = LoadGenerator(LoadSpec(port=port, kind="pay", api_key="k", accounts=2,
                                       account_prefix="acct_t", method_prefix="pm_t"))
    samples = await generator.run_step(StepSpec(index=1, rate=100.0, duration_s=0.1,
                                                drain_s=1.0))  # fmt: skip
    generator.close()
    assert samples.ok == 0
    assert sum(samples.errors.values()) == samples.scheduled == 10
