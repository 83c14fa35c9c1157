"""The browser side of the front door: the payer portal's pages (and, when present, the
merchant console), server-rendered with aiohttp-jinja2 and a little progressive
JavaScript.

``install_web(app, settings=…)`` adds to an API app built by ``http.create_app``:

- a Jinja2 environment (autoescaped) over ``payportal/web/templates``; every template
  gets ``nonce`` (the response's CSP nonce), ``csrf_token``, ``static_url(name)``,
  ``payer`` (the signed-in payer's session or None) and ``request``;
- the static files at ``/static/`` (URLs carry a content hash; cached for a year);
- the security middleware (``security.py``: CSP with a nonce, CSRF, cookies, headers);
- the portal's routes (URL map below) and, if ``payportal/web/console.py`` exists,
  ``console.install(app)``;
- HTML error pages for pages (the API keeps its JSON errors).

URL map (payer portal): ``/`` dashboard, ``/signin``, ``/signout``, ``/reset`` and
``/reset/{token}``, ``/invite/{token}``, ``/pay``, ``/payments`` (history),
``/payments/{id}`` (live status and receipt), ``/methods``, ``/security``,
``/statements`` (downloads at ``/statements/download?format=pdf|csv&from=&to=``).
The pages' own JSON: ``/pay/preview.json``, ``/payments/{id}/status.json`` and the
event stream ``/payments/{id}/events`` (cookie-authenticated).

For other page modules (the console): ``render(request, template, context)``,
``security.csrf_token``, ``security.csp_nonce``, ``security.set_cookie``; forms post a
``csrf_token`` field, fetches send the ``X-CSRF-Token`` header (``app.js`` reads it from
``<meta name="csrf-token">``).
"""

from __future__ import annotations

import importlib
import importlib.util
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import security
from .security import WEB_CONFIG, WebConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

if TYPE_CHECKING:
    from payportal.config import Settings

__all__ = ["install_web", "render"]

HERE: Final = Path(__file__).parent
TEMPLATES_DIR: Final = HERE / "templates"
STATIC_DIR: Final = HERE / "static"


def render(
    request: web.Request, template: str, context: dict[str, Any] | None = None, *,
    status: int = 200,
) -> web.Response:  # fmt: skip
    response = aiohttp_jinja2.render_template(template, request, context or {}, status=status)
    response.content_type = "text/html"
    response.charset = "utf-8"
    return response


def _static_url(request: web.Request, name: str) -> str:
    return str(request.app.router["static"].url_for(filename=name))


@web.middleware
async def _page_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What every template sees, for page requests only: aiohttp_jinja2's own context
    middleware runs its processors for every request, and an API call renders no
    template — a nonce, a CSRF token and a session lookup per API call were pure cost."""
    if security.is_page(request):
        request[aiohttp_jinja2.REQUEST_CONTEXT_KEY] = await _context(request)
    return await handler(request)


async def _context(request: web.Request) -> dict[str, Any]:
    from .pages_auth import current_session

    return {
        "nonce": security.csp_nonce(request),
        "csrf_token": security.csrf_token(request),
        "static_url": lambda name: _static_url(request, name),
        "payer": await current_session(request),
        "path": request.path,
    }


def _config(settings: Settings | None, processor_origin: str | None) -> WebConfig:
    if settings is None:
        # Tests and tools without settings: a key for this process only.
        key = secrets.token_bytes(32)
        public_url = "http://127.0.0.1:8080"
        sandbox_port = 8081
    else:
        key = settings.resolve_secret_key().encode()
        public_url = getattr(settings, "public_url", None) or (
            f"http://{settings.host}:{settings.port}"
        )
        sandbox_port = settings.sandbox_port
    if processor_origin is None and settings is not None and settings.sandbox_external:
        parts = urlsplit(settings.sandbox_url)
        processor_origin = f"{parts.scheme}://{parts.netloc}"
    if processor_origin is None:
        # The embedded sandbox, reached by the browser on the public host.
        parts = urlsplit(public_url)
        processor_origin = f"{parts.scheme}://{parts.hostname}:{sandbox_port}"
    configured = getattr(settings, "public_url_configured", None)
    public_origin = None
    if configured:
        parts = urlsplit(configured)
        public_origin = f"{parts.scheme}://{parts.netloc}"
    return WebConfig(
        secret_key=key, processor_origin=processor_origin.rstrip("/"),
        public_url=public_url.rstrip("/"), public_origin=public_origin,
        processor=getattr(settings, "processor", "sandbox"),
        stripe_publishable_key=getattr(settings, "stripe_publishable_key", None),
    )  # fmt: skip


def install_web(
    app: web.Application, *, settings: Settings | None, processor_origin: str | None = None
) -> None:
    """Serve the pages from ``app`` (see the module docstring). ``processor_origin``
    overrides where the browser finds the hosted card fields (tests)."""
    from payportal.http.app import PAGE_ERRORS

    from . import pages, pages_auth, pages_live

    app[WEB_CONFIG] = _config(settings, processor_origin)
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html", "xml"], default_for_string=True),
    )
    env = aiohttp_jinja2.get_env(app)
    env.filters["money"] = pages.format_money
    env.filters["date"] = pages.format_date
    env.filters["datetime"] = pages.format_datetime
    app.middlewares.append(_page_context)
    app.middlewares.append(security.security_middleware)
    app.on_response_prepare.append(security.headers_on_prepare)
    app[PAGE_ERRORS] = pages.page_error
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=True)
    pages_auth.add_routes(app)
    pages.add_routes(app)
    pages_live.add_routes(app)
    if importlib.util.find_spec("payportal.web.console") is not None:
        console = importlib.import_module("payportal.web.console")
        console.install(app)
