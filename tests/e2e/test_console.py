"""The merchant console through aiohttp's test client on SQLite and PostgreSQL: sign-in
with a merchant API key (valid, invalid, rate limited), the session stored only hashed
and ended by sign-out or by revoking the key, CSRF on every form, and the pages showing
the seeded accounts, payments, retry queue and headline figures."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from payportal.accounting import open_exceptions, render_revenue_csv, revenue_report
from payportal.actors import AccountShardCore, ShardRouter
from payportal.engine.money import format_minor
from payportal.http import create_app
from payportal.persistence import Store
from payportal.persistence.keys import create_api_key_async
from payportal.persistence.tables import api_keys, payments
from payportal.persistence.tables_accounting import reconciliation_exceptions
from payportal.persistence.tables_portal import portal_sessions
from payportal.processors.sandbox import SANDBOX, Faults, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor
from payportal.web import install_web
from payportal.web.console import CONSOLE_COOKIE

from .api_harness import SECRET, Api, DirectHandle
from .web_client import another_browser, browser_on, csrf_token, csrf_token_in

SHARDS = 2
# The read models are projected after the commit; the seed waits for them this long at most.
PROJECTION_WAIT_S = 10.0


class Console:
    def __init__(self, client: TestClient[Any, Any], api: Api, key: str) -> None:
        self.client = client
        self.api = api
        self.key = key

    async def browser(self) -> TestClient[Any, Any]:
        """Another browser: same server, its own cookies."""
        return await another_browser(self.client)

    async def token(self, client: TestClient[Any, Any] | None = None) -> str:
        return await csrf_token(client or self.client, "/console/signin")

    async def sign_in(self, key: str | None = None, client: TestClient[Any, Any] | None = None
                      ) -> ClientResponse:  # fmt: skip
        client = client or self.client
        token = await self.token(client)
        return await client.post("/console/signin", data={
            "csrf_token": token, "api_key": key if key is not None else self.key,
        }, allow_redirects=False)  # fmt: skip

    async def page(self, path: str, client: TestClient[Any, Any] | None = None) -> str:
        response = await (client or self.client).get(path, allow_redirects=False)
        assert response.status == 200, (path, response.status, await response.text())
        return await response.text()


@pytest.fixture
async def console(database_url: str, aiohttp_server: Any) -> AsyncIterator[Console]:
    store = await Store.connect(database_url)
    sandbox_app = create_sandbox_app(callback_url=None, webhook_secret=SECRET, faults=Faults())
    sandbox_server: TestServer = await aiohttp_server(sandbox_app, host="127.0.0.1")
    sandbox_url = str(sandbox_server.make_url("")).rstrip("/")
    processor = SandboxProcessor(sandbox_url, timeout_ms=2_000)
    router = ShardRouter(
        [DirectHandle(AccountShardCore(i, store)) for i in range(SHARDS)], batch_max_wait_ms=1
    )
    app = create_app(router=router, store=store, processor=processor)
    install_web(app, settings=None, processor_origin=sandbox_url)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = await browser_on(server)
    key = await create_api_key_async(store, "back office")
    api = Api(client, processor, sandbox_app[SANDBOX], key, store)
    try:
        yield Console(client, api, key)
    finally:
        await client.close()
        await router.drain()
        await processor.close()
        await store.close()


def _set_cookie(response: ClientResponse, name: str) -> str | None:
    for header in response.headers.getall("Set-Cookie", []):
        if header.startswith(name + "="):
            return str(header)
    return None


async def _seed(console: Console) -> dict[str, str]:
    """An account with an invoice and three payments: paid, hard-declined, retrying."""
    api = console.api
    body = await api.ok("POST", "/v1/accounts", json={
        "name": "Grace Hopper", "email": "grace@example.com", "currency": "USD",
        "external_ref": "ERP-7731",
    })  # fmt: skip
    account_id = str(body["id"])
    other = await api.ok("POST", "/v1/accounts", json={
        "name": "Alan Turing", "email": "alan@example.com", "currency": "USD",
    })  # fmt: skip
    await api.invoice(account_id, 50_000, dt.date(2026, 1, 31))
    ids = {"account": account_id, "other": str(other["id"])}
    for name, card, amount in [("paid", "visa", 12_345), ("hard", "do_not_honor", 700),
                               ("retrying", "insufficient_funds", 400)]:  # fmt: skip
        method = await api.payment_method(account_id, card)
        status, reply, raw = await api.pay(account_id, amount, method)
        assert status in (200, 402), raw
        ids[name] = reply["id"] if status == 200 else reply["error"]["payment"]["id"]
    # Lists read the read models, projected just after the commit.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROJECTION_WAIT_S
    finished = (
        sa.select(sa.func.count()).select_from(payments).where(payments.c.status != "processing")
    )
    while loop.time() < deadline:
        async with api.store.engine.connect() as connection:
            n = (await connection.execute(finished)).scalar()
        if n == 3:
            break
        await asyncio.sleep(0.02)
    return ids


async def test_sign_in_with_a_live_key_stores_only_a_hash_of_the_session(
    console: Console,
) -> None:
    response = await console.sign_in()
    assert response.status == 303
    assert response.headers["Location"] == "/console"
    cookie = _set_cookie(response, CONSOLE_COOKIE)
    assert cookie is not None
    attributes = cookie.lower()
    assert "secure" in attributes
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    assert "domain=" not in attributes
    token = cookie.split(";", 1)[0].split("=", 1)[1]
    async with console.api.store.engine.connect() as connection:
        stored = [tuple(r) for r in await connection.execute(sa.select(portal_sessions))]
    assert any(hashlib.sha256(token.encode()).hexdigest() in row for row in stored)
    flat = repr(stored)
    assert token not in flat
    assert console.key not in flat
    page = await console.page("/console")
    assert "Headline figures" in page
    assert "back office" in page  # the key's name, never the key
    assert console.key not in page


async def test_an_invalid_key_is_refused_and_no_session_is_started(console: Console) -> None:
    for key in ("sk_not_a_key", "", "pt_payer_token", console.key + "x"):
        response = await console.sign_in(key)
        assert response.status == 401, key
        assert _set_cookie(response, CONSOLE_COOKIE) is None
        assert "not a live API key" in await response.text()
    response = await console.client.get("/console", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/console/signin"


async def test_a_revoked_key_ends_its_sessions(console: Console) -> None:
    assert (await console.sign_in()).status == 303
    await console.page("/console/accounts")
    async with console.api.store.engine.begin() as connection:
        await connection.execute(sa.update(api_keys).values(revoked_at=dt.datetime.now(dt.UTC)))
    response = await console.client.get("/console/accounts", allow_redirects=False)
    assert response.status == 303
    assert (await console.sign_in()).status == 401


async def test_sign_out_revokes_the_session_even_for_a_copied_cookie(console: Console) -> None:
    response = await console.sign_in()
    cookie = _set_cookie(response, CONSOLE_COOKIE)
    assert cookie is not None
    token = cookie.split(";", 1)[0].split("=", 1)[1]
    csrf = csrf_token_in(await console.page("/console"))
    response = await console.client.post("/console/signout", data={"csrf_token": csrf},
                                         allow_redirects=False)  # fmt: skip
    assert response.status == 303
    copied = await console.browser()
    try:
        copied.session.cookie_jar.update_cookies({CONSOLE_COOKIE: token})
        response = await copied.get("/console", allow_redirects=False)
        assert response.status == 303
    finally:
        await copied.session.close()  # the server is shared


async def test_forms_without_the_csrf_token_are_refused(console: Console) -> None:
    response = await console.client.post("/console/signin", data={"api_key": console.key},
                                         allow_redirects=False)  # fmt: skip
    assert response.status == 403
    assert _set_cookie(response, CONSOLE_COOKIE) is None
    await console.token()  # the browser now holds a CSRF cookie
    response = await console.client.post(
        "/console/signin", data={"api_key": console.key, "csrf_token": "forged"},
        allow_redirects=False,
    )  # fmt: skip
    assert response.status == 403
    # A token from another browser is no good in this one.
    other = await console.browser()
    try:
        foreign = await console.token(other)
    finally:
        await other.session.close()  # the server is shared
    response = await console.client.post(
        "/console/signin", data={"api_key": console.key, "csrf_token": foreign},
        allow_redirects=False,
    )  # fmt: skip
    assert response.status == 403
    assert (await console.sign_in()).status == 303
    response = await console.client.post("/console/signout", allow_redirects=False)
    assert response.status == 403
    response = await console.client.post(
        "/console/signin", data={"api_key": console.key, "csrf_token": await console.token()},
        headers={"Origin": "https://evil.example"}, allow_redirects=False,
    )  # fmt: skip
    assert response.status == 403


async def test_failed_sign_ins_are_limited_per_address(console: Console) -> None:
    for _ in range(10):
        assert (await console.sign_in("sk_wrong")).status == 401
    response = await console.sign_in("sk_wrong")
    assert response.status == 429
    assert int(response.headers["Retry-After"]) > 0
    # Even the right key waits: the limit is decided before the key is looked at.
    assert (await console.sign_in()).status == 429


async def test_pages_require_a_session(console: Console) -> None:
    for path in ("/console", "/console/accounts", "/console/payments", "/console/retries",
                 "/console/revenue", "/console/exceptions"):  # fmt: skip
        response = await console.client.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"] == "/console/signin"


async def test_pages_show_the_seeded_accounts_payments_and_retry_queue(console: Console) -> None:
    ids = await _seed(console)
    assert (await console.sign_in()).status == 303

    accounts = await console.page("/console/accounts")
    assert ids["account"] in accounts
    assert ids["other"] in accounts
    # The balance shown is the shard's: the invoice less the payment that succeeded.
    balance = (await console.api.ok("GET", f"/v1/accounts/{ids['account']}"))["balance"]
    assert balance["outstanding"] == 50_000 - 12_345
    assert format_minor(50_000 - 12_345, "USD") in accounts
    found = await console.page("/console/accounts?q=erp-77")
    assert ids["account"] in found
    assert ids["other"] not in found
    assert ids["other"] not in await console.page("/console/accounts?q=grace%40")
    assert "No accounts match" in await console.page("/console/accounts?q=%25_nothing")

    every = await console.page("/console/payments")
    for name in ("paid", "hard", "retrying"):
        assert ids[name] in every
    retrying = await console.page("/console/payments?status=retry_scheduled")
    assert ids["retrying"] in retrying
    assert ids["paid"] not in retrying
    assert "insufficient_funds" in retrying
    by_account = await console.page(f"/console/payments?account={ids['other']}")
    assert "No payments match" in by_account
    response = await console.client.get("/console/payments?from=yesterday")
    assert response.status == 400
    assert "YYYY-MM-DD" in await response.text()

    queue = await console.page("/console/retries")
    assert ids["retrying"] in queue
    assert ids["paid"] not in queue
    assert ids["hard"] not in queue
    assert "insufficient_funds" in queue

    overview = await console.page("/console?window=1h")
    # One succeeded, one hard decline; the retrying payment has not finished.
    assert 'data-figure="success_rate">50.00 %<' in overview
    assert "1 succeeded, 1 failed (2 counted)" in overview



async def test_revenue_page_shows_the_accounting_report_and_its_csv(console: Console) -> None:
    await _seed(console)
    assert (await console.sign_in()).status == 303
    expected = await revenue_report(console.api.store.engine)
    page = await console.page("/console/revenue")
    accuracy = f"{float(expected.accuracy) * 100:.2f} %"
    assert f'data-figure="accuracy">{accuracy}<' in page
    response = await console.client.get("/console/revenue?format=csv")
    assert response.status == 200
    assert response.content_type == "text/csv"
    assert (await response.text()) == render_revenue_csv(expected)


async def _exception(console: Console, exception_id: str) -> None:
    async with console.api.store.engine.begin() as connection:
        await connection.execute(sa.insert(reconciliation_exceptions).values(
            id=exception_id, dedupe_key=f"amount_mismatch:{exception_id}", kind="amount_mismatch",
            processor="sandbox", payout_id="po_1", charge_id="ch_1", payment_id="pay_1",
            account_id="acct_1", currency="USD", expected_minor=1_000, reported_minor=900,
            detail="The payout reports less than was captured.", status="open",
        ))  # fmt: skip


async def test_exceptions_are_listed_and_resolved_with_a_reason(console: Console) -> None:
    await _exception(console, "rx_first")
    await _exception(console, "rx_second")
    assert (await console.sign_in()).status == 303
    page = await console.page("/console/exceptions")
    assert 'data-exception="rx_first"' in page
    assert 'data-exception="rx_second"' in page
    assert "$9.00" in page or "9.00" in page
    token = csrf_token_in(page)

    response = await console.client.post("/console/exceptions/rx_first/resolve",
                                         data={"resolution": "written_off"},
                                         allow_redirects=False)  # fmt: skip
    assert response.status == 403
    response = await console.client.post("/console/exceptions/rx_first/resolve",
                                         data={"csrf_token": token, "resolution": "bogus"},
                                         allow_redirects=False)  # fmt: skip
    assert response.status == 400
    assert "Choose how it was resolved" in await response.text()
    response = await console.client.post("/console/exceptions/rx_nope/resolve",
                                         data={"csrf_token": token, "resolution": "written_off"},
                                         allow_redirects=False)  # fmt: skip
    assert response.status == 404
    response = await console.client.post(
        "/console/exceptions/rx_first/resolve",
        data={"csrf_token": token, "resolution": "processor_corrected", "note": "Fee adjusted"},
        allow_redirects=False,
    )  # fmt: skip
    assert response.status == 303
    assert response.headers["Location"] == "/console/exceptions?resolved=rx_first"

    left = await open_exceptions(console.api.store.engine)
    assert [x.id for x in left] == ["rx_second"]
    async with console.api.store.engine.connect() as connection:
        row = (await connection.execute(sa.select(reconciliation_exceptions).where(
            reconciliation_exceptions.c.id == "rx_first"))).one()  # fmt: skip
    assert row.status == "resolved"
    assert row.resolution == "processor_corrected"
    assert row.note.startswith("Fee adjusted")
    page = await console.page("/console/exceptions?resolved=rx_first")
    assert 'data-exception="rx_first"' not in page
    assert "Exception rx_first resolved" in page


async def test_console_pages_carry_the_security_headers(console: Console) -> None:
    response = await console.client.get("/console/signin")
    assert response.status == 200
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'nonce-" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = await response.text()
    assert 'autocomplete="off"' in page
    assert '<label for="api_key">' in page


async def test_every_live_key_sees_every_account(console: Console) -> None:
    """Single-tenant: one merchant per deployment, so a second key sees what the first does."""
    ids = await _seed(console)
    second = await create_api_key_async(console.api.store, "second desk")
    other = await console.browser()
    try:
        assert (await console.sign_in(second, client=other)).status == 303
        assert ids["account"] in await console.page("/console/accounts", client=other)
    finally:
        await other.session.close()  # the server is shared
