"""``python -m benchmarks.naive``: run the naive baseline (not part of payportal)."""

from __future__ import annotations

import argparse

from aiohttp import web

from .server import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description="The naive baseline server (benchmark only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True, help="postgresql://… (asyncpg DSN)")
    parser.add_argument("--processor-url", required=True, help="the sandbox processor")
    parser.add_argument("--pool-size", type=int, default=20)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    app = create_app(args.database_url, args.processor_url, pool_size=args.pool_size)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
