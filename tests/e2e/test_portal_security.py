"""The payer portal's security through aiohttp's test client on SQLite and PostgreSQL: CSP
nonces and headers, cookie attributes, CSRF refusals, session rotation and revocation,
the login lockout, single-use reset and invitation links, and 404 for another payer's
objects. The harness here (``portal``) is the API's (in-process shards, real Store, the
sandbox) with the web pages installed and a cookie jar that, like browsers, keeps Secure
cookies on http://127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import uuid
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from payportal.actors import AccountShardCore, ShardRouter
from payportal.http import create_app
from payportal.http.callbacks import add_callback_routes
from payportal.http.events import LIVE_WAIT_S, STATUS_STREAMS
from payportal.http.typedefs import AUTHENTICATOR, TASKS
from payportal.live import MemoryStatusStreams, StatusPublisher
from payportal.mail import KIND_EMAIL, OutboxEmail, decode_email
from payportal.persistence import Store, tables
from payportal.persistence.keys import create_api_key_async
from payportal.processors.sandbox import SANDBOX, Faults, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor
from payportal.web import install_web
from tests import artifacts

from .api_harness import CARDS, SECRET, Api, DirectHandle
from .web_client import another_browser, browser_on, csrf_token

SHARDS = 2
PASSWORD = "correct horse battery"


class Portal:
    """A browser-like client (its own cookie jar) plus the API helpers."""

    def __init__(self, client: TestClient[Any, Any], api: Api, store: Store, sandbox_url: str,
                 publisher: StatusPublisher) -> None:  # fmt: skip
        self.client = client
        self.api = api
        self.store = store
        self.sandbox_url = sandbox_url
        self.publisher = publisher

    async def browser(self) -> TestClient[Any, Any]:
        """Another browser: same server, its own cookies."""
        return await another_browser(self.client)

    async def token(self, path: str = "/signin", client: TestClient[Any, Any] | None = None
                    ) -> str:  # fmt: skip
        return await csrf_token(client or self.client, path)

    async def post(
        self, path: str, data: dict[str, Any], *, token: str | None = None,
        client: TestClient[Any, Any] | None = None, **kwargs: Any,
    ) -> ClientResponse:  # fmt: skip
        client = client or self.client
        if token is None:
            token = await self.token("/signin" if path in ("/signin", "/reset") else "/security",
                                     client)  # fmt: skip
        return await client.post(path, data={"csrf_token": token, **data},
                                 allow_redirects=False, **kwargs)  # fmt: skip

    async def sign_in(self, email: str, password: str = PASSWORD,
                      client: TestClient[Any, Any] | None = None) -> ClientResponse:  # fmt: skip
        client = client or self.client
        token = await self.token("/signin", client)
        return await client.post("/signin", data={
            "csrf_token": token, "email": email, "password": password, "next": "/",
        }, allow_redirects=False)  # fmt: skip

    async def payer(self, email: str, *, invoices: tuple[int, ...] = (125_000, 48_050)
                    ) -> str:  # fmt: skip
        """A new account with invoices (the first overdue) and a payer with PASSWORD."""
        account_id = await self.api.account()
        today = dt.date.today()
        for n, amount in enumerate(invoices):
            due = today + dt.timedelta(days=-10 + 20 * n)
            await self.api.invoice(account_id, amount, due, number=f"INV-{n + 1}")
        await self.api.ok("POST", f"/v1/accounts/{account_id}/payers",
                          json={"email": email, "password": PASSWORD})  # fmt: skip
        return account_id

    async def card_token(self, card: str = "visa") -> dict[str, str]:
        """What the hosted fields post to the page: the sandbox's token for a test card."""
        async with self.client.session.post(f"{self.sandbox_url}/v1/tokens", json={
            "type": "card", "number": CARDS[card], "exp_month": 12, "exp_year": 2035,
            "cvc": "123",
        }) as response:  # fmt: skip
            assert response.status == 200
            reply = await response.json()
        return {k: str(reply[k]) for k in ("token", "brand", "last4", "exp_month", "exp_year")}

    async def outbox(self, template_subject: str) -> list[OutboxEmail]:
        async with self.store.engine.connect() as connection:
            rows = (await connection.execute(sa.select(tables.outbox.c.payload).where(
                tables.outbox.c.kind == KIND_EMAIL))).all()  # fmt: skip
        emails = [decode_email(self.store.engine, r.payload) for r in rows]
        return [e for e in emails if template_subject in e.subject]


@pytest.fixture
async def portal(database_url: str, aiohttp_server: Any) -> AsyncIterator[Portal]:
    store = await Store.connect(database_url)
    sandbox_app = create_sandbox_app(callback_url=None, webhook_secret=SECRET, faults=Faults())
    sandbox_server: TestServer = await aiohttp_server(sandbox_app, host="127.0.0.1")
    sandbox_url = str(sandbox_server.make_url("")).rstrip("/")
    processor = SandboxProcessor(sandbox_url, timeout_ms=2_000)
    router = ShardRouter(
        [DirectHandle(AccountShardCore(i, store)) for i in range(SHARDS)], batch_max_wait_ms=1
    )
    streams = MemoryStatusStreams()
    app = create_app(router=router, store=store, processor=processor)
    app[STATUS_STREAMS] = streams
    app[LIVE_WAIT_S] = 0.05
    install_web(app, settings=None, processor_origin=sandbox_url)
    # As serve mounts them: the processor's signed callbacks beside the pages.
    add_callback_routes(app, store=store, router=router, secrets={"sandbox": [SECRET]})
    artifacts.keep_documents(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = await browser_on(server)
    key = await create_api_key_async(store, "tests")
    api = Api(client, processor, sandbox_app[SANDBOX], key, store)
    publisher = StatusPublisher(store, streams, shard_ids=range(SHARDS))
    try:
        yield Portal(client, api, store, sandbox_url, publisher)
    finally:
        await client.close()
        await router.drain()
        await processor.close()
        await streams.close()
        await store.close()


def _email() -> str:
    return f"payer-{uuid.uuid4().hex[:8]}@example.com"


def _set_cookie(response: ClientResponse, name: str) -> str:
    for header in response.headers.getall("Set-Cookie", []):
        if header.startswith(name + "="):
            return str(header)
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers}")


# -- headers ---------------------------------------------------------------------------------


async def test_every_page_has_a_csp_with_a_fresh_nonce_and_the_security_headers(
    portal: Portal,
) -> None:
    nonces = []
    for _ in range(2):
        response = await portal.client.get("/signin")
        assert response.status == 200
        html = await response.text()
        csp = response.headers["Content-Security-Policy"]
        nonce = re.search(r"script-src 'nonce-([^']+)'", csp)
        assert nonce is not None, csp
        assert f'nonce="{nonce.group(1)}"' in html
        nonces.append(nonce.group(1))
        assert "frame-ancestors 'none'" in csp
        assert f"frame-src {portal.sandbox_url}" in csp
        assert "default-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        assert response.headers["Cache-Control"] == "no-store"
    assert nonces[0] != nonces[1]


async def test_static_files_are_cached_and_api_errors_stay_json_while_pages_get_html(
    portal: Portal,
) -> None:
    page = await portal.client.get("/signin")
    css = re.search(r'href="(/static/app\.css\?v=[^"]+)"', await page.text())
    assert css is not None
    static = await portal.client.get(css.group(1))
    assert static.status == 200
    assert "max-age=31536000" in static.headers["Cache-Control"]
    missing_page = await portal.client.get("/no/such/page")
    assert missing_page.status == 404
    assert missing_page.content_type == "text/html"
    assert "Page not found" in await missing_page.text()
    missing_api = await portal.client.get("/v1/no/such/route")
    assert missing_api.status == 404
    assert missing_api.content_type == "application/json"
    assert (await missing_api.json())["error"]["code"] == "resource_missing"


async def test_the_session_cookie_is_host_prefixed_secure_httponly_and_lax(
    portal: Portal, capfd: pytest.CaptureFixture[str],
) -> None:
    email = _email()
    await portal.payer(email)
    # Requests that succeed are logged at debug: turned on here, so the line whose
    # contents are checked below is written at all.
    http_logger = logging.getLogger("payportal.http")
    level = http_logger.level
    http_logger.setLevel(logging.DEBUG)
    try:
        response = await portal.sign_in(email)
    finally:
        http_logger.setLevel(level)
    assert response.status == 303
    header = _set_cookie(response, "__Host-payportal_session")
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite"} <= attributes
    assert "domain" not in attributes
    assert "Path=/" in header
    assert "SameSite=Lax" in header
    cookie = SimpleCookie()
    cookie.load(header)
    token = cookie["__Host-payportal_session"].value
    # Stored hashed only: the cookie's value is nowhere in the database.
    async with portal.store.engine.connect() as connection:
        rows = (await connection.execute(sa.text("SELECT token_hash FROM portal_sessions"))).all()
    assert rows
    assert all(token not in r.token_hash for r in rows)
    # Neither the password typed nor the cookie reach the logs.
    logged = capfd.readouterr()
    assert "path=/signin" in logged.out + logged.err
    assert PASSWORD not in logged.out + logged.err
    assert token not in logged.out + logged.err


# -- CSRF ------------------------------------------------------------------------------------


async def test_state_changing_requests_without_the_csrf_token_are_refused(portal: Portal) -> None:
    email = _email()
    account_id = await portal.payer(email)
    await portal.client.get("/signin")  # the browser has its CSRF cookie
    no_token = await portal.client.post(
        "/signin", data={"email": email, "password": PASSWORD}, allow_redirects=False
    )
    assert no_token.status == 403
    assert no_token.content_type == "text/html"
    wrong = await portal.post("/signin", {"email": email, "password": PASSWORD}, token="x" * 43)
    assert wrong.status == 403
    assert (await portal.sign_in(email)).status == 303
    # Signed in: a payment form without the token moves no money.
    pay = await portal.client.post("/pay", data={
        "account": account_id, "amount": "10.00", "method": "card",
        "idempotency_key": uuid.uuid4().hex, **(await portal.card_token()),
    }, allow_redirects=False)  # fmt: skip
    assert pay.status == 403
    assert portal.api.charges() == []
    # A token from before sign-in is tied to the old session: refused too.
    stale = await portal.token("/signin", await portal.browser())
    assert (await portal.post("/signout", {}, token=stale)).status == 403


async def test_a_request_from_another_origin_is_refused_even_with_a_token(portal: Portal) -> None:
    email = _email()
    await portal.payer(email)
    token = await portal.token()
    response = await portal.post(
        "/signin", {"email": email, "password": PASSWORD}, token=token,
        headers={"Origin": "https://evil.example"},
    )  # fmt: skip
    assert response.status == 403
    response = await portal.post(
        "/signin", {"email": email, "password": PASSWORD}, token=token,
        headers={"Sec-Fetch-Site": "cross-site"},
    )  # fmt: skip
    assert response.status == 403


# -- sessions --------------------------------------------------------------------------------


async def test_signing_in_rotates_the_session_and_the_old_one_stops_working(
    portal: Portal,
) -> None:
    email = _email()
    await portal.payer(email)
    first = await portal.sign_in(email)
    old = SimpleCookie()
    old.load(_set_cookie(first, "__Host-payportal_session"))
    second = await portal.sign_in(email)  # already signed in: still a new session
    assert second.status == 303
    new = SimpleCookie()
    new.load(_set_cookie(second, "__Host-payportal_session"))
    old_value = old["__Host-payportal_session"].value
    assert new["__Host-payportal_session"].value != old_value
    assert (await portal.client.get("/", allow_redirects=False)).status == 200
    stale = await portal.browser()
    stale.session.cookie_jar.update_cookies(
        {"__Host-payportal_session": old_value}, stale.make_url("/")
    )
    response = await stale.get("/", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/signin")
    await stale.close()


async def test_sign_out_everywhere_ends_every_browser_and_api_session(portal: Portal) -> None:
    email = _email()
    await portal.payer(email)
    other = await portal.browser()
    assert (await portal.sign_in(email)).status == 303
    assert (await portal.sign_in(email, client=other)).status == 303
    api_session = await portal.api.ok("POST", "/v1/payer/sessions", headers={},
                                      json={"email": email, "password": PASSWORD})  # fmt: skip
    bearer = {"Authorization": f"Bearer {api_session['token']}"}
    security = await portal.client.get("/security")
    assert (await security.text()).count("data-session") == 2
    response = await portal.post("/security/signout-everywhere", {})
    assert response.status == 303
    for client in (portal.client, other):
        page = await client.get("/", allow_redirects=False)
        assert page.status == 303
    # The API caches a verified token for a few seconds (auth.CACHE_TTL_S): skip that wait.
    portal.client.app[AUTHENTICATOR]._cache.clear()
    status, _, _ = await portal.api.call("GET", "/v1/payer/accounts", headers=bearer)
    assert status == 401
    await other.close()


async def test_changing_the_password_needs_the_current_one_and_ends_other_sessions(
    portal: Portal,
) -> None:
    email = _email()
    await portal.payer(email)
    other = await portal.browser()
    await portal.sign_in(email)
    await portal.sign_in(email, client=other)
    wrong = await portal.post("/security/password", {
        "current_password": "not it at all", "new_password": "a brand new passphrase",
        "confirm": "a brand new passphrase",
    })  # fmt: skip
    assert wrong.status == 400
    assert "current password is not right" in await wrong.text()
    changed = await portal.post("/security/password", {
        "current_password": PASSWORD, "new_password": "a brand new passphrase",
        "confirm": "a brand new passphrase",
    })  # fmt: skip
    assert changed.status == 303
    assert (await portal.client.get("/", allow_redirects=False)).status == 200
    assert (await other.get("/", allow_redirects=False)).status == 303
    assert (await portal.sign_in(email, PASSWORD, client=other)).status == 401
    assert (await portal.sign_in(email, "a brand new passphrase", client=other)).status == 303
    await other.close()


async def test_ten_failures_lock_the_email_and_then_even_the_right_password_is_refused(
    portal: Portal,
) -> None:
    email = _email()
    await portal.payer(email)
    statuses = [(await portal.sign_in(email, f"wrong-{n}")).status for n in range(10)]
    assert statuses[:9] == [401] * 9
    assert statuses[9] in (401, 429)
    locked = await portal.sign_in(email)
    assert locked.status == 429
    assert "Too many attempts" in await locked.text()
    assert int(locked.headers["Retry-After"]) > 15 * 60
    # The API counts the same failures: the lock holds there too.
    status, body, _ = await portal.api.call(
        "POST", "/v1/payer/sessions", headers={}, json={"email": email, "password": PASSWORD}
    )
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"


# -- links -----------------------------------------------------------------------------------


def _link(email: OutboxEmail, path: str) -> str:
    match = re.search(rf"https?://[^/\s]+(/{path}/[A-Za-z0-9_-]+)", email.text)
    assert match is not None, email.text
    return match.group(1)


async def test_a_reset_link_is_sent_only_to_known_emails_answers_alike_and_works_once(
    portal: Portal, capfd: pytest.CaptureFixture[str],
) -> None:
    email = _email()
    await portal.payer(email)
    known = await portal.post("/reset", {"email": email})
    unknown = await portal.post("/reset", {"email": _email()})
    assert known.status == unknown.status == 200
    strip = re.compile(r'content="[^"]*"|value="[^"]*"|nonce="[^"]*"|\?v=[^"]+')
    assert strip.sub("", await known.text()) == strip.sub("", await unknown.text())
    # The link is written after the answer (its timing must not tell): wait for it.
    await asyncio.gather(*portal.client.app[TASKS])
    mails = await portal.outbox("Reset your payment portal password")
    assert [m.to for m in mails] == [(email,)]
    link = _link(mails[0], "reset")
    assert (await portal.client.get(link)).status == 200
    token = await portal.token(link)
    short = await portal.post(link, {"password": "short", "confirm": "short"}, token=token)
    assert short.status == 400
    assert "at least 10 characters" in await short.text()
    used = await portal.post(link, {"password": "reset passphrase ok",
                                    "confirm": "reset passphrase ok"}, token=token)  # fmt: skip
    assert used.status == 303
    again = await portal.post(link, {"password": "another passphrase",
                                     "confirm": "another passphrase"})  # fmt: skip
    assert again.status == 410
    assert (await portal.client.get(link)).status == 410
    assert (await portal.sign_in(email, PASSWORD)).status == 401
    assert (await portal.sign_in(email, "reset passphrase ok")).status == 303
    # The link's token is a secret: request logs name the route, not the path.
    logged = capfd.readouterr()
    assert "/reset/{token}" in logged.out + logged.err
    assert link.rsplit("/", 1)[1] not in logged.out + logged.err


async def test_a_payer_added_without_a_password_is_invited_once_and_chooses_one(
    portal: Portal,
) -> None:
    account_id = await portal.api.account()
    email = _email()
    for _ in range(2):
        body = await portal.api.ok("POST", f"/v1/accounts/{account_id}/payers",
                                   json={"email": email})  # fmt: skip
        assert body["has_password"] is False
    mails = await portal.outbox("invited to pay")
    assert [m.to for m in mails] == [(email,)]
    assert "Ada Lovelace" in mails[0].text
    link = _link(mails[0], "invite")
    token = await portal.token(link)
    response = await portal.post(link, {"password": "my first passphrase",
                                        "confirm": "my first passphrase"}, token=token)  # fmt: skip
    assert response.status == 303
    assert response.headers["Location"] == "/"
    dashboard = await portal.client.get("/")
    assert dashboard.status == 200
    assert "Ada Lovelace" in await dashboard.text()
    payer = await portal.api.ok("POST", f"/v1/accounts/{account_id}/payers", json={"email": email})
    assert payer["has_password"] is True
    assert (await portal.post(link, {"password": "x" * 12, "confirm": "x" * 12})).status == 410


# -- another payer's objects -------------------------------------------------------------------


async def test_another_payers_account_payment_and_methods_are_not_found(portal: Portal) -> None:
    owner_email, other_email = _email(), _email()
    account_id = await portal.payer(owner_email)
    await portal.payer(other_email)
    assert (await portal.sign_in(owner_email)).status == 303
    token = await portal.token("/pay?account=" + account_id)
    paid = await portal.post("/pay", {
        "account": account_id, "amount": "10.00", "method": "card", "save": "yes",
        "idempotency_key": uuid.uuid4().hex, **(await portal.card_token()),
    }, token=token)  # fmt: skip
    assert paid.status == 303
    payment_id = paid.headers["Location"].rsplit("/", 1)[1]
    methods = await portal.api.ok("GET", f"/v1/accounts/{account_id}/payment_methods")
    method_id = methods["data"][0]["id"]

    intruder = await portal.browser()
    assert (await portal.sign_in(other_email, client=intruder)).status == 303
    token = await portal.token("/security", intruder)
    for path in (f"/payments/{payment_id}", f"/?account={account_id}",
                 f"/pay?account={account_id}", f"/payments?account={account_id}",
                 f"/methods?account={account_id}", f"/statements?account={account_id}",
                 f"/statements/download?account={account_id}&format=csv",
                 f"/payments/{payment_id}/status.json", f"/payments/{payment_id}/events",
                 f"/accounts/{account_id}/events",
                 f"/pay/preview.json?account={account_id}&amount=1.00"):  # fmt: skip
        response = await intruder.get(path, allow_redirects=False)
        assert response.status == 404, path
    for path in (f"/methods/{method_id}/remove", f"/methods/{method_id}/default"):
        response = await intruder.post(path, data={"csrf_token": token}, allow_redirects=False)
        assert response.status == 404, path
    response = await intruder.post("/pay", data={
        "csrf_token": token, "account": account_id, "amount": "5.00", "method": method_id,
        "idempotency_key": uuid.uuid4().hex,
    }, allow_redirects=False)  # fmt: skip
    assert response.status == 404
    assert len(portal.api.charges()) == 1
    await intruder.close()


async def test_a_session_idle_for_half_an_hour_is_over(portal: Portal) -> None:
    email = _email()
    await portal.payer(email)
    await portal.sign_in(email)
    assert (await portal.client.get("/", allow_redirects=False)).status == 200
    idle_since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=31)
    async with portal.store.engine.begin() as connection:
        await connection.execute(sa.text("UPDATE portal_sessions SET last_seen_at = :at"),
                                 {"at": idle_since})  # fmt: skip
    response = await portal.client.get("/payments", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/signin?next=/payments"
