"""Operations endpoints: liveness, readiness, the OpenAPI document and its page."""

from __future__ import annotations

import asyncio
from typing import Final

import sqlalchemy as sa
from aiohttp import web

from payportal.actors import shard_for

from .codec import respond
from .openapi import openapi_document, render_docs
from .reads import read_account
from .schemas import Health, Readiness
from .typedefs import ROUTER, ROUTES, STORE

__all__ = ["docs", "healthz", "openapi_json", "readyz"]

# A shard that does not answer a read in this time is not ready.
READY_TIMEOUT_S: Final = 2.0


async def healthz(request: web.Request) -> web.Response:
    return respond(Health())


def _probe_accounts(shards: int) -> list[str]:
    """One account id per shard (none of them exists), so a read reaches every shard."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < shards:
        account_id = f"acct_readyz{n}"
        found.setdefault(shard_for(account_id, shards), account_id)
        n += 1
    return [found[i] for i in range(shards)]


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    router = request.app[ROUTER]
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await asyncio.gather(
                *(read_account(router, a) for a in _probe_accounts(router.shards))
            )
        checks["shards"] = "ok"
    except Exception as error:  # any failure is the answer, not a crash
        checks["shards"] = type(error).__name__
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with request.app[STORE].engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = type(error).__name__
    ready = all(v == "ok" for v in checks.values())
    return respond(Readiness(status="ok" if ready else "unavailable", checks=checks),
                   status=200 if ready else 503)  # fmt: skip


async def openapi_json(request: web.Request) -> web.Response:
    return respond(openapi_document(request.app[ROUTES]))


async def docs(request: web.Request) -> web.Response:
    page = render_docs(openapi_document(request.app[ROUTES]))
    return web.Response(text=page, content_type="text/html")
