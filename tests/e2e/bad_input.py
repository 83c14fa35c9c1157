"""Support for ``test_bad_input_everywhere``: the world it attacks, the inputs it sends, and
what it watches (the row counts of every table, the log output, the answers).

Everything is derived from the route table (``payportal.http.routes.ROUTE_TABLE``) and
the app's router, so a new route is attacked without a change here; a route whose ``{id}``
names a kind of object this module cannot make fails loudly (``ID_KINDS``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
import structlog
from aiohttp.test_utils import TestServer

from payportal.http.routes import ROUTE_TABLE, RouteSpec
from payportal.logs import configure_logging
from payportal.persistence import Store

from .front_door import FrontDoor

# In every value the suite sends, so a value that reaches a log is found there. It looks
# like nothing the redaction pipeline masks: the suite checks that bodies, queries and
# headers are not logged at all, not that the redaction caught them.
CANARY = "Zebra-Quokka-4417"
PASSWORD = "Tr0ub4dor&3-bad-input"  # test-only
CONTROL_CHARACTERS = ("\x00", "\n", "\x0b", "\x7f", "\u2028")
HUGE_NUMBERS = (2**63, 2**64, 10**30, -1, -(2**63) - 1)
# A body past the API's 256 KiB and one past aiohttp's 1 MiB limit.
OVERSIZED = (300 * 1024, 2 * 1024 * 1024)

# ``{id}`` of a route, by the path before it: the kind of object it names.
ID_KINDS = {
    "/v1/accounts/": "account",
    "/v1/invoices/": "invoice",
    "/v1/payment_methods/": "payment_method",
    "/v1/payments/": "payment",
    "/v1/subscriptions/": "subscription",
    "/v1/reconciliation/exceptions/": "reconciliation_exception",
    # Pages
    "/payments/": "payment",
    "/methods/": "payment_method",
    "/accounts/": "account",
    "/console/exceptions/": "reconciliation_exception",
}


def id_kind(path: str) -> str:
    head = path.split("{", 1)[0]
    kind = ID_KINDS.get(head)
    assert kind is not None, (
        f"{path}: the bad-input suite does not know which object {head}{{…}} names; "
        "add it to tests/e2e/bad_input.py ID_KINDS (and World)"
    )
    return kind


@dataclass
class Party:
    account: str
    payer: dict[str, str]  # Authorization header of the account's payer
    email: str
    objects: dict[str, str] = field(default_factory=dict)  # kind → id


@dataclass
class World:
    """Two accounts, each with a payer and objects of every kind; plans are the
    merchant's."""

    mine: Party
    theirs: Party
    plan: str

    def secrets(self, merchant: dict[str, str]) -> list[str]:
        parties = (self.mine, self.theirs)
        tokens = [p.payer["Authorization"].removeprefix("Bearer ") for p in parties]
        return [merchant["Authorization"].removeprefix("Bearer "), *tokens, PASSWORD]


async def _party(door: FrontDoor, plan: str) -> Party:
    api = door.api
    account = await api.account()
    email = f"payer-{uuid.uuid4().hex[:8]}@example.com"
    payer = await api.payer(account, email, PASSWORD)
    invoice = await api.invoice(account, 90_000, dt.date.today() + dt.timedelta(days=30))
    method = await api.payment_method(account)
    status, payment, _ = await api.pay(account, 500, method)
    assert status == 200, payment
    subscription = await api.ok(
        "POST", f"/v1/accounts/{account}/subscriptions",
        json={"plan": plan, "payment_method": method, "autopay": False},
    )  # fmt: skip
    return Party(account, payer, email, {
        "account": account, "invoice": invoice, "payment_method": method,
        "payment": payment["id"], "subscription": subscription["id"],
        # Reconciliation finds these; one that does not exist is answered as one that
        # is not the caller's (404), which is what is checked.
        "reconciliation_exception": "rex_0123456789abcdef",
    })  # fmt: skip


async def build_world(door: FrontDoor) -> World:
    plan = await door.api.ok("POST", "/v1/plans", json={
        "name": "Gold", "amount": 1_000, "currency": "USD", "interval": "month"})  # fmt: skip
    world = World(await _party(door, plan["id"]), await _party(door, plan["id"]), plan["id"])
    await door.settle()
    return world


def fill_path(path: str, party: Party) -> str:
    if "{" not in path:
        return path
    return re.sub(r"{[^}]+}", party.objects[id_kind(path)], path)


# -- bodies and queries ---------------------------------------------------------------------


def example_body(route: RouteSpec, party: Party, plan: str) -> dict[str, Any]:
    """A body the route accepts for ``party`` (its objects, the merchant's plan)."""
    known: dict[str, dict[str, Any]] = {
        "AccountCreate": {"name": "Ada", "email": "ada@example.com", "currency": "USD"},
        "InvoiceCreate": {"amount": 1_000, "due_date": "2026-03-01", "description": "Work"},
        "PayerCreate": {"email": f"new-{uuid.uuid4().hex[:6]}@example.com",
                        "password": PASSWORD},
        "PayerSessionCreate": {"email": party.email, "password": PASSWORD},
        "PaymentMethodCreate": {"token": "tok_visa", "brand": "visa", "last4": "4242"},
        "PaymentCreate": {"account": party.account, "amount": 100, "currency": "USD",
                          "payment_method": party.objects["payment_method"]},
        "RefundCreate": {"amount": 1},
        "PlanCreate": {"name": "Silver", "amount": 500, "currency": "USD",
                       "interval": "month"},
        "SubscriptionCreate": {"plan": plan, "autopay": False},
        "SubscriptionCancel": {"at_period_end": True},
        "PlanChange": {"plan": plan},
        "InvoiceItemCreate": {"amount": 700, "description": "Extra"},
        "ExceptionResolve": {"resolution": "written_off", "note": "checked"},
    }  # fmt: skip
    name = route.body.__name__
    if name in known:
        return dict(known[name])
    return _generated(route.body)


def _generated(type_: Any) -> dict[str, Any]:
    """For a body type this module does not know yet: its required fields, each with a
    plain value of its type (weaker: such a body may still be refused for its values)."""
    out: dict[str, Any] = {}
    for f in msgspec.inspect.type_info(type_).fields:
        if f.required:
            out[f.encode_name] = _plain(f.type)
    return out


def _plain(info: Any) -> Any:
    if isinstance(info, msgspec.inspect.Metadata):
        return _plain(info.type)
    if isinstance(info, msgspec.inspect.UnionType):
        return _plain(info.types[0])
    if isinstance(info, msgspec.inspect.LiteralType):
        return info.values[0]
    return {
        msgspec.inspect.IntType: 1, msgspec.inspect.BoolType: False,
        msgspec.inspect.DateType: "2026-01-01", msgspec.inspect.FloatType: 1.0,
    }.get(type(info), "x")  # fmt: skip


def field_kinds(type_: Any) -> dict[str, set[str]]:
    """Field (as sent) → the JSON kinds it takes: "int", "str", "bool", "null", …"""
    out: dict[str, set[str]] = {}
    for f in msgspec.inspect.type_info(type_).fields:
        out[f.encode_name] = _kinds(f.type)
    return out


def _kinds(info: Any) -> set[str]:
    if isinstance(info, msgspec.inspect.Metadata):
        return _kinds(info.type)
    if isinstance(info, msgspec.inspect.UnionType):
        return set().union(*(_kinds(t) for t in info.types))
    return {{
        msgspec.inspect.IntType: "int", msgspec.inspect.BoolType: "bool",
        msgspec.inspect.NoneType: "null", msgspec.inspect.FloatType: "float",
        msgspec.inspect.ListType: "list", msgspec.inspect.DictType: "object",
        msgspec.inspect.StructType: "object",
    }.get(type(info), "str")}  # fmt: skip


# A value of each JSON kind, sent where the field takes other kinds.
WRONG_TYPES: dict[str, Any] = {
    "str": CANARY, "int": 7, "float": 1.5, "bool": True, "null": None, "list": [CANARY],
    "object": {"k": CANARY},
}


def query_fields(type_: Any) -> dict[str, set[str]]:
    return field_kinds(type_) if type_ is not None else {}


def example_query(route: RouteSpec, party: Party) -> dict[str, str]:
    """Query values the route accepts for ``party``: its required fields, and its
    account where the query names one."""
    if route.query is None:
        return {}
    values = {k: str(v).lower() if isinstance(v, bool) else str(v)
              for k, v in _generated(route.query).items()}  # fmt: skip
    if "account" in query_fields(route.query):
        values["account"] = party.account
    return values


def page_routes(server: TestServer) -> list[tuple[str, str]]:
    """(method, canonical path) of every route the app serves that is not in the API's
    table (the portal, the console, the callbacks, static files excluded)."""
    api = {(r.method, r.path) for r in ROUTE_TABLE}
    out = []
    for route in server.app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        path = resource.canonical
        if (route.method, path) in api or path.startswith(("/static", "/v1/processors")):
            continue
        out.append((route.method, path))
    return sorted(set(out))


class Forms(HTMLParser):
    """The POST forms of a page: action → {field: value}; and the names of checkboxes,
    whose value is only ever compared with the one the page gives them."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, str]] = {}
        self.checkboxes: set[str] = set()
        self._current: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and values.get("method", "").lower() == "post":
            self._current = self.forms.setdefault(values.get("action", ""), {})
        elif tag in ("input", "select", "textarea", "button") and self._current is not None:
            name = values.get("name")
            if name and values.get("type") == "checkbox":
                self.checkboxes.add(name)
            if name and (values.get("type") not in ("radio", "checkbox")
                         or "checked" in values or name not in self._current):  # fmt: skip
                self._current[name] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def forms_of(html: str) -> Forms:
    parser = Forms()
    parser.feed(html)
    return parser


# -- what is watched ------------------------------------------------------------------------


async def row_counts(store: Store) -> dict[str, int]:
    """Rows of every table the database has, and the journal's newest id."""
    async with store.engine.connect() as connection:
        names = await connection.run_sync(lambda c: sa.inspect(c).get_table_names())
        counts = {}
        for name in sorted(names):
            table = sa.table(name)
            counts[name] = int((await connection.execute(
                sa.select(sa.func.count()).select_from(table))).scalar_one())  # fmt: skip
        journal = (await connection.execute(sa.text("SELECT max(id) FROM journal"))).scalar()
        counts["journal.max_id"] = int(journal or 0)
    return counts


@dataclass
class Answer:
    label: str
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            return None


def contract_error(answer: Answer) -> list[str]:
    """What is wrong with ``answer`` as the API's error: 4xx, JSON
    ``{"error": {"type", "code", "message", ...}}``."""
    problems = []
    if not 400 <= answer.status < 500:
        problems.append(f"status {answer.status}")
    body = answer.json()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not all(
        isinstance(error.get(k), str) and error.get(k) for k in ("type", "code", "message")
    ):
        problems.append(f"not the contract's error shape: {answer.body[:200]!r}")
    return problems


@dataclass
class Findings:
    """Every answer that broke a rule, and how many answers there were."""

    problems: list[str] = field(default_factory=list)
    answers: int = 0

    def check(self, answer: Answer, problems: list[str]) -> None:
        self.answers += 1
        self.problems += [f"{answer.label}: {p}" for p in problems]
        if answer.status >= 500:
            self.problems.append(f"{answer.label}: a {answer.status}")

    def assert_none(self) -> None:
        assert self.problems == [], (
            f"{len(self.problems)} of {self.answers} answers broke a rule:\n"
            + "\n".join(self.problems[:80])
        )


# -- raw HTTP: headers a client library refuses to send --------------------------------------


async def raw_request(server: TestServer, method: str, target: str,
                      headers: list[tuple[str, bytes]], body: bytes = b"") -> Answer:  # fmt: skip
    """One request written byte for byte (control characters included) on a new
    connection; the answer as read until the server closes it."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    lines = [f"{method} {target} HTTP/1.1".encode(), f"Host: {server.host}".encode(),
             b"Connection: close", f"Content-Length: {len(body)}".encode()]  # fmt: skip
    lines += [name.encode() + b": " + value for name, value in headers]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    label = f"{method} {target} {headers!r}"[:300]
    try:
        async with asyncio.timeout(5):
            raw = await reader.read()
    except TimeoutError:
        # An event stream answered 200 never ends: that is the finding.
        raw = b"HTTP/1.1 200 stream\r\n\r\n"
    finally:
        writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    content_type = ""
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = value.strip().split(";")[0]
        if name.strip().lower() == "transfer-encoding" and "chunked" in value:
            content = _unchunked(content)
    return Answer(label, status, content_type, content)


def _unchunked(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


# -- the log, as serve writes it --------------------------------------------------------------


class ServeLog:
    """payportal's logging as ``serve`` configures it (payportal's loggers at DEBUG, the
    rest at WARNING, one redacting pipeline), written to a buffer instead of stderr."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def text(self) -> str:
        return self.buffer.getvalue()


@pytest.fixture
def serve_log() -> Iterator[ServeLog]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ours = logging.getLogger("payportal")
    ours_level = ours.level
    captured = ServeLog()
    configure_logging(level=logging.DEBUG, stream=captured.buffer)
    try:
        yield captured
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        ours.setLevel(ours_level)


_PREFIXED = re.compile(r"\b(sk|pt|whsec)_[A-Za-z0-9_\-+/=]{12,}")


def leaks(log: str, secrets: list[str]) -> list[str]:
    """What the log must not hold: the canary (a request's body, query or header), a
    known secret, a full key or token."""
    found = [f"{CANARY!r} (a value the test sent)"] if CANARY in log else []
    found += [f"secret {s[:6]}…" for s in secrets if s in log]
    found += [f"key or token {m.group()[:8]}…" for m in _PREFIXED.finditer(log)]
    return found
