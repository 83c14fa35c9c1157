"""The whole front door as ``payportal serve`` mounts it, in-process: the API, the live
status streams (in-process, with the publisher run on demand), the payer portal and the
merchant console, and the processor's signed callbacks, on a loopback test server with
aiohttp's access log off (as serve runs it). Shards are driven directly (no Ray), the
sandbox processor runs on a loopback test server, and the database is the
``database_url`` fixture's.

``front_door`` is the fixture; ``FrontDoor.api`` is the API harness (``api_harness.Api``)
on a browser-like client (a cookie jar of its own), so pages and API share one server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from limits.aio.storage import MemoryStorage

from payportal.actors import AccountShardCore, ShardRouter
from payportal.http import create_app
from payportal.http.callbacks import add_callback_routes
from payportal.http.events import LIVE_WAIT_S, STATUS_STREAMS
from payportal.http.ratelimit import RateLimits
from payportal.live import MemoryStatusStreams, StatusPublisher
from payportal.persistence import Store
from payportal.persistence.keys import create_api_key_async
from payportal.processors.sandbox import SANDBOX, Faults, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor
from payportal.web import install_web
from payportal.web.security import WEB_CONFIG, WebConfig
from tests import artifacts

from .api_harness import SECRET, Api, DirectHandle
from .web_client import another_browser, browser_on

SHARDS = 2
# How long a live stream waits for news before checking its client is still there: short,
# so a test's streams end soon after the client hangs up.
LIVE_WAIT_S_TESTS = 0.05


class FrontDoor:
    def __init__(self, api: Api, server: TestServer, router: ShardRouter, store: Store,
                 publisher: StatusPublisher, sandbox_url: str) -> None:  # fmt: skip
        self.api = api
        self.server = server
        self.router = router
        self.store = store
        self.publisher = publisher
        self.sandbox_url = sandbox_url

    @property
    def client(self) -> TestClient[Any, Any]:
        return self.api.client

    async def browser(self) -> TestClient[Any, Any]:
        """Another browser on the same server: its own cookies."""
        return await another_browser(self.api.client)

    async def settle(self) -> None:
        """Everything the shards decided is in the journal, the read models and the
        status streams."""
        await self.router.drain()
        for shard_id in range(SHARDS):
            await self.store.project_pending(shard_id)
        await self.publisher.run_once()


@asynccontextmanager
async def serving_front_door(
    database_url: str, aiohttp_server: Any, *, rate_limits_scale: int = 1,
    web_config: Callable[[WebConfig], WebConfig] | None = None,
) -> AsyncIterator[FrontDoor]:  # fmt: skip
    """The front door on ``database_url``; ``rate_limits_scale`` multiplies every
    request-rate limit (never the login lockout), as PAYPORTAL_RATE_LIMITS_SCALE does;
    ``web_config`` changes what the pages are told of the deployment (the processor)."""
    store = await Store.connect(database_url)
    sandbox_app = create_sandbox_app(callback_url=None, webhook_secret=SECRET, faults=Faults())
    sandbox_server: TestServer = await aiohttp_server(sandbox_app, host="127.0.0.1")
    sandbox_url = str(sandbox_server.make_url("")).rstrip("/")
    processor = SandboxProcessor(sandbox_url, timeout_ms=2_000)
    router = ShardRouter(
        [DirectHandle(AccountShardCore(i, store)) for i in range(SHARDS)], batch_max_wait_ms=1
    )
    streams = MemoryStatusStreams()
    rate_limits = RateLimits(MemoryStorage(wrap_exceptions=True), scale=rate_limits_scale)
    app = create_app(router=router, store=store, processor=processor, rate_limits=rate_limits)
    app[STATUS_STREAMS] = streams
    app[LIVE_WAIT_S] = LIVE_WAIT_S_TESTS
    install_web(app, settings=None, processor_origin=sandbox_url)
    if web_config is not None:
        app[WEB_CONFIG] = web_config(app[WEB_CONFIG])
    add_callback_routes(app, store=store, router=router, secrets={"sandbox": [SECRET]})
    artifacts.keep_documents(app)
    server = TestServer(app, host="127.0.0.1", access_log=None)
    await server.start_server()
    client = await browser_on(server)
    router.follow_balances()
    key = await create_api_key_async(store, "tests")
    publisher = StatusPublisher(store, streams, shard_ids=range(SHARDS))
    api = Api(client, processor, sandbox_app[SANDBOX], key, store)
    api.router = router
    try:
        yield FrontDoor(api, server, router, store, publisher, sandbox_url)
    finally:
        await client.close()
        await server.close()
        await router.close()
        await processor.close()
        await streams.close()
        await rate_limits.close()
        await store.close()


@pytest.fixture
async def front_door(database_url: str, aiohttp_server: Any) -> AsyncIterator[FrontDoor]:
    async with serving_front_door(database_url, aiohttp_server) as door:
        yield door
