"""Rate limits and the login lockout answer 429 with Retry-After exactly when the limits say,
to the caller over the limit and no one else; tested over HTTP against the in-process
portal (SQLite, direct shards, the sandbox processor), with client addresses sent through a
trusted proxy's X-Forwarded-For, a fake clock moved instead of sleeping, and real Redis
shared by two front doors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import limits.aio.storage.memory
import limits.aio.storage.redis.redispy
import limits.aio.strategies
import pytest
import redis.asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from structlog.testing import capture_logs

from payportal.actors import AccountShardCore, ShardRouter
from payportal.config import load_settings
from payportal.http import create_app
from payportal.http import ratelimit as rl
from payportal.http.callbacks import add_callback_routes
from payportal.http.errors import ApiError
from payportal.http.ratelimit import RateLimits, client_address
from payportal.http.typedefs import RATE_LIMITS
from payportal.persistence import Store, migrate
from payportal.persistence.keys import create_api_key_async
from payportal.processors.sandbox import SANDBOX, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor

from .api_harness import SECRET, Api, DirectHandle

PASSWORD = "correct horse"
LOOPBACK = (ip_network("127.0.0.0/8"), ip_network("::1/128"))


class FakeTime:
    """Unix seconds that move only when a test says so."""

    def __init__(self) -> None:
        # A whole second: Redis hands timestamps back with 14 significant digits, which
        # would shift an exact Retry-After by one at a fractional start.
        self.now = float(int(time.time()))

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """The limiter's clock and the ``limits`` library's, moved together."""
    fake = FakeTime()
    for module in (limits.aio.strategies, limits.aio.storage.memory,
                   limits.aio.storage.redis.redispy):  # fmt: skip
        monkeypatch.setattr(module, "time", fake)
    return fake


class Portal:
    """Store, shards and sandbox for one test; ``front_door`` adds an app over them."""

    def __init__(self, tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any) -> None:
        self.tmp_path = tmp_path
        self.aiohttp_server = aiohttp_server
        self.aiohttp_client = aiohttp_client

    async def start(self) -> Portal:
        url = f"sqlite+aiosqlite:///{self.tmp_path}/payportal.db"
        await asyncio.to_thread(migrate, url)
        self.store = await Store.connect(url)
        sandbox_app = create_sandbox_app(callback_url=None, webhook_secret=SECRET)
        sandbox: TestServer = await self.aiohttp_server(sandbox_app, host="127.0.0.1")
        self.sandbox = sandbox_app[SANDBOX]
        self.processor = SandboxProcessor(str(sandbox.make_url("")))
        self.router = ShardRouter(
            [DirectHandle(AccountShardCore(i, self.store)) for i in range(2)], batch_max_wait_ms=1
        )
        self.key = await create_api_key_async(self.store, "tests")
        return self

    async def front_door(self, rate_limits: RateLimits | None = None, **options: Any) -> Api:
        app = create_app(router=self.router, store=self.store, processor=self.processor,
                         rate_limits=rate_limits, **options)  # fmt: skip
        add_callback_routes(app, store=self.store, router=self.router,
                            secrets={"sandbox": [SECRET]})  # fmt: skip
        client = await self.aiohttp_client(app)
        return Api(client, self.processor, self.sandbox, self.key, self.store)

    async def stop(self) -> None:
        await self.router.drain()
        await self.processor.close()
        await self.store.close()


@pytest.fixture
async def portal(tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
                 ) -> AsyncIterator[Portal]:  # fmt: skip
    started = await Portal(tmp_path, aiohttp_server, aiohttp_client).start()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def api(portal: Portal, clock: FakeTime) -> AsyncIterator[Api]:
    """One front door on in-memory counters, behind a loopback proxy (X-Forwarded-For
    names the client), on the fake clock."""
    limiter = RateLimits.in_memory(trusted_proxies=LOOPBACK, clock=clock.time)
    try:
        yield await portal.front_door(limiter)
    finally:
        await limiter.close()


def frm(address: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return {**(headers or {}), "X-Forwarded-For": address}


def assert_rate_limited(status: int, body: Any, headers: Any, retry_after_s: int) -> None:
    assert status == 429, (status, body)
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["message"]
    assert headers["Retry-After"] == str(retry_after_s)


async def call(api: Api, method: str, path: str, headers: dict[str, str], json: Any = None
               ) -> tuple[int, Any, Any]:  # fmt: skip
    response = await api.client.request(method, path, headers=headers, json=json)
    body = await response.json() if response.content_type == "application/json" else None
    return response.status, body, response.headers


async def exhaust(api: Api, count: int, method: str, path: str, headers: dict[str, str],
                  json: Any = None) -> list[int]:  # fmt: skip
    return [(await call(api, method, path, headers, json))[0] for _ in range(count)]


# -- per address and per principal -------------------------------------------------------------


async def test_the_request_after_an_address_limit_is_429_and_other_callers_are_unaffected(
    api: Api, clock: FakeTime
) -> None:
    limit = rl.ADDRESS_REQUESTS.amount
    statuses = await exhaust(api, limit, "GET", "/v1/accounts", frm("203.0.113.1"))
    assert set(statuses) == {401}

    clock.advance(10)
    assert_rate_limited(*await call(api, "GET", "/v1/accounts", frm("203.0.113.1")),
                        retry_after_s=51)  # fmt: skip
    assert (await call(api, "GET", "/v1/accounts", frm("203.0.113.2")))[0] == 401
    # The merchant is counted by its key, not by the address it calls from.
    assert (await call(api, "GET", "/v1/accounts", frm("203.0.113.1", api.merchant)))[0] == 200

    clock.advance(51)
    assert (await call(api, "GET", "/v1/accounts", frm("203.0.113.1")))[0] == 401


async def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    portal: Portal, clock: FakeTime
) -> None:
    limiter = RateLimits.in_memory(clock=clock.time)
    api = await portal.front_door(limiter)
    limit = rl.ADDRESS_REQUESTS.amount
    for n in range(limit):
        assert (await call(api, "GET", "/v1/accounts", frm(f"198.51.100.{n % 250}")))[0] == 401

    assert_rate_limited(*await call(api, "GET", "/v1/accounts", frm("192.0.2.99")),
                        retry_after_s=61)  # fmt: skip
    await limiter.close()


async def test_a_payer_over_their_limit_is_429_and_another_payer_is_not(api: Api) -> None:
    account, other = await api.account(), await api.account()
    me = await api.payer(account, "me@example.com")
    them = await api.payer(other, "them@example.com")
    # Spread over addresses, so only the payer's own limit can refuse.
    for n in range(rl.PAYER_REQUESTS.amount):
        status, _, _ = await call(api, "GET", "/v1/payer/accounts", frm(f"198.51.100.{n}", me))
        assert status == 200

    assert_rate_limited(*await call(api, "GET", "/v1/payer/accounts", frm("192.0.2.1", me)),
                        retry_after_s=61)  # fmt: skip
    assert (await call(api, "GET", "/v1/payer/accounts", frm("192.0.2.1", them)))[0] == 200


async def test_payer_payments_are_limited_per_billing_account(api: Api) -> None:
    account, other = await api.account(), await api.account()
    me = await api.payer(account, "me@example.com")
    also_me = await api.payer(account, "spouse@example.com")
    them = await api.payer(other, "them@example.com")
    method = await api.payment_method(account, headers=me)
    for n in range(rl.ACCOUNT_PAYMENTS.amount):
        who = me if n % 2 else also_me  # two logins on one account share its budget
        status, body, _ = await api.pay(account, 100, method, headers=frm(f"198.51.100.{n}", who))
        assert status == 200, body

    response = await api.client.post(
        "/v1/payments", headers=frm("192.0.2.1", {**me, "Idempotency-Key": uuid.uuid4().hex}),
        json={"account": account, "amount": 100, "currency": "USD", "payment_method": method},
    )  # fmt: skip
    assert_rate_limited(response.status, await response.json(), response.headers,
                        retry_after_s=3601)  # fmt: skip
    assert len(api.charges()) == rl.ACCOUNT_PAYMENTS.amount  # the refused one never charged
    their_method = await api.payment_method(other, headers=them)
    status, _, _ = await api.pay(other, 100, their_method, headers=frm("192.0.2.1", them))
    assert status == 200
    # Reads of the limited account still work.
    assert (await call(api, "GET", f"/v1/accounts/{account}", frm("192.0.2.1", me)))[0] == 200


async def test_payment_posts_are_limited_per_address_against_card_testing(api: Api) -> None:
    payment = {"account": "acct_x", "amount": 1, "currency": "USD", "token": "tok_x"}
    headers = frm("203.0.113.7", {"Idempotency-Key": "k"})
    limit = rl.ADDRESS_MONEY_POSTS.amount
    assert set(await exhaust(api, limit, "POST", "/v1/payments", headers, payment)) == {401}

    assert_rate_limited(*await call(api, "POST", "/v1/payments", headers, payment),
                        retry_after_s=3601)  # fmt: skip
    assert (await call(api, "POST", "/v1/payments", frm("203.0.113.8"), payment))[0] == 401
    # Other requests from that address are still within their own, wider limit.
    assert (await call(api, "GET", "/v1/accounts", headers))[0] == 401


async def test_exempt_routes_are_never_limited(api: Api) -> None:
    address = frm("203.0.113.9")
    assert set(await exhaust(api, rl.ADDRESS_REQUESTS.amount, "GET", "/v1/accounts", address)) \
        == {401}  # fmt: skip
    assert (await call(api, "GET", "/v1/accounts", address))[0] == 429

    for _ in range(3):
        assert (await call(api, "GET", "/healthz", address))[0] == 200
        assert (await call(api, "GET", "/readyz", address))[0] == 200
        assert (await call(api, "GET", "/metrics", address))[0] != 429
        assert (await call(api, "GET", "/v1/metrics/summary", address))[0] != 429
        # Unsigned, so refused by the signature check, but never throttled.
        status, _, _ = await call(api, "POST", "/v1/processors/sandbox/callbacks", address, {})
        assert status == 400


# -- the login lockout ---------------------------------------------------------------------------


async def login(api: Api, email: str, password: str, address: str = "203.0.113.50"
                ) -> tuple[int, Any, Any]:  # fmt: skip
    return await call(api, "POST", "/v1/payer/sessions", frm(address),
                      {"email": email, "password": password})  # fmt: skip


async def test_ten_failures_lock_an_email_for_thirty_minutes_even_with_the_right_password(
    api: Api, clock: FakeTime
) -> None:
    account = await api.account()
    await api.payer(account, "locked@example.com")
    for _ in range(rl.LOGIN_FAILURES_PER_EMAIL.amount):
        assert (await login(api, "locked@example.com", "wrong"))[0] == 401

    with capture_logs() as logs:
        refused = await login(api, "Locked@Example.com ", PASSWORD)
    assert_rate_limited(*refused, retry_after_s=30 * 60 + 1)
    clock.advance(29 * 60)
    assert_rate_limited(*await login(api, "locked@example.com", PASSWORD, "192.0.2.3"),
                        retry_after_s=61)  # fmt: skip
    assert not any("locked@example.com" in str(line) or PASSWORD in str(line) for line in logs)

    clock.advance(61)
    status, body, _ = await login(api, "locked@example.com", PASSWORD)
    assert status == 200
    assert body["token"].startswith("pt_")


async def test_the_lock_is_logged_with_the_email_masked(api: Api) -> None:
    with capture_logs() as logs:
        for _ in range(rl.LOGIN_FAILURES_PER_EMAIL.amount):
            await login(api, "someone@example.com", "hunter2")

    locked = [line for line in logs if line["event"] == "login_locked"]
    assert len(locked) == 1
    assert locked[0]["email"] == "s***@example.com"
    assert "someone" not in str(logs)
    assert "hunter2" not in str(logs)


async def test_an_unknown_email_gets_exactly_the_same_answers(api: Api) -> None:
    account = await api.account()
    await api.payer(account, "known@example.com")

    async def attempts(email: str) -> list[tuple[int, Any, str | None]]:
        answers = []
        for password in ["wrong"] * rl.LOGIN_FAILURES_PER_EMAIL.amount + [PASSWORD]:
            status, body, headers = await login(api, email, password)
            answers.append((status, body, headers.get("Retry-After")))
        return answers

    assert await attempts("known@example.com") == await attempts("nobody@example.com")


async def test_a_success_clears_the_failures(api: Api) -> None:
    account = await api.account()
    await api.payer(account, "forgetful@example.com")
    for _ in range(2):
        for _ in range(rl.LOGIN_FAILURES_PER_EMAIL.amount - 1):
            assert (await login(api, "forgetful@example.com", "wrong"))[0] == 401
        assert (await login(api, "forgetful@example.com", PASSWORD))[0] == 200


async def test_parallel_guesses_cannot_outrun_the_count(api: Api) -> None:
    answers = await asyncio.gather(*(
        login(api, "target@example.com", f"guess {n}", f"198.51.100.{n}") for n in range(25)
    ))  # fmt: skip

    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(401) == rl.LOGIN_FAILURES_PER_EMAIL.amount
    assert statuses.count(429) == 25 - rl.LOGIN_FAILURES_PER_EMAIL.amount


async def test_an_address_failing_on_many_emails_is_refused(api: Api, clock: FakeTime) -> None:
    for n in range(rl.LOGIN_FAILURES_PER_ADDRESS.amount):
        assert (await login(api, f"user{n}@example.com", "wrong", "203.0.113.66"))[0] == 401

    clock.advance(60)
    assert_rate_limited(*await login(api, "fresh@example.com", "wrong", "203.0.113.66"),
                        retry_after_s=14 * 60 + 1)  # fmt: skip
    assert (await login(api, "fresh@example.com", "wrong", "203.0.113.67"))[0] == 401


# -- where the address comes from ------------------------------------------------------------


def _request(peer: str, forwarded: str | None = None) -> web.Request:
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    return make_mocked_request("GET", "/", headers=headers).clone(remote=peer)


@pytest.mark.parametrize(("peer", "forwarded", "counted"), [
    ("192.0.2.1", "198.51.100.1", "192.0.2.1"),            # untrusted peer: header ignored
    ("10.0.0.5", "198.51.100.1", "198.51.100.1"),          # trusted proxy: its client
    ("10.0.0.5", "198.51.100.1, 10.0.0.9", "198.51.100.1"),  # two of our proxies
    ("10.0.0.5", "6.6.6.6, 198.51.100.1", "198.51.100.1"),   # forged left part ignored
    ("10.0.0.5", "nonsense, 10.0.0.9", "10.0.0.9"),        # broken: the last believed hop
    ("10.0.0.5", None, "10.0.0.5"),
    ("2001:db8:1:2:aaaa::1", None, "2001:db8:1:2::/64"),   # IPv6 counted per /64
    ("::ffff:192.0.2.1", None, "192.0.2.1"),
])  # fmt: skip
def test_client_address(peer: str, forwarded: str | None, counted: str) -> None:
    trusted = (ip_network("10.0.0.0/8"),)

    assert client_address(_request(peer, forwarded), trusted) == counted


# -- shared through real Redis ----------------------------------------------------------------


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"payportal-test:{uuid.uuid4().hex}"
    yield prefix
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        assert [key async for key in client.scan_iter(match=f"{prefix}:*")] == []
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_two_front_doors_on_one_redis_share_every_limit(
    portal: Portal, clock: FakeTime, redis_url: str, redis_prefix: str
) -> None:
    limiters = [
        RateLimits.on_redis(redis_url, key_prefix=redis_prefix, trusted_proxies=LOOPBACK,
                            clock=clock.time)
        for _ in range(2)
    ]
    first, second = [await portal.front_door(limiter) for limiter in limiters]
    try:
        for n in range(rl.ADDRESS_REQUESTS.amount):
            door = first if n % 2 else second
            assert (await call(door, "GET", "/v1/accounts", frm("203.0.113.1")))[0] == 401
        for door in (first, second):
            assert_rate_limited(*await call(door, "GET", "/v1/accounts", frm("203.0.113.1")),
                                retry_after_s=61)  # fmt: skip
        assert (await call(first, "GET", "/v1/accounts", frm("203.0.113.2")))[0] == 401

        account = await first.account()
        await first.payer(account, "shared@example.com")
        for n in range(rl.LOGIN_FAILURES_PER_EMAIL.amount):
            door = first if n % 2 else second
            assert (await login(door, "shared@example.com", "wrong"))[0] == 401
        for door in (first, second):
            assert_rate_limited(*await login(door, "shared@example.com", PASSWORD),
                                retry_after_s=30 * 60 + 1)  # fmt: skip
        assert (await call(first, "GET", "/healthz", frm("203.0.113.1")))[0] == 200

        clock.advance(30 * 60 + 1)
        assert (await login(second, "shared@example.com", PASSWORD))[0] == 200
        assert (await call(first, "GET", "/v1/accounts", frm("203.0.113.1")))[0] == 401
    finally:
        for limiter in limiters:
            await limiter.close()


@pytest.mark.redis
async def test_create_app_counts_in_redis_when_the_settings_name_it(
    portal: Portal, redis_url: str, tmp_path: Path
) -> None:
    settings = load_settings({"PAYPORTAL_REDIS_URL": redis_url}, cwd=tmp_path)
    api = await portal.front_door(settings=settings)
    limiter = api.client.app[RATE_LIMITS]

    assert isinstance(limiter.storage, limits.aio.storage.RedisStorage)
    assert await limiter.storage.check()
    assert (await call(api, "GET", "/healthz", {}))[0] == 200


async def test_create_app_counts_in_memory_without_redis(portal: Portal, tmp_path: Path) -> None:
    api = await portal.front_door(settings=load_settings({}, cwd=tmp_path))

    assert isinstance(api.client.app[RATE_LIMITS].storage, limits.aio.storage.MemoryStorage)


async def test_the_scale_setting_lifts_request_limits_but_never_the_login_lockout(
    tmp_path: Path,
) -> None:
    settings = load_settings({"PAYPORTAL_RATE_LIMITS_SCALE": "50"}, cwd=tmp_path)
    limits = rl.RateLimits.from_settings(settings)
    try:
        assert limits.scaled(rl.ADDRESS_REQUESTS).amount == 50 * rl.ADDRESS_REQUESTS.amount
        assert limits.scaled(rl.MERCHANT_MONEY_POSTS).amount == 50 * rl.MERCHANT_MONEY_POSTS.amount
        # The lockout's items are used as they are: 10 failures still lock an email.
        for _ in range(rl.LOGIN_FAILURES_PER_EMAIL.amount):
            await limits.hit(rl.LOGIN_FAILURES_PER_EMAIL, "login-email", "someone")
        with pytest.raises(ApiError) as refused:
            await limits.hit(rl.LOGIN_FAILURES_PER_EMAIL, "login-email", "someone")
        assert refused.value.status == 429
    finally:
        await limits.close()
