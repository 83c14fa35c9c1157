"""Bad input on every route is refused with the contract's error, writes nothing, logs
nothing it should not, and is never a 5xx — on SQLite and PostgreSQL.

How: the whole front door (``front_door``: API, live streams, portal, console, signed
callbacks; request-rate limits raised so they never answer in the checks' place) with a
world of two accounts, each with a payer and an object of every kind. Every route comes
from the route table or the app's router (``bad_input``), so a new route is attacked too:

- another principal: every route that names an object (path id, ``account`` in the query
  or the body), called by the other account's payer, and every merchant-only route
  called by a payer → 404 in the error shape, holding none of the object's data; the
  portal's pages and their JSON with another payer's ids → 404;
- bodies: unknown fields, malformed JSON, invalid UTF-8, bodies past 256 KiB and 1 MiB,
  every field with each wrong JSON type, every integer field with 2^63, 2^64, 10^30, -1
  and -2^63-1, every text field with a control character (\\x00, \\n, \\x0b, \\x7f,
  \\u2028) → a 4xx in the error shape;
- query values: the same for every field of every query type, and an unknown parameter;
- headers, written byte for byte on a socket (a client library refuses to send them):
  a control character in Authorization, Idempotency-Key, Last-Event-ID, Content-Type and
  Cookie where each is read → 4xx; in X-Request-Id and X-Forwarded-For, which are
  advisory (a request id that is not plain is replaced; a forwarded address is believed
  only from a trusted proxy), the request is answered as without them, the bad value is
  not echoed and not logged (no log injection);
- ids in paths: every route with an ``{id}`` (API, pages, console) with a percent-encoded
  control character or 300 characters in its place → 4xx;
- the portal's and the console's forms, found on their pages and posted with their CSRF
  token (the payment form with a new card, so every card field is read): every field
  with control characters, invalid UTF-8, an oversized value, and numbers too large
  where a number goes → a 4xx page.

The header, cookie and page-id cases run on SQLite only: they test the HTTP layer and
the pages, not the database. A run takes about a minute.

For every test: the row count of every table and the journal's newest id are the same
after as before; the log, as ``serve`` writes it with payportal at DEBUG, holds none of
the values sent (each carries a canary), no known secret (API key, session tokens, the
payers' password) and no full ``sk_``/``pt_``/``whsec_`` credential.

Deliberate differences, documented here:

- a byte HTTP/1.1 forbids in a header (\\x00, \\n, \\x0b, \\x7f) is refused by aiohttp's
  HTTP parser before the app sees the request, with aiohttp's own plain-text 400, which
  quotes the offending header line back to the client that sent it; the checks accept
  that answer for those requests (the log still must not hold the line);
- X-Request-Id and X-Forwarded-For are advisory (see above), so a bad one changes
  nothing about the answer;
- a form field the form does not have is ignored, as browsers and their extensions add
  some; a checkbox is on only with the page's value; and a form shown again with the
  errors holds what the person typed (escaped);
- a cookie that names no session is no session: a page answers as to a signed-out
  browser.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
from yarl import URL

from payportal.http.routes import ROUTE_TABLE, RouteSpec

from .bad_input import (
    CANARY,
    CONTROL_CHARACTERS,
    HUGE_NUMBERS,
    OVERSIZED,
    PASSWORD,
    WRONG_TYPES,
    Answer,
    Findings,
    ServeLog,
    World,
    build_world,
    contract_error,
    example_body,
    example_query,
    field_kinds,
    fill_path,
    forms_of,
    leaks,
    page_routes,
    query_fields,
    raw_request,
    row_counts,
    serve_log,
)
from .front_door import FrontDoor, serving_front_door
from .web_client import csrf_token, csrf_token_in

__all__ = ["serve_log"]

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# An answer still arriving after this long is an event stream that was opened.
STREAM_WAIT_S = 5
# Every request-rate limit × this: the suite sends thousands of requests from one address.
RATE_LIMITS_SCALE = 10_000


@pytest.fixture
async def door(database_url: str, aiohttp_server: Any) -> AsyncIterator[FrontDoor]:
    async with serving_front_door(database_url, aiohttp_server,
                                  rate_limits_scale=RATE_LIMITS_SCALE) as serving:  # fmt: skip
        yield serving


class Sweep:
    """The world, the findings, and the checks every test ends with."""

    def __init__(self, door: FrontDoor, world: World, log: ServeLog) -> None:
        self.door = door
        self.world = world
        self.log = log
        self.findings = Findings()
        self.before: dict[str, int] = {}
        # Signed in before the snapshot (signing in writes a session): the payer of
        # ``mine`` in the portal, the merchant in the console, and a signed-out browser.
        self.payer: Any = None
        self.console: Any = None
        self.visitor: Any = None

    async def call(self, label: str, method: str, path: str, *, headers: dict[str, str],
                   json: Any = None, data: bytes | None = None,
                   params: dict[str, str] | None = None) -> Answer:  # fmt: skip
        if json is not None:
            data = msgspec.json.encode(json)
        if data is not None:
            headers = {"content-type": "application/json", **headers}
        response = await self.door.client.request(method, path, headers=headers, data=data,
                                                  params=params, allow_redirects=False)  # fmt: skip
        try:
            async with asyncio.timeout(STREAM_WAIT_S):
                body = await response.read()
        except TimeoutError:
            body = b"(an event stream, still open)"  # answered 200: the finding
            response.close()
        return Answer(f"{label}: {method} {path} {params or ''}", response.status,
                      response.content_type, body)  # fmt: skip

    async def finish(self) -> None:
        await self.door.settle()
        after = await row_counts(self.door.store)
        changed = {k: (self.before.get(k), v) for k, v in after.items() if self.before.get(k) != v}
        found = leaks(self.log.text(), self.world.secrets(self.door.api.merchant))
        self.findings.assert_none()
        assert changed == {}, f"bad input wrote rows (table: before, after): {changed}"
        assert found == [], f"the log holds {found}"
        print(f"answers checked: {self.findings.answers}")


@pytest.fixture
async def sweep(door: FrontDoor, serve_log: ServeLog) -> AsyncIterator[Sweep]:
    world = await build_world(door)
    swept = Sweep(door, world, serve_log)
    swept.payer = await door.browser()
    await _sign_in(swept.payer, "/signin", {"email": world.mine.email, "password": PASSWORD,
                                            "next": "/"})  # fmt: skip
    swept.console = await door.browser()
    key = door.api.merchant["Authorization"].removeprefix("Bearer ")
    await _sign_in(swept.console, "/console/signin", {"api_key": key})
    swept.visitor = await door.browser()
    await door.settle()
    swept.before = await row_counts(door.store)
    try:
        yield swept
    finally:
        for browser in (swept.payer, swept.console, swept.visitor):
            await browser.close()


async def _sign_in(browser: Any, path: str, fields: dict[str, str]) -> None:
    token = await csrf_token(browser, path)
    response = await browser.post(path, data={"csrf_token": token, **fields},
                                  allow_redirects=False)  # fmt: skip
    assert response.status == 303, (path, response.status, await response.text())


def _keyed(route: RouteSpec, headers: dict[str, str]) -> dict[str, str]:
    if route.idempotency is None:
        return headers
    return {**headers, "Idempotency-Key": uuid.uuid4().hex}


def _not_found(answer: Answer, forbidden: list[str]) -> list[str]:
    problems = contract_error(answer)
    if answer.status != 404:
        problems.append(f"{answer.status}, not 404")
    text = answer.body.decode(errors="replace")
    problems += [f"holds {value!r}" for value in forbidden if value in text]
    return problems


# -- another principal ---------------------------------------------------------------------


def _names_an_object(route: RouteSpec, body: dict[str, Any] | None, world: World) -> bool:
    theirs = set(world.theirs.objects.values())
    return "{" in route.path or "account" in query_fields(route.query) or bool(
        body and theirs & {v for v in body.values() if isinstance(v, str)}
    )


async def test_another_principals_objects_are_404_on_every_route(sweep: Sweep) -> None:
    world, merchant_only = sweep.world, 0
    theirs = world.theirs
    forbidden = [theirs.email, *(v for k, v in theirs.objects.items() if k != "account")]
    for route in ROUTE_TABLE:
        if route.auth in ("none", "payer"):
            continue
        cases: list[tuple[str, Any]] = []
        if route.auth == "merchant":
            merchant_only += 1
            cases.append(("a payer on a merchant-only route", world.mine))
        body = example_body(route, theirs, world.plan) if route.body is not None else None
        if _names_an_object(route, body, world):
            cases.append(("another payer's object", theirs))
        for why, party in cases:
            body = example_body(route, party, world.plan) if route.body is not None else None
            params = example_query(route, party)
            answer = await sweep.call(why, route.method, fill_path(route.path, party),
                                      headers=_keyed(route, world.mine.payer), json=body,
                                      params=params)  # fmt: skip
            sweep.findings.check(answer, _not_found(answer, forbidden))
    assert merchant_only > 5
    await sweep.finish()


# The HTTP layer's and the pages' rules: the database is not what they test.
@SQLITE_ONLY
async def test_the_portals_pages_answer_404_for_another_payers_objects(sweep: Sweep) -> None:
    theirs = sweep.world.theirs
    browser = sweep.payer
    token = csrf_token_in(await (await browser.get("/security")).text())
    forbidden = [theirs.email, theirs.objects["payment"].rsplit("_", 1)[-1]]
    pages = [("GET", f"/payments/{theirs.objects['payment']}", None),
             ("GET", f"/payments/{theirs.objects['payment']}/status.json", None),
             ("GET", f"/payments/{theirs.objects['payment']}/events", None),
             ("GET", f"/accounts/{theirs.account}/events", None),
             ("GET", f"/pay?account={theirs.account}", None),
             ("GET", f"/pay/preview.json?account={theirs.account}&amount=1.00", None),
             ("GET", f"/statements/download?account={theirs.account}&format=csv", None),
             ("POST", f"/methods/{theirs.objects['payment_method']}/remove", {}),
             ("POST", f"/methods/{theirs.objects['payment_method']}/default", {})]  # fmt: skip
    for method, path, form in pages:
        data = None if form is None else {"csrf_token": token, **form}
        response = await browser.request(method, path, data=data, allow_redirects=False)
        answer = Answer(f"page {method} {path}", response.status, response.content_type,
                        await response.read())  # fmt: skip
        problems = [] if answer.status == 404 else [f"{answer.status}, not 404"]
        text = answer.body.decode(errors="replace")
        problems += [f"holds {value!r}" for value in forbidden if value in text]
        sweep.findings.check(answer, problems)
    await sweep.finish()


# Control characters as a path carries them (percent-encoded), and a segment that is
# too long to be an id. No canary: a request's path is logged on purpose.
BAD_IDS = ("acct_%00x", "x%0Ay", "x%0By", "x%7Fy", "x%E2%80%A8y", "x" * 300)


async def test_a_path_id_that_is_no_id_is_answered_4xx_on_every_route(sweep: Sweep) -> None:
    merchant = sweep.door.api.merchant
    api_routes = [(r.method, r.path, r) for r in ROUTE_TABLE if "{" in r.path]
    pages = [(m, p, None) for m, p in page_routes(sweep.door.server) if "{" in p]
    for method, path, route in api_routes + pages:
        for bad in BAD_IDS:
            target = URL(re.sub(r"{[^}]+}", bad, path), encoded=True)
            if route is not None:
                body = (example_body(route, sweep.world.mine, sweep.world.plan)
                        if route.body is not None else None)  # fmt: skip
                answer = await sweep.call("an id that is no id", method, target,  # type: ignore[arg-type]
                                          headers=_keyed(route, merchant), json=body)  # fmt: skip
                sweep.findings.check(answer, contract_error(answer))
                continue
            browser = sweep.payer if not path.startswith("/console") else sweep.console
            token = csrf_token_in(await (await browser.get("/security")).text())
            data = {"csrf_token": token} if method == "POST" else None
            response = await browser.request(method, target, data=data, allow_redirects=False)
            answer = Answer(f"page {method} {target}", response.status, response.content_type,
                            await response.read())  # fmt: skip
            sweep.findings.check(answer, [] if 400 <= answer.status < 500
                                 else [f"status {answer.status}"])  # fmt: skip
    await sweep.finish()


# -- bodies ------------------------------------------------------------------------------------


def _bad_bodies(base: dict[str, Any], kinds: dict[str, set[str]]) -> list[tuple[str, bytes]]:
    """(what, raw body) of every bad body derived from a good one."""
    text_fields = [f for f, k in kinds.items() if "str" in k]
    some_text = text_fields[0] if text_fields else f"zz_{CANARY}"
    out = [
        ("unknown field", msgspec.json.encode({**base, f"zz_{CANARY}": CANARY})),
        ("malformed JSON", msgspec.json.encode(base)[:-1] + f', "{CANARY}": '.encode()),
        ("not UTF-8", msgspec.json.encode({**base, some_text: CANARY + "\u00f6"})
         .replace("\u00f6".encode(), b"\xf6")),
        ("a JSON array", msgspec.json.encode([CANARY])),
    ]  # fmt: skip
    out += [(f"{size} bytes", msgspec.json.encode({**base, some_text: CANARY + "x" * size}))
            for size in OVERSIZED]  # fmt: skip
    for name, accepted in kinds.items():
        for kind, value in WRONG_TYPES.items():
            if kind not in accepted:
                out.append((f"{name} as {kind}", msgspec.json.encode({**base, name: value})))
        if "int" in accepted:
            out += [(f"{name}={n}", msgspec.json.encode({**base, name: n})) for n in HUGE_NUMBERS]
            out.append((f"{name} as text", msgspec.json.encode({**base, name: "7"})))
        if "str" in accepted:
            good = base.get(name)
            good = good if isinstance(good, str) else "x"
            middle = len(good) // 2
            out += [(f"{name} with {c!r}", msgspec.json.encode(
                {**base, name: good[:middle] + c + CANARY + good[middle:]}))
                for c in CONTROL_CHARACTERS]  # fmt: skip
    return out


async def test_every_body_refuses_bad_input_with_the_contracts_error(sweep: Sweep) -> None:
    world, merchant = sweep.world, sweep.door.api.merchant
    routes = [r for r in ROUTE_TABLE if r.body is not None]
    for route in routes:
        headers = {} if route.auth == "none" else merchant
        base = example_body(route, world.mine, world.plan)
        path = fill_path(route.path, world.mine)
        for what, raw in _bad_bodies(base, field_kinds(route.body)):
            answer = await sweep.call(what, route.method, path, data=raw,
                                      headers=_keyed(route, headers))  # fmt: skip
            sweep.findings.check(answer, contract_error(answer))
    assert len(routes) > 10
    await sweep.finish()


# -- query values --------------------------------------------------------------------------


def _bad_queries(base: dict[str, str], kinds: dict[str, set[str]]
                 ) -> list[tuple[str, dict[str, str]]]:  # fmt: skip
    out = [("unknown parameter", {**base, f"zz_{CANARY}": CANARY})]
    for name, accepted in kinds.items():
        good = base.get(name, "1" if "int" in accepted else "x")
        middle = len(good) // 2
        out += [(f"{name} with {c!r}", {**base, name: good[:middle] + c + CANARY + good[middle:]})
                for c in CONTROL_CHARACTERS]  # fmt: skip
        if "int" in accepted:
            out += [(f"{name}={n}", {**base, name: str(n)}) for n in HUGE_NUMBERS]
            out.append((f"{name} as text", {**base, name: CANARY}))
        if "bool" in accepted:
            out.append((f"{name} as text", {**base, name: CANARY}))
    return out


async def test_every_query_value_refuses_bad_input_with_the_contracts_error(sweep: Sweep) -> None:
    world, merchant = sweep.world, sweep.door.api.merchant
    routes = [r for r in ROUTE_TABLE if r.query is not None]
    for route in routes:
        headers = {} if route.auth == "none" else merchant
        path = fill_path(route.path, world.mine)
        base = example_query(route, world.mine)
        for what, params in _bad_queries(base, query_fields(route.query)):
            answer = await sweep.call(what, route.method, path, params=params, headers=headers)
            sweep.findings.check(answer, contract_error(answer))
    assert len(routes) > 10
    await sweep.finish()


# -- headers ---------------------------------------------------------------------------------


def _refused_by_parser(answer: Answer) -> bool:
    """aiohttp's own 400 for bytes HTTP/1.1 forbids in a header (see the module)."""
    return answer.status == 400 and answer.content_type != "application/json"


def _header_problems(answer: Answer) -> list[str]:
    if _refused_by_parser(answer):
        return []
    problems = contract_error(answer)
    if CANARY.encode() in answer.body:
        problems.append("the answer echoes the header")
    return problems


def _target(route: RouteSpec, party: Any, params: dict[str, str]) -> str:
    path = fill_path(route.path, party)
    return f"{path}?{urlencode(params)}" if params else path


# The HTTP layer's and the pages' rules: the database is not what they test.
@SQLITE_ONLY
async def test_control_characters_in_every_header_the_app_reads_are_refused(sweep: Sweep) -> None:
    door, world = sweep.door, sweep.world
    server = door.server
    key = door.api.merchant["Authorization"].removeprefix("Bearer ")
    for route in ROUTE_TABLE:
        target = _target(route, world.mine, example_query(route, world.mine))
        body = (msgspec.json.encode(example_body(route, world.mine, world.plan))
                if route.body is not None else b"")  # fmt: skip
        json_type = ("Content-Type", b"application/json")
        for c in CONTROL_CHARACTERS:
            bad = (c + CANARY).encode()
            auth = ("Authorization", f"Bearer {key}".encode() + bad)
            # An operation without credentials (sign-in, health) does not read the header.
            cases = [[auth, json_type]] if route.auth != "none" else []
            if route.idempotency is not None:
                cases.append([("Authorization", f"Bearer {key}".encode()), json_type,
                              ("Idempotency-Key", b"key-" + bad)])  # fmt: skip
            if route.body is not None:
                cases.append([("Authorization", f"Bearer {key}".encode()),
                              ("Content-Type", b"application/json" + bad),
                              ("Idempotency-Key", uuid.uuid4().hex.encode())])  # fmt: skip
            if route.events is not None:
                cases.append([("Authorization", f"Bearer {key}".encode()),
                              ("Last-Event-ID", b"1" + bad)])  # fmt: skip
            for headers in cases:
                answer = await raw_request(server, route.method, target, headers, body)
                sweep.findings.check(answer, _header_problems(answer))
            if route.method == "GET" and route.events is None:
                await _advisory_headers(sweep, route, target, key, bad)
    await sweep.finish()


async def _advisory_headers(sweep: Sweep, route: RouteSpec, target: str, key: str,
                            bad: bytes) -> None:  # fmt: skip
    """X-Request-Id and X-Forwarded-For: answered as without them, never echoed."""
    auth = ("Authorization", f"Bearer {key}".encode())
    plain = await raw_request(sweep.door.server, route.method, target, [auth])
    for name in ("X-Request-Id", "X-Forwarded-For"):
        answer = await raw_request(sweep.door.server, route.method, target,
                                   [auth, (name, b"1.2.3.4" + bad)])  # fmt: skip
        problems = []
        if not _refused_by_parser(answer):
            if answer.status != plain.status:
                problems.append(f"{answer.status} where the same request without {name} "
                                f"was {plain.status}")  # fmt: skip
            if CANARY.encode() in answer.body:
                problems.append("the answer echoes the header")
        sweep.findings.check(answer, problems)


# The HTTP layer's and the pages' rules: the database is not what they test.
@SQLITE_ONLY
async def test_control_characters_in_the_pages_cookies_are_refused(sweep: Sweep) -> None:
    server = sweep.door.server
    for method, path in page_routes(server):
        if "{" in path:
            continue
        for c in CONTROL_CHARACTERS:
            cookie = b"__Host-payportal_session=" + (c + CANARY).encode()
            answer = await raw_request(server, method, path, [("Cookie", cookie)])
            problems = []
            if not _refused_by_parser(answer):
                # A cookie that names no session is no session: the page as signed out
                # (200, or 303 to sign in), or the refusal a signed-out browser gets.
                if not (400 <= answer.status < 500 or answer.status in (200, 303)):
                    problems.append(f"status {answer.status}")
                if CANARY.encode() in answer.body:
                    problems.append("the answer echoes the cookie")
            sweep.findings.check(answer, problems)
    await sweep.finish()


# -- the portal's and the console's forms ---------------------------------------------------

# (which browser, page): where the forms are found. Sign-out forms are left out: they
# have no field to corrupt, and a browser's extra field is ignored by every form (as
# browsers and their extensions add some), so they would sign out.
FORM_PAGES = [("visitor", "/signin"), ("visitor", "/reset"), ("visitor", "/console/signin"),
              ("payer", "/security"), ("payer", "/methods"), ("payer", "/pay?account={mine}"),
              ("payer", "/"), ("console", "/console/exceptions")]  # fmt: skip
SIGN_OUT = ("/signout", "/console/signout", "/security/signout-everywhere")
# Fields that hold a number (often empty on the page, filled in by the payer or by the
# processor's hosted card fields).
NUMERIC_FIELDS = frozenset({"amount", "exp_month", "exp_year", "last4"})
_NUMERIC = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _bad_forms(fields: dict[str, str], checkboxes: set[str]) -> list[tuple[str, bytes]]:
    """(what, url-encoded body) of every bad form derived from a page's own. A checkbox
    is on when it holds the page's value and off otherwise, as a browser sends it or
    not: another value is "off", not bad input."""
    def encoded(values: dict[str, str]) -> bytes:
        return urlencode(values).encode()

    out = []
    for name, value in fields.items():
        if name == "csrf_token" or name in checkboxes:
            continue
        middle = len(value) // 2
        out += [(f"{name} with {c!r}", encoded(
            {**fields, name: value[:middle] + c + CANARY + value[middle:]}))
            for c in CONTROL_CHARACTERS]  # fmt: skip
        out.append((f"{name} not UTF-8", encoded({**fields, name: CANARY}).replace(
            CANARY.encode(), CANARY.encode() + b"%F6")))  # fmt: skip
        out.append((f"{name} oversized", encoded({**fields, name: CANARY + "x" * OVERSIZED[0]})))
        if _NUMERIC.fullmatch(value) or name in NUMERIC_FIELDS:
            out += [(f"{name}={n}", encoded({**fields, name: str(n)})) for n in HUGE_NUMBERS]
    return out


async def test_the_portals_and_consoles_forms_refuse_bad_input(sweep: Sweep) -> None:
    browsers = {"visitor": sweep.visitor, "payer": sweep.payer, "console": sweep.console}
    posted: set[str] = set()
    for who, page in FORM_PAGES:
        browser = browsers[who]
        response = await browser.get(page.format(mine=sweep.world.mine.account))
        assert response.status == 200, (page, response.status)
        html = await response.text()
        forms = forms_of(html)
        for action, fields in forms.forms.items():
            if action in SIGN_OUT or "csrf_token" not in fields:
                continue
            posted.add(action.split("?")[0])
            if action == "/pay":
                # Pay with a new card, so every card field is read (a saved method, the
                # page's default, leaves them unread).
                token = await sweep.door.api.processor.tokenize_test_card("4242424242424242")
                fields = {**fields, "method": "card", "token": token, "brand": "visa",
                          "last4": "4242", "exp_month": "12", "exp_year": "2030"}  # fmt: skip
            for what, data in _bad_forms(fields, forms.checkboxes):
                sent = await browser.post(action, data=data, allow_redirects=False, headers={
                    "content-type": "application/x-www-form-urlencoded"})  # fmt: skip
                answer = Answer(f"{who} form {action} {what}", sent.status, sent.content_type,
                                await sent.read())  # fmt: skip
                # A form shown again with what the person typed is how a page says what
                # was wrong; the template escapes it.
                problems = [] if 400 <= answer.status < 500 else [f"status {answer.status}"]
                sweep.findings.check(answer, problems)
    assert {"/signin", "/reset", "/console/signin", "/security/password", "/pay"} <= posted
    await sweep.finish()
