"""Processor callbacks are applied only when genuinely signed: property tests (hypothesis)
of the real receiver, ``payportal.http.callbacks.callback_routes``, served in-process by
aiohttp's test server.

Properties, each over generated events:

- a genuine callback is answered 200 and applied once (the baseline the others refuse);
- any single byte of the body, the ``webhook-id``, the ``webhook-timestamp`` or the
  ``webhook-signature`` changed → 400, and nothing applied; so is the genuine MAC
  spelled in another base64 that decodes to the same bytes;
- a timestamp further than the tolerance in the past or the future, genuinely signed →
  400 ``timestamp_out_of_tolerance``; within it → 200;
- a signature made with any other secret → 400 ``signature_invalid``;
- during a rotation (the processor's secrets are new and old) both verify; after it (new
  only) the old one is refused;
- a ``webhook-signature`` listing several signatures (other versions, malformed entries,
  signatures under other secrets) is accepted when one of them is valid, and refused
  when none is.

"Applied" is what the receiver does with a verified event: a command submitted to the
account's shard (a recording router stands in for the shards) and the event id in the
``processor_callbacks`` audit table (SQLite). "Nothing applied" is neither.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from payportal.actors.protocol import Reply
from payportal.engine import Outcome, Result
from payportal.http.callbacks import TOLERANCE_S_DEFAULT, callback_routes
from payportal.persistence import tables

# Secrets as processors issue them: whsec_ and base64 of random bytes.
OLD = "whsec_" + base64.b64encode(b"old-callback-secret-32-bytes-xyz").decode()
NEW = "whsec_" + base64.b64encode(b"new-callback-secret-32-bytes-xyz").decode()
# The receiver's processors: one mid-rotation (new and old verify), one after it.
DURING, AFTER = "during", "after"
SECRETS = {DURING: [NEW, OLD], AFTER: [NEW]}
ACCOUNT = "acct_0123456789abcdef"
# Far enough inside the tolerance that the seconds a slow run takes do not matter.
MARGIN_S = 10
EXAMPLES = 60
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True,
    # One receiver serves every example: it is reset between them (``Receiver.reset``).
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip


def sign(secret: str, event_id: str, timestamp: str, body: bytes) -> str:
    """A Standard Webhooks v1 signature, computed here rather than by the library the
    receiver uses, so the test does not share its bugs."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Event(msgspec.Struct, frozen=True):
    body: bytes
    event_id: str
    timestamp: str

    def headers(self, signature: str) -> dict[str, str]:
        return {"content-type": "application/json", "webhook-id": self.event_id,
                "webhook-timestamp": self.timestamp, "webhook-signature": signature}  # fmt: skip


@st.composite
def events(draw: st.DrawFn, skew_s: st.SearchStrategy[int] | None = None) -> Event:
    """A callback the sandbox could send: a charge outcome naming our payment."""
    payment = f"pay_{ACCOUNT.removeprefix('acct_')}_{draw(st.uuids()).hex[:12]}"
    data = {
        "charge": f"ch_{draw(st.uuids()).hex}", "attempt": f"att_{draw(st.uuids()).hex}",
        "amount": draw(st.integers(1, 10**12)), "currency": "usd",
        "metadata": {"payment": payment},
    }  # fmt: skip
    kind = draw(st.sampled_from(["charge.succeeded", "charge.failed"]))
    if kind == "charge.failed":
        data["decline_code"] = draw(st.sampled_from(["do_not_honor", "insufficient_funds"]))
    # Any text the processor may add (unknown fields are tolerated): unicode included.
    note = draw(st.text(max_size=40))
    body = msgspec.json.encode({"type": kind, "data": data, "note": note})
    skew = draw(skew_s if skew_s is not None else st.integers(-MARGIN_S, MARGIN_S))
    event_id = f"evt_{draw(st.uuids()).hex}"
    return Event(body, event_id, str(int(time.time()) + skew))


class RecordingRouter:
    """Stands in for the shards: every submitted command is recorded and accepted."""

    def __init__(self) -> None:
        self.commands: list[Any] = []

    async def submit(self, command: Any) -> Reply:
        self.commands.append(command)
        return Reply(outcome=Outcome(result=Result.ok))


class Receiver:
    """The real receiver on a loopback test server, driven from synchronous tests (one
    event loop for all of a test's examples)."""

    def __init__(self, database: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.router = RecordingRouter()
        self.engine = create_async_engine(f"sqlite+aiosqlite:///{database}")
        self._run(self._start())

    def _run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def _start(self) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(tables.processor_callbacks.create)
        store = type("Store", (), {"engine": self.engine})()
        app = web.Application()
        routes = callback_routes(store=store, router=self.router, secrets=SECRETS)  # type: ignore[arg-type]
        app.add_routes(routes)
        self.log = next(iter(routes)).handler.__self__.log  # type: ignore[attr-defined]
        self.client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await self.client.start_server()

    def post(self, processor: str, event: Event, signature: str,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
        async def send() -> tuple[int, dict[str, Any]]:
            response = await self.client.post(
                f"/v1/processors/{processor}/callbacks", data=event.body,
                headers=headers if headers is not None else event.headers(signature),
            )  # fmt: skip
            return response.status, await response.json()

        return self._run(send())  # type: ignore[no-any-return]

    def applied(self) -> tuple[int, int]:
        """(commands submitted, event ids written to the audit table) since the reset."""

        async def count() -> int:
            await self.log.close()
            async with self.engine.connect() as connection:
                rows = await connection.execute(sa.select(sa.func.count()).select_from(
                    tables.processor_callbacks))  # fmt: skip
                return int(rows.scalar_one())

        return len(self.router.commands), self._run(count())

    def reset(self) -> None:
        async def clear() -> None:
            async with self.engine.begin() as connection:
                await connection.execute(tables.processor_callbacks.delete())

        self._run(clear())
        self.router.commands.clear()

    def close(self) -> None:
        self._run(self.client.close())
        self._run(self.engine.dispose())
        self.loop.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    receiving = Receiver(tmp_path / "callbacks.db")
    try:
        yield receiving
    finally:
        receiving.close()


def _refused(receiver: Receiver, status: int, answer: dict[str, Any], code: str | None = None
             ) -> None:  # fmt: skip
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error", answer
    if code is not None:
        assert answer["error"]["code"] == code, answer
    assert receiver.applied() == (0, 0)


def _accepted(receiver: Receiver, status: int, answer: dict[str, Any]) -> None:
    assert (status, answer) == (200, {"received": True})
    assert receiver.applied() == (1, 1)


# -- the baseline ------------------------------------------------------------------------------


@PROPERTY
@given(event=events())
def test_a_genuine_callback_is_applied_once(receiver: Receiver, event: Event) -> None:
    receiver.reset()
    status, answer = receiver.post(AFTER, event, sign(NEW, event.event_id, event.timestamp,
                                                      event.body))  # fmt: skip
    _accepted(receiver, status, answer)
    [command] = receiver.router.commands
    assert command.account_id == ACCOUNT


# -- one byte changed ------------------------------------------------------------------------

PARTS = ("body", "webhook-id", "webhook-timestamp", "webhook-signature")
# Bytes a header value can carry at all (an HTTP client refuses control characters, and
# the server's parser would refuse them before the receiver); the body may hold any.
HEADER_BYTES = st.integers(0x21, 0x7E)


@st.composite
def one_byte_changed(draw: st.DrawFn) -> tuple[Event, dict[str, str], bytes, str]:
    event = draw(events())
    genuine = sign(NEW, event.event_id, event.timestamp, event.body)
    headers = event.headers(genuine)
    part = draw(st.sampled_from(PARTS))
    original = event.body if part == "body" else headers[part].encode()
    index = draw(st.integers(0, len(original) - 1))
    choices = st.integers(0, 255) if part == "body" else HEADER_BYTES
    new_byte = draw(choices.filter(lambda b: b != original[index]))
    changed = original[:index] + bytes([new_byte]) + original[index + 1:]
    body = event.body
    if part == "body":
        body = changed
    else:
        headers[part] = changed.decode()
    return event, headers, body, part


@PROPERTY
@given(case=one_byte_changed())
def test_any_single_byte_changed_is_refused_and_nothing_applied(
    receiver: Receiver, case: tuple[Event, dict[str, str], bytes, str]
) -> None:
    event, headers, body, _part = case
    receiver.reset()
    status, answer = receiver.post(AFTER, msgspec.structs.replace(event, body=body), "",
                                   headers=headers)  # fmt: skip
    _refused(receiver, status, answer)


# -- time ------------------------------------------------------------------------------------

BEYOND = st.integers(TOLERANCE_S_DEFAULT + MARGIN_S, 10**8)


@PROPERTY
@given(event=events(skew_s=st.one_of(BEYOND, BEYOND.map(lambda s: -s))))
def test_a_stale_or_future_timestamp_is_refused_though_genuinely_signed(
    receiver: Receiver, event: Event
) -> None:
    receiver.reset()
    status, answer = receiver.post(AFTER, event, sign(NEW, event.event_id, event.timestamp,
                                                      event.body))  # fmt: skip
    _refused(receiver, status, answer, "timestamp_out_of_tolerance")


@PROPERTY
@given(event=events(skew_s=st.integers(-TOLERANCE_S_DEFAULT + MARGIN_S,
                                       TOLERANCE_S_DEFAULT - MARGIN_S)))  # fmt: skip
def test_a_timestamp_within_the_tolerance_is_accepted(receiver: Receiver, event: Event) -> None:
    receiver.reset()
    status, answer = receiver.post(AFTER, event, sign(NEW, event.event_id, event.timestamp,
                                                      event.body))  # fmt: skip
    _accepted(receiver, status, answer)


# -- secrets ---------------------------------------------------------------------------------

OTHER_SECRETS = st.binary(min_size=16, max_size=64).map(
    lambda key: "whsec_" + base64.b64encode(key).decode()
).filter(lambda secret: secret not in (OLD, NEW))


@PROPERTY
@given(event=events(), secret=OTHER_SECRETS)
def test_a_signature_under_any_other_secret_is_refused(
    receiver: Receiver, event: Event, secret: str
) -> None:
    receiver.reset()
    status, answer = receiver.post(DURING, event, sign(secret, event.event_id, event.timestamp,
                                                       event.body))  # fmt: skip
    _refused(receiver, status, answer, "signature_invalid")


@PROPERTY
@given(event=events(), secret=st.sampled_from([OLD, NEW]))
def test_during_a_rotation_old_and_new_verify_and_after_it_only_the_new(
    receiver: Receiver, event: Event, secret: str
) -> None:
    signature = sign(secret, event.event_id, event.timestamp, event.body)
    receiver.reset()
    _accepted(receiver, *receiver.post(DURING, event, signature))

    receiver.reset()
    status, answer = receiver.post(AFTER, event, signature)
    if secret == NEW:
        _accepted(receiver, status, answer)
    else:
        _refused(receiver, status, answer, "signature_invalid")


# -- several signatures ------------------------------------------------------------------------


def _decoys(event: Event) -> st.SearchStrategy[str]:
    """Entries a signature list may hold that are not a valid v1 signature of ``event``."""
    mac = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())
    return st.one_of(
        mac.map(lambda m: f"v1,{m}"),  # random MACs
        OTHER_SECRETS.map(lambda s: sign(s, event.event_id, event.timestamp, event.body)),
        mac.map(lambda m: f"v1a,{m}"),  # an asymmetric version we do not check
        st.text(alphabet="abcdefv1,=+/", min_size=1, max_size=20),  # malformed
    )


@st.composite
def signature_lists(draw: st.DrawFn, with_valid: bool) -> tuple[Event, str]:
    event = draw(events())
    entries = draw(st.lists(_decoys(event), min_size=0 if with_valid else 1, max_size=5))
    if with_valid:
        valid = sign(NEW, event.event_id, event.timestamp, event.body)
        entries.insert(draw(st.integers(0, len(entries))), valid)
    return event, " ".join(entries)


@PROPERTY
@given(case=signature_lists(with_valid=True))
def test_a_signature_list_with_one_valid_entry_is_accepted(
    receiver: Receiver, case: tuple[Event, str]
) -> None:
    event, signatures = case
    receiver.reset()
    _accepted(receiver, *receiver.post(AFTER, event, signatures))


@PROPERTY
@given(case=signature_lists(with_valid=False))
def test_a_signature_list_without_a_valid_entry_is_refused(
    receiver: Receiver, case: tuple[Event, str]
) -> None:
    event, signatures = case
    receiver.reset()
    status, answer = receiver.post(AFTER, event, signatures)
    _refused(receiver, status, answer, "signature_invalid")



B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@PROPERTY
@given(event=events(), spare_bits=st.integers(1, 3))
def test_another_base64_spelling_of_the_genuine_mac_is_refused(
    receiver: Receiver, event: Event, spare_bits: int
) -> None:
    # A 32-byte MAC is 43 base64 characters and "=": the last character's two low bits
    # are spare, and a lenient decoder reads four spellings as the same MAC. Only the
    # canonical one (spare bits zero) may verify, or a byte of an accepted callback
    # could change and still be accepted.
    genuine = sign(NEW, event.event_id, event.timestamp, event.body)
    last = genuine[-2]
    sibling = B64[B64.index(last) ^ spare_bits]
    assert base64.b64decode(genuine[3:-2] + sibling + "=") == base64.b64decode(genuine[3:])
    receiver.reset()
    status, answer = receiver.post(AFTER, event, genuine[:-2] + sibling + "=")
    _refused(receiver, status, answer, "signature_invalid")
