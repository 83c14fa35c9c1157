"""What the portal and console tests do as a browser would: another browser (its own
cookie jar) on the same server, and the CSRF token a page carries in its meta tag."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import CookieJar
from aiohttp.test_utils import TestClient, TestServer

_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


async def browser_on(server: TestServer) -> TestClient[Any, Any]:
    """A client of ``server`` with cookies of its own. The jar treats the loopback server
    as a secure origin, so ``__Host-`` (Secure) cookies are kept."""
    jar = CookieJar(unsafe=True, treat_as_secure_origin=str(server.make_url("/")))
    client: TestClient[Any, Any] = TestClient(server, cookie_jar=jar)
    await client.start_server()
    return client


async def another_browser(client: TestClient[Any, Any]) -> TestClient[Any, Any]:
    """Another browser on ``client``'s server: same server, its own cookies."""
    return await browser_on(client.server)


def csrf_token_in(html: str) -> str:
    """The CSRF token a rendered page carries."""
    match = _CSRF_META.search(html)
    assert match is not None, html[:200]
    return match.group(1)


async def csrf_token(client: TestClient[Any, Any], path: str) -> str:
    """The CSRF token of the form page at ``path``, for this client's session."""
    response = await client.get(path)
    return csrf_token_in(await response.text())
