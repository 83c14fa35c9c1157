"""Browser security for every page the front door serves (portal and console).

The model: pages are everything outside the JSON API (``is_page``). For each page
request the middleware

- draws a CSP nonce (``csp_nonce``) and answers with a Content-Security-Policy that
  allows scripts only with that nonce, frames only from the processor's hosted card
  fields and its 3-D Secure challenge (``frame_origins``), connections only to us and
  the processor, forms only to us, and no framing of our pages at all
  (``frame-ancestors 'none'``); plus ``nosniff``, a strict referrer policy and
  ``Cache-Control: no-store`` (static files are cached instead: forever when their URL
  carries the content hash);
- refuses every state-changing request (anything but GET/HEAD/OPTIONS) that does not
  carry the CSRF token, in the form field ``csrf_token`` or the ``X-CSRF-Token`` header
  (fetch), and every one whose ``Origin`` or ``Sec-Fetch-Site`` says it came from
  another site.

CSRF tokens are signed double-submit tokens tied to the session: the token is an HMAC,
under the deployment's secret key, of the browser's CSRF cookie (random, HttpOnly) and
of its session cookie. Another site can neither read those cookies nor compute the
token; a token taken from one session is useless in the next, because signing in
rotates the session cookie.

Cookies (``set_cookie``): every cookie is ``__Host-`` prefixed, ``Secure``, ``HttpOnly``,
``SameSite=Lax`` and ``Path=/`` with no ``Domain``. Browsers accept Secure cookies from
``http://127.0.0.1`` and ``http://localhost``, which is how ``make run`` and the
browser tests work without TLS; anywhere else the site must be served over HTTPS.

Errors: a page's failure is answered with a friendly HTML page (``page_error``, hooked
into the API's error middleware), never with the API's JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
import structlog
from aiohttp import web
from multidict import MultiDictProxy

from payportal.http.errors import parameter_invalid

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "WebConfig",
    "check_csrf",
    "csp_nonce",
    "csrf_token",
    "delete_cookie",
    "frame_origins",
    "headers_on_prepare",
    "is_json_route",
    "is_page",
    "read_form",
    "security_middleware",
    "set_cookie",
]

log = structlog.get_logger("payportal.web")

SESSION_COOKIE: Final = "__Host-payportal_session"
CSRF_COOKIE: Final = "__Host-payportal_csrf"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# The JSON API and its operational endpoints keep their own rules and error shape.
API_PATHS: Final = frozenset({"/openapi.json", "/docs", "/healthz", "/readyz", "/metrics"})
API_PREFIXES: Final = ("/v1/",)
# 128 bits: a nonce only needs to be unguessable for one response.
NONCE_BYTES: Final = 16
# The CSRF cookie's random part; 256 bits like every other secret token here.
CSRF_COOKIE_BYTES: Final = 32
# Static files are named with their content hash (``?v=``): a new version is a new URL,
# so a year is safe. Without the hash, a few minutes.
STATIC_MAX_AGE_S: Final = 365 * 24 * 3600
STATIC_MAX_AGE_UNVERSIONED_S: Final = 300

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the pages need from the deployment."""

    secret_key: bytes
    # The origin of the processor's hosted card fields and token endpoint, as the
    # browser reaches it (``http://127.0.0.1:8081`` for the embedded sandbox).
    processor_origin: str
    public_url: str
    # PAYPORTAL_PROCESSOR; with "stripe" and a publishable key, new cards are typed into
    # Stripe's Payment Element and the CSP allows what Stripe.js needs.
    processor: str = "sandbox"
    stripe_publishable_key: str | None = None
    # PAYPORTAL_PUBLIC_URL's origin when configured: what the browser's address bar shows
    # behind a TLS-terminating proxy, where the request itself arrives as plain http.
    public_origin: str | None = None

    @property
    def uses_stripe_js(self) -> bool:
        return self.processor == "stripe" and bool(self.stripe_publishable_key)


def page_origin(request: web.Request) -> str:
    """The origin the payer's browser is on: where the card fields post their token."""
    configured = request.config_dict[WEB_CONFIG].public_origin
    return configured or f"{request.scheme}://{request.host}"


WEB_CONFIG: web.AppKey[WebConfig] = web.AppKey("web_config")
_NONCE: web.RequestKey[str] = web.RequestKey("csp_nonce")
# A CSRF cookie drawn for this request (the browser had none): set on the response.
_NEW_CSRF: web.RequestKey[str] = web.RequestKey("new_csrf_cookie")
# A session cookie set by this request's handler (sign-in): tokens rendered after it bind
# to the new session.
_ROTATED_SESSION: web.RequestKey[str] = web.RequestKey("rotated_session_cookie")


def is_page(request: web.Request) -> bool:
    path = request.path
    return path not in API_PATHS and not path.startswith(API_PREFIXES)


def is_json_route(request: web.Request) -> bool:
    """The pages' own fetch and stream endpoints: cookie-authenticated, CSRF-checked,
    but answered in JSON (or as an event stream), errors included."""
    return request.path.endswith((".json", "/events"))


def csp_nonce(request: web.Request) -> str:
    nonce = request.get(_NONCE)
    if nonce is None:
        nonce = request[_NONCE] = secrets.token_urlsafe(NONCE_BYTES)
    return nonce


def _csrf_cookie(request: web.Request) -> str:
    drawn = request.get(_NEW_CSRF)
    if drawn is not None:
        return drawn
    value = request.cookies.get(CSRF_COOKIE, "")
    if 32 <= len(value) <= 128 and value.isascii():
        return value
    value = request[_NEW_CSRF] = secrets.token_urlsafe(CSRF_COOKIE_BYTES)
    return value


def _session_cookie(request: web.Request) -> str:
    """The session cookie the browser will hold after this response: one set by the
    handler (sign-in) wins over the one it sent."""
    return str(request.get(_ROTATED_SESSION, request.cookies.get(SESSION_COOKIE, "")))


def csrf_token(request: web.Request) -> str:
    """The token a page embeds in its forms (and ``app.js`` sends with fetch)."""
    key = request.config_dict[WEB_CONFIG].secret_key
    message = f"csrf|{_csrf_cookie(request)}|{_session_cookie(request)}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class CsrfRejected(web.HTTPForbidden):
    pass


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form (aiohttp keeps it: every later call is free). A form that is not
    UTF-8, names a charset Python does not know or is not well-formed is a 400: aiohttp
    raises ``UnicodeDecodeError``, ``LookupError`` or ``ValueError`` for those, and the
    decoding error holds the raw body, password fields included."""
    try:
        return await request.post()
    except (ValueError, LookupError):
        raise parameter_invalid(None, "The form is not well-formed UTF-8.") from None


def _same_origin(request: web.Request, origin: str) -> bool:
    parts = urlsplit(origin)
    return parts.netloc.lower() == request.host.lower()


async def check_csrf(request: web.Request) -> None:
    """403 unless the request carries this browser's token and came from our own pages."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise CsrfRejected(reason="cross-site request")
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null" and not _same_origin(request, origin):
        raise CsrfRejected(reason="cross-origin request")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in (
        "application/x-www-form-urlencoded", "multipart/form-data"
    ):  # fmt: skip
        form = await read_form(request)
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if request.cookies.get(CSRF_COOKIE) is None:
        raise CsrfRejected(reason="missing CSRF cookie")
    if not sent or not hmac.compare_digest(sent.encode(), csrf_token(request).encode()):
        raise CsrfRejected(reason="missing or wrong CSRF token")


def set_cookie(
    response: web.StreamResponse, name: str, value: str, *, max_age_s: int | None = None
) -> None:
    assert name.startswith("__Host-"), name
    response.set_cookie(
        name, value, max_age=max_age_s, path="/", secure=True, httponly=True, samesite="Lax"
    )


def delete_cookie(response: web.StreamResponse, name: str) -> None:
    assert name.startswith("__Host-"), name
    # Deleted with the same attributes it was set with, or the browser keeps it.
    response.set_cookie(
        name, "", max_age=0, path="/", secure=True, httponly=True, samesite="Lax",
        expires="Thu, 01 Jan 1970 00:00:00 GMT",
    )  # fmt: skip


def rotate_session_cookie(request: web.Request, response: web.StreamResponse, value: str,
                          *, max_age_s: int) -> None:  # fmt: skip
    """Set a new session cookie; tokens rendered later in this request bind to it."""
    request[_ROTATED_SESSION] = value
    set_cookie(response, SESSION_COOKIE, value, max_age_s=max_age_s)


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    request[_ROTATED_SESSION] = ""
    delete_cookie(response, SESSION_COOKIE)


# What Stripe.js and its Payment Element need, from Stripe's security guide: its script
# (and the scripts it loads from its subdomains), its frames (hooks.stripe.com for the
# pages of payment methods that redirect, 3-D Secure's included), and its API. Nothing
# for the Address Element's autocomplete (maps.googleapis.com): the portal does not use it.
STRIPE_SCRIPT_SRC: Final = "https://js.stripe.com https://*.js.stripe.com"
STRIPE_FRAME_SRC: Final = "https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com"
STRIPE_CONNECT_SRC: Final = "https://api.stripe.com"
# Where Stripe serves the 3-D Secure page of a PaymentIntent's ``redirect_to_url``
# (docs/processors.md, 3-D Secure), framed by the payment's page even without Stripe.js.
STRIPE_CHALLENGE_SRC: Final = "https://hooks.stripe.com"


def frame_origins(config: WebConfig) -> tuple[str, ...]:
    """What the pages may frame: the processor's card fields and its 3-D Secure challenge
    (the sandbox serves both from its own origin, docs/api.md)."""
    if config.uses_stripe_js:
        return tuple(STRIPE_FRAME_SRC.split())
    if config.processor == "stripe":
        return (config.processor_origin, STRIPE_CHALLENGE_SRC)
    return (config.processor_origin,)


def content_security_policy(request: web.Request) -> str:
    config = request.config_dict[WEB_CONFIG]
    scripts, connect = "", f"'self' {config.processor_origin}"
    frames = " ".join(frame_origins(config))
    if config.uses_stripe_js:
        scripts = f" {STRIPE_SCRIPT_SRC}"
        connect = f"'self' {STRIPE_CONNECT_SRC}"
    return (
        f"default-src 'self'; script-src 'nonce-{csp_nonce(request)}'{scripts}; "
        f"style-src 'self'; img-src 'self' data:; connect-src {connect}; frame-src {frames}; "
        "form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
    )


def apply_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    if request.path.startswith("/static/"):
        versioned = "v" in request.query
        max_age_s = STATIC_MAX_AGE_S if versioned else STATIC_MAX_AGE_UNVERSIONED_S
        headers["Cache-Control"] = f"public, max-age={max_age_s}" + (
            ", immutable" if versioned else ""
        )
        return
    headers.setdefault("Content-Security-Policy", content_security_policy(request))
    headers["X-Frame-Options"] = "DENY"
    headers["Cache-Control"] = "no-store"
    headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    drawn = request.get(_NEW_CSRF)
    if drawn is not None:
        # Cookies set on the response are serialized before this hook runs: add the
        # header itself, with the attributes ``set_cookie`` gives.
        cookie: SimpleCookie = SimpleCookie()
        cookie[CSRF_COOKIE] = drawn
        morsel = cookie[CSRF_COOKIE]
        morsel.update({"path": "/", "secure": True, "httponly": True, "samesite": "Lax"})
        response.headers.add("Set-Cookie", morsel.OutputString())


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_page(request) and request.method not in SAFE_METHODS:
        await check_csrf(request)
    return await handler(request)


async def headers_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every page response gets its headers when it is sent — error pages and event
    streams included, whoever built them."""
    if is_page(request):
        apply_headers(request, response)
