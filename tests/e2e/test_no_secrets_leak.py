"""No card number, CVC, password or secret leaks: a full API flow is driven, then scanned."""

# How: every test card (tokenized with a CVC), a one-off token, a refund, payer logins, API
# keys and a signed callback go through the in-process API on SQLite and PostgreSQL while
# structlog and the stdlib's logging are captured at DEBUG. Then every log record, every
# row of every table (bytes as latin-1 and decoded msgpack/JSON) and every HTTP response
# body is scanned for Luhn-valid 13-19 digit runs, the card numbers used, CVC fields,
# the passwords, ``whsec_`` secrets and full ``sk_`` keys / ``pt_`` session tokens (the
# latter allowed only in the one response that creates them). Emails and statements do
# not exist yet (``make run`` says the mail catcher is not built); the outbox is scanned.

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
import structlog
from aiohttp import web
from standardwebhooks import Webhook
from stdnum import luhn

from payportal.http.callbacks import callback_routes
from payportal.http.typedefs import ROUTER
from payportal.persistence import tables
from payportal.persistence.keys import create_api_key_async

from .api_harness import CARDS, SECRET, SHARDS, Api

# A distinct CVC per card, so a hit names the card it came from.
CVCS = {name: f"{731 + i * 17}" for i, name in enumerate(CARDS)}
ONE_OFF_CARD = "378282246310005"  # American Express test number, 15 digits
ONE_OFF_CVC = "4096"
PASSWORD = "Tr0ub4dor&3-leak-check"  # test-only
WRONG_PASSWORD = "Wrong-horse-battery-9"  # test-only
BOGUS_KEY = "sk_" + "bogusKeyThatNeverExistedButLooksReal0123456789"  # test-only
BOGUS_SESSION = "pt_" + "bogusSessionTokenThatNeverExisted0123456789"  # test-only
CALLBACK_URL = "/v1/processors/sandbox/callbacks"

# A whole word of 13-19 digits: not part of a hex or base64 token (whose digit runs would
# pass Luhn one time in ten), nor either side of a decimal point (a float's digits). A
# card number glued to letters is still caught when it is one of ours (exact match).
_PLAIN_RUN = re.compile(r"(?<![A-Za-z0-9])(?<!\d\.)\d{13,19}(?![A-Za-z0-9])(?!\.\d)")
# Groups of 4 split by single spaces or dashes ("4242 4242 4242 4242"); other groupings
# (Amex 4-6-5) are caught by the exact-number check on the separator-free text.
_GROUPED_RUN = re.compile(r"(?<![A-Za-z0-9])\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?(?![A-Za-z0-9])")
_SEPARATORS = re.compile(r"[ -]")
_CVC_KEY = re.compile(r"(?i)cvc|cvv|cvn|csc|security.?code|card.?code")
_CVC_TEXT = re.compile(r"(?i)(?:cvc|cvv|cvn|csc)\W{0,4}(\d{3,4})(?!\d)")
_SK = re.compile(r"\bsk_[A-Za-z0-9_\-]{16,}")
_PT = re.compile(r"\bpt_[A-Za-z0-9_\-]{16,}")


@dataclass
class Artefact:
    kind: str  # "log", "row", "response"
    label: str
    text: str
    structured: Any = None
    # Secrets this artefact may hold: the one response that creates them.
    allowed: frozenset[str] = frozenset()


@dataclass
class Scanner:
    cards: list[str]
    cvcs: list[str]
    passwords: list[str]
    secrets: list[str] = field(default_factory=list)  # exact values: sk_, pt_, whsec_

    def hits(self, artefact: Artefact) -> list[str]:
        found: list[str] = []
        text = artefact.text
        squashed = _SEPARATORS.sub("", text)
        for match in _PLAIN_RUN.finditer(text):
            if luhn.is_valid(match.group()) and not _is_timestamp(match.group()):
                found.append(f"Luhn-valid digit run {match.group()}")
        for match in _GROUPED_RUN.finditer(text):
            digits = _SEPARATORS.sub("", match.group())
            if 13 <= len(digits) <= 19 and luhn.is_valid(digits):
                found.append(f"Luhn-valid grouped run {match.group()!r}")
        found += [f"card number {c}" for c in self.cards if c in squashed]
        found += [f"password {p!r}" for p in self.passwords if p in text]
        for match in _CVC_TEXT.finditer(text):
            if match.group(1) in self.cvcs:
                found.append(f"CVC in text {match.group()!r}")
        found += [f"CVC field {path}={value!r}" for path, value in _cvc_fields(artefact.structured)]
        if "whsec_" in text:
            found.append("whsec_ secret")
        for secret in self.secrets:
            if secret in text and secret not in artefact.allowed:
                found.append(f"secret {secret[:6]}…")
        for pattern in (_SK, _PT):
            for match in pattern.finditer(text):
                if match.group() not in artefact.allowed:
                    found.append(f"full key or token {match.group()[:6]}…")
        return [f"{artefact.kind} {artefact.label}: {hit}" for hit in dict.fromkeys(found)]


# Unix times in 2020-2039 (as seconds: 1577836800 to 2208988799) lead with 15-22, which no
# card network issues (MII 1 is airlines, Mastercard's 2-series starts at 2221).
_EPOCH_S = range(1_577_836_800, 2_208_988_800)


def _is_timestamp(run: str) -> bool:
    """A Unix time in milliseconds, microseconds or nanoseconds, not a card number."""
    return len(run) in (13, 16, 19) and int(run[:10]) in _EPOCH_S


def _cvc_fields(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every field named like a CVC that holds something."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if _CVC_KEY.search(str(key)) and item not in (None, "", b""):
                yield here, item
            yield from _cvc_fields(item, here)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _cvc_fields(item, f"{path}[{i}]")


def _decoded(value: bytes) -> list[Any]:
    """What bytes may hold: msgpack or JSON, where they decode."""
    out = []
    for decode in (msgspec.msgpack.decode, msgspec.json.decode):
        with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError, ValueError):
            out.append(decode(value))
    return out


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return " ".join([raw.decode("latin-1"), *(repr(d) for d in _decoded(raw))])
    return repr(value) if not isinstance(value, str) else value


# -- artefacts ------------------------------------------------------------------------------


def log_artefacts(structured: list[dict[str, Any]], records: list[logging.LogRecord]) -> list[
    Artefact
]:  # fmt: skip
    out = [
        Artefact("log", f"structlog[{i}] {entry.get('event')!r}",
                 " ".join(f"{k}={_text(v)}" for k, v in entry.items()), entry)
        for i, entry in enumerate(structured)
    ]
    for i, record in enumerate(records):
        # The message, its arguments, any traceback and every extra field; not the
        # record's own metadata (times, thread ids, source lines), whose long numbers
        # would pass for card numbers one time in ten.
        extra = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        parts = [record.getMessage(), f"msg={_text(record.msg)}", f"args={_text(record.args)}"]
        parts += [f"{k}={_text(v)}" for k, v in extra.items()]
        parts += [str(record.exc_text or ""), str(record.stack_info or "")]
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        out.append(Artefact("log", f"{record.name}[{i}]", "\n".join(parts), extra))
    return out


_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})))


async def database_artefacts(api: Api) -> tuple[list[Artefact], int, int]:
    """One artefact per row of every table; also (tables, rows)."""
    async with api.store.engine.connect() as connection:
        present = set(await connection.run_sync(lambda c: sa.inspect(c).get_table_names()))
        reflected = sa.MetaData()
        await connection.run_sync(lambda c: reflected.reflect(c))
        known = list(tables.metadata.sorted_tables)
        assert {t.name for t in known} <= present
        # Tables the migrations made that the metadata does not describe (alembic_version).
        names = {t.name for t in known}
        every = known + [t for t in reflected.sorted_tables if t.name not in names]
        out = []
        for table in every:
            for n, row in enumerate(await connection.execute(sa.select(table))):
                values = row._asdict()
                structured = {k: _decoded(bytes(v)) if isinstance(v, bytes | memoryview) else v
                              for k, v in values.items()}  # fmt: skip
                text = " ".join(f"{k}={_text(v)}" for k, v in values.items())
                out.append(Artefact("row", f"{table.name}[{n}]", text, structured))
    return out, len(every), len(out)


# -- the flow -------------------------------------------------------------------------------


class Recorder:
    """Every response body the test receives, each with the secrets it may carry."""

    def __init__(self, api: Api) -> None:
        self.responses: list[Artefact] = []
        self._call = api.call
        api.call = self.call  # type: ignore[method-assign]

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        status, body, raw = await self._call(method, path, **kwargs)
        self.add(f"{method} {path} {status}", raw, body)
        return status, body, raw

    def add(self, label: str, raw: bytes, body: Any) -> None:
        allowed = frozenset()
        if isinstance(body, dict) and str(body.get("token", "")).startswith("pt_"):
            allowed = frozenset({body["token"]})  # the session's creation shows it once
        self.responses.append(Artefact("response", label, _text(raw), body, allowed))


def _signed(body: bytes) -> dict[str, str]:
    event_id = f"evt_{uuid.uuid4().hex}"
    at = dt.datetime.now(dt.UTC)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(event_id, at, body.decode()),
    }


async def settle(api: Api) -> None:
    router = api.client.app[ROUTER]
    await router.drain()
    for shard_id in range(SHARDS):
        await api.store.project_pending(shard_id)


async def drive(api: Api, recorder: Recorder, aiohttp_client: Any) -> list[str]:
    """The whole flow; returns the secrets it made or presented (sk_, pt_)."""
    account = await api.account()
    await api.invoice(account, 5_000, dt.date(2026, 1, 1))
    paid: dict[str, Any] = {}
    for name, number in CARDS.items():
        token = await api.processor.tokenize_test_card(number, cvc=CVCS[name])
        method = await api.ok("POST", f"/v1/accounts/{account}/payment_methods", json={
            "token": token, "brand": "visa", "last4": number[-4:],
            "exp_month": 12, "exp_year": 2030,
        })  # fmt: skip
        status, body, _ = await api.pay(account, 1_000, method["id"])
        assert status in (200, 402), (name, status, body)
        paid[name] = body if status == 200 else body["error"]["payment"]
    assert paid["capture_timeout"]["status"] == "processing"
    assert paid["do_not_honor"]["status"] == "requires_payment_method"

    token = await api.processor.tokenize_test_card(ONE_OFF_CARD, cvc=ONE_OFF_CVC)
    one_off = await api.ok("POST", "/v1/payments", headers={
        **api.merchant, "Idempotency-Key": uuid.uuid4().hex,
    }, json={"account": account, "amount": 700, "currency": "USD", "token": token})  # fmt: skip
    assert one_off["status"] == "succeeded", one_off

    refund = await api.ok("POST", f"/v1/payments/{paid['visa']['id']}/refunds",
                          headers={**api.merchant, "Idempotency-Key": uuid.uuid4().hex},
                          json={"amount": 400})  # fmt: skip
    assert refund["amount"] == 400

    email = f"payer-{uuid.uuid4().hex[:8]}@example.com"
    await api.ok("POST", f"/v1/accounts/{account}/payers",
                 json={"email": email, "password": PASSWORD})  # fmt: skip
    session = await api.ok("POST", "/v1/payer/sessions", headers={},
                           json={"email": email, "password": PASSWORD})  # fmt: skip
    refused, _, _ = await api.call("POST", "/v1/payer/sessions", headers={},
                                   json={"email": email, "password": WRONG_PASSWORD})  # fmt: skip
    assert refused == 401
    payer = {"Authorization": f"Bearer {session['token']}"}
    assert (await api.ok("GET", "/v1/payer/accounts", headers=payer))["data"]

    key = await create_api_key_async(api.store, "leak-check")
    await api.ok("GET", "/v1/accounts", headers={"Authorization": f"Bearer {key}"})
    for bogus in (BOGUS_KEY, BOGUS_SESSION):
        status, _, _ = await api.call("GET", "/v1/accounts",
                                      headers={"Authorization": f"Bearer {bogus}"})  # fmt: skip
        assert status == 401

    await api.ok("GET", "/v1/payments", params={"account": account, "limit": 100})
    await api.ok("GET", f"/v1/accounts/{account}/payment_methods")
    await api.ok("GET", f"/v1/accounts/{account}")

    # A signed callback: the capture the 3063 reply never brought.
    await settle(api)
    receiver_app = web.Application()
    receiver_app.add_routes(callback_routes(store=api.store, router=api.client.app[ROUTER],
                                            secrets={"sandbox": [SECRET]}))  # fmt: skip
    receiver = await aiohttp_client(receiver_app)
    attempt = paid["capture_timeout"]["attempts"][0]["id"]
    [charge] = [c for c in api.charges() if c.idempotency_key == attempt]
    body = msgspec.json.encode({"type": "charge.succeeded", "data": {
        "charge": charge.id, "attempt": attempt, "amount": 1_000, "currency": "usd"}})  # fmt: skip
    response = await receiver.post(CALLBACK_URL, data=body, headers=_signed(body))
    raw = await response.read()
    recorder.add(f"POST {CALLBACK_URL} {response.status}", raw, msgspec.json.decode(raw))
    assert response.status == 200, raw
    await settle(api)
    after = await api.ok("GET", f"/v1/payments/{paid['capture_timeout']['id']}")
    assert after["status"] == "succeeded"
    return [key, session["token"], BOGUS_KEY, BOGUS_SESSION, api.merchant["Authorization"][7:]]


async def test_no_card_data_password_or_secret_reaches_logs_database_or_responses(
    api: Api, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(api)
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy pins its own loggers at WARNING; at DEBUG they log every statement, its
    # parameters and the rows read, as a deployment with echo on would.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    with structlog.testing.capture_logs() as structured:
        secrets = await drive(api, recorder, aiohttp_client)
        # Let the sandbox's held 3063 reply and any background work finish and log.
        await asyncio.sleep(0.1)
    records = list(caplog.records)
    rows, table_count, row_count = await database_artefacts(api)
    logs = log_artefacts(structured, records)
    scanner = Scanner(
        cards=[*CARDS.values(), ONE_OFF_CARD], cvcs=[*CVCS.values(), ONE_OFF_CVC],
        passwords=[PASSWORD, WRONG_PASSWORD], secrets=[SECRET, *secrets],
    )  # fmt: skip
    artefacts = logs + rows + recorder.responses
    hits = [hit for artefact in artefacts for hit in scanner.hits(artefact)]

    print(
        f"artefacts_scanned={len(artefacts)} log_records={len(logs)} "
        f"(structlog={len(structured)} stdlib={len(records)}) tables={table_count} "
        f"rows={row_count} responses={len(recorder.responses)} hits={len(hits)}"
    )
    print("loggers:", dict(Counter(r.name for r in records)))
    print("structlog events:", dict(Counter(str(e.get("event")) for e in structured)))
    assert structured, "the flow should have logged through structlog"
    assert records, "the flow should have logged through logging"
    assert row_count > 0
    assert len(recorder.responses) > 20
    # Each session token is shown exactly once, in the response that created it.
    assert sum(secrets[1] in r.text for r in recorder.responses) == 1
    assert hits == [], "\n".join(hits)


def test_the_scanner_flags_planted_card_data_and_secrets() -> None:
    scanner = Scanner(cards=["4242424242424242"], cvcs=["123"], passwords=["hunter2-secret"],
                      secrets=["sk_live_planted_key_0123456789abcdef"])  # fmt: skip

    def hits(text: str, structured: Any = None, allowed: frozenset[str] = frozenset()) -> int:
        return len(scanner.hits(Artefact("log", "fake", text, structured, allowed)))

    assert hits("charging card 4242424242424242 now") > 0
    assert hits("card 4242 4242 4242 4242") > 0
    assert hits("card 4242-4242-4242-4242") > 0
    assert hits("amex 378282246310005") > 0  # Luhn-valid, not in the list
    assert hits(_text(msgspec.msgpack.encode({"number": "4242424242424242"}))) > 0
    assert hits("{'cvc': '123'}", {"card": {"cvc": "123"}}) > 0
    assert hits("cvv=123") > 0
    assert hits("login with hunter2-secret") > 0
    assert hits("signing with whsec_abc") > 0
    assert hits("auth sk_live_planted_key_0123456789abcdef") > 0
    assert hits("Bearer pt_abcdefghijklmnopqrstuvwxyz") > 0
    # And it lets the harmless through: a Luhn-invalid number, a last4, a hash, a shown token.
    assert hits("card 4242424242424241 last4 4242 at 2026-01-01") == 0
    assert hits("next_retry_at_ms=1795447977079 took 0.1795447977079 s") == 0
    assert hits("hash 4f3a4000000000000002e9 pan4242424242424242") == 1  # only the exact card
    assert hits("card 4000000000000002") > 0  # what a wider time window would let through
    assert hits("token pt_abcdefghijklmnopqrstuvwxyz",
                allowed=frozenset({"pt_abcdefghijklmnopqrstuvwxyz"})) == 0  # fmt: skip
