"""The HTTP front door: the public API of docs/api.md on aiohttp, with msgspec types.

``create_app`` builds the application around a shard router and a store; the server
(``payportal serve``) runs it on uvloop. Modules: ``app`` (assembly and middleware),
``routes`` (the route table that also generates the OpenAPI document), ``handlers_*``
(thin handlers), ``schemas`` (every request and response type), ``errors``,
``auth``, ``ratelimit`` (rate limits and the login lockout), ``idempotency``,
``gateway`` (the processor call outside the critical section), ``reads`` (single objects
read through their shard), ``openapi``.
"""

from .app import create_app

__all__ = ["create_app"]
