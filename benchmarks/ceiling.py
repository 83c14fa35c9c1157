"""The ceiling of the end-to-end benchmark: aiohttp on uvloop answering payportal's request
shapes with fixed bodies, doing no work at all. Nothing built on this stack on this
machine answers faster, so it is the yardstick's top mark, not a server.

- ``POST /v1/payments``: reads the body, answers a fixed payment, ``"status":"succeeded"``.
- ``GET /v1/payments/{id}``, ``GET /v1/accounts/{id}``: fixed payment and account bodies.
- ``POST /v1/processors/sandbox/callbacks``: 200, ignored. ``GET /healthz``.

    python -m benchmarks.ceiling --port 8090
"""

from __future__ import annotations

import argparse

from aiohttp import web

__all__ = ["create_app"]

PAYMENT = (
    b'{"id":"pay_ceiling_0","object":"payment","account":"acct_ceiling","amount":100,'
    b'"currency":"USD","status":"succeeded","payment_method":"pm_ceiling","attempts":'
    b'[{"id":"att_ceiling_0","status":"succeeded","decline_code":null,"created_at":0}],'
    b'"allocations":[{"invoice":"inv_ceiling_0","amount":100}],"amount_applied":100,'
    b'"amount_unapplied":0,"amount_refunded":0,"processing_ms":1,"next_retry_at":null,'
    b'"created":0}'
)
ACCOUNT = (
    b'{"id":"acct_ceiling","object":"account","name":"Ceiling","email":"c@bench.example",'
    b'"currency":"USD","external_ref":null,"balance":{"outstanding":100000,"credit":0,'
    b'"currency":"USD"},"created":0}'
)


async def _pay(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=PAYMENT, content_type="application/json")


async def _payment(request: web.Request) -> web.Response:
    return web.Response(body=PAYMENT, content_type="application/json")


async def _account(request: web.Request) -> web.Response:
    return web.Response(body=ACCOUNT, content_type="application/json")


async def _callback(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"{}", content_type="application/json")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/payments", _pay)
    app.router.add_get("/v1/payments/{id}", _payment)
    app.router.add_get("/v1/accounts/{id}", _account)
    app.router.add_post("/v1/processors/sandbox/callbacks", _callback)
    app.router.add_get("/healthz", _healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
