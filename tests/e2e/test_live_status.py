"""Live status over Server-Sent Events end to end: in-process shards on a real Store, the
sandbox processor, the front door under aiohttp's test client, the in-process status
streams and a publisher forced to run (``run_once``), the janitor on an injected clock;
clients subscribe, drop the connection and resume with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from payportal.actors import AccountShardCore, ShardRouter
from payportal.actors.janitor import RetryJanitor
from payportal.http import create_app
from payportal.http.events import LIVE_WAIT_S, STATUS_STREAMS
from payportal.live import MemoryStatusStreams, StatusPublisher
from payportal.persistence import Store
from payportal.persistence.keys import create_api_key_async
from payportal.processors.sandbox import SANDBOX, Faults, create_sandbox_app
from payportal.processors.sandbox_client import SandboxProcessor

from .api_harness import CARDS, SECRET, Api, DirectHandle

SHARDS = 2
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the shards' and janitor's clock
# Reads of an SSE stream give up after this long: every event is forced, none awaited.
READ_TIMEOUT_S = 5.0
# How long "nothing more arrives" is watched for after the expected events.
QUIET_S = 0.3


class Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms


class Live(msgspec.Struct, kw_only=True):
    api: Any  # Api
    publisher: StatusPublisher
    janitor: RetryJanitor
    clock: Clock
    store: Store
    sandbox: Any  # SandboxState

    async def settle(self) -> None:
        for shard_id in range(SHARDS):
            await self.store.project_pending(shard_id)


@pytest.fixture
async def live(database_url: str, aiohttp_server: Any, aiohttp_client: Any) -> AsyncIterator[Live]:
    clock = Clock()
    store = await Store.connect(database_url)
    sandbox_app = create_sandbox_app(callback_url=None, webhook_secret=SECRET, faults=Faults())
    sandbox_server: TestServer = await aiohttp_server(sandbox_app, host="127.0.0.1")
    processor = SandboxProcessor(str(sandbox_server.make_url("")), timeout_ms=2_000)
    router = ShardRouter(
        [DirectHandle(AccountShardCore(i, store, clock_ms=clock)) for i in range(SHARDS)],
        batch_max_wait_ms=1,
    )
    streams = MemoryStatusStreams()
    app = create_app(router=router, store=store, processor=processor, clock_ms=clock)
    app[STATUS_STREAMS] = streams
    app[LIVE_WAIT_S] = 0.05
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    key = await create_api_key_async(store, "tests")
    try:
        yield Live(
            api=Api(client, processor, sandbox_app[SANDBOX], key, store),
            publisher=StatusPublisher(store, streams, shard_ids=range(SHARDS)),
            janitor=RetryJanitor(router, store, processor, clock_ms=clock), clock=clock,
            store=store, sandbox=sandbox_app[SANDBOX],
        )  # fmt: skip
    finally:
        await client.close()
        await router.drain()
        await processor.close()
        await streams.close()
        await store.close()


async def _next_event(response: ClientResponse) -> tuple[int, dict[str, Any]]:
    """The next ``id``/``data`` event of an SSE response (pings and blank lines skipped)."""
    fields: dict[str, str] = {}
    async with asyncio.timeout(READ_TIMEOUT_S):
        while True:
            line = (await response.content.readline()).decode()
            assert line, "the stream ended"
            line = line.rstrip("\r\n")
            if not line:
                if "data" in fields:
                    return int(fields["id"]), msgspec.json.decode(fields["data"])
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value


async def _events(response: ClientResponse, count: int) -> list[tuple[int, dict[str, Any]]]:
    return [await _next_event(response) for _ in range(count)]


async def _nothing_more(response: ClientResponse) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(QUIET_S):
            await _next_event(response)


async def _subscribe(
    api: Api, path: str, headers: dict[str, str] | None = None, last_event_id: int | None = None
) -> ClientResponse:  # fmt: skip
    sent = dict(headers if headers is not None else api.merchant)
    if last_event_id is not None:
        sent["Last-Event-ID"] = str(last_event_id)
    response = await api.client.get(path, headers=sent)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    return response


async def _account_with_invoice(api: Api) -> str:
    import datetime as dt

    account_id = await api.account()
    await api.invoice(account_id, 5_000, dt.date(2026, 1, 31))
    return account_id


async def test_a_client_watches_its_payment_go_from_processing_to_succeeded(live: Live) -> None:
    api = live.api
    account_id = await _account_with_invoice(api)
    status, payment, _ = await api.pay(account_id, 5_000, await api.payment_method(account_id))
    assert status == 200
    assert payment["status"] == "succeeded"
    await live.publisher.run_once()

    response = await _subscribe(api, f"/v1/payments/{payment['id']}/events")
    events = await _events(response, 2)

    assert [e["status"] for _, e in events] == ["processing", "succeeded"]
    assert events[0][0] < events[1][0]
    assert {e["payment"] for _, e in events} == {payment["id"]}
    assert {e["account"] for _, e in events} == {account_id}
    assert events[1][1]["amount_applied"] == 5_000
    assert "next_retry_at" not in events[1][1]
    await _nothing_more(response)
    response.close()


async def test_a_resumed_client_sees_every_later_change_once_through_a_soft_decline_retry(
    live: Live,
) -> None:
    api = live.api
    account_id = await _account_with_invoice(api)
    other_id = await _account_with_invoice(api)  # its events must not leak into the stream
    token = await api.processor.tokenize_test_card(CARDS["insufficient_funds"])
    method = await api.ok("POST", f"/v1/accounts/{account_id}/payment_methods",
                          json={"token": token})  # fmt: skip
    status, body, _ = await api.pay(account_id, 5_000, method["id"])
    assert status == 200, body
    assert body["status"] == "retry_scheduled"  # a soft decline is not an error
    payment_id = body["id"]
    path = f"/v1/payments/{payment_id}/events"

    # Subscribed before anything is published: the journal serves what the stream lacks.
    first = await _subscribe(api, path)
    first_id, processing = await _next_event(first)
    assert processing["status"] == "processing"
    first.close()  # the client drops after the first event

    await live.publisher.run_once()
    resumed = await _subscribe(api, path, last_event_id=first_id)
    (declined_id, declined), = await _events(resumed, 1)
    assert declined["status"] == "retry_scheduled"
    assert declined["next_retry_at"] * 1000 > START_MS

    # The issuer approves now; the janitor retries when due, the publisher announces.
    live.sandbox.cards[token].number = CARDS["visa"]
    await api.pay(other_id, 1_000, await api.payment_method(other_id))
    await live.settle()
    live.clock.now_ms = (declined["next_retry_at"] + 1) * 1000
    report = await live.janitor.run_once()
    assert report.retries_started == 1
    await live.publisher.run_once()
    await live.publisher.run_once()  # a second run publishes nothing twice

    later = await _events(resumed, 2)
    assert [e["status"] for _, e in later] == ["processing", "succeeded"]
    ids = [first_id, declined_id] + [i for i, _ in later]
    assert ids == sorted(set(ids))
    versions = [processing["version"], declined["version"]] + [e["version"] for _, e in later]
    assert versions == sorted(set(versions))
    await _nothing_more(resumed)
    resumed.close()

    # Resuming from the very first event again replays the rest exactly once, in order.
    again = await _subscribe(api, path, last_event_id=first_id)
    replay = await _events(again, 3)
    assert [i for i, _ in replay] == ids[1:]
    await _nothing_more(again)
    again.close()

    # The account stream carries the same changes, and only this account's.
    account_stream = await _subscribe(api, f"/v1/accounts/{account_id}/events",
                                      last_event_id=first_id - 1)  # fmt: skip
    whole = await _events(account_stream, 4)
    assert [i for i, _ in whole] == ids
    assert {e["account"] for _, e in whole} == {account_id}
    await _nothing_more(account_stream)
    account_stream.close()


async def test_another_payers_token_is_answered_404(live: Live) -> None:
    api = live.api
    mine = await _account_with_invoice(api)
    theirs = await _account_with_invoice(api)
    status, payment, _ = await api.pay(theirs, 5_000, await api.payment_method(theirs))
    assert status == 200
    payer = await api.payer(mine, "me@example.com")

    for path in (f"/v1/payments/{payment['id']}/events", f"/v1/accounts/{theirs}/events"):
        response = await api.client.get(path, headers=payer)
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "resource_missing"

    own = await _subscribe(api, f"/v1/accounts/{mine}/events", headers=payer)
    own.close()
    unknown = await api.client.get(f"/v1/payments/pay_{mine[5:]}_000/events",
                                   headers=api.merchant)  # fmt: skip
    assert unknown.status == 404
    bad = await api.client.get(f"/v1/accounts/{mine}/events",
                               headers={**api.merchant, "Last-Event-ID": "soon"})  # fmt: skip
    assert bad.status == 400


async def _raw_events(response: ClientResponse, count: int) -> list[dict[str, str]]:
    """The next ``count`` events as the HTML standard's parser sees them (the fields a
    document's per-event schema describes): comments skipped, ``event`` defaulted."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(READ_TIMEOUT_S):
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\r\n")
            if not line:
                if "data" in fields:
                    events.append({"event": "message", **fields})
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return events


async def test_openapi_describes_each_event_the_streams_send(live: Live) -> None:
    api = live.api
    account_id = await _account_with_invoice(api)
    status, payment, _ = await api.pay(account_id, 5_000, await api.payment_method(account_id))
    assert status == 200
    await live.publisher.run_once()
    document = await api.ok("GET", "/openapi.json")
    registry = Registry().with_resource(
        "urn:payportal", Resource.from_contents(document, default_specification=DRAFT202012)
    )

    for template, path in (
        ("/v1/accounts/{id}/events", f"/v1/accounts/{account_id}/events"),
        ("/v1/payments/{id}/events", f"/v1/payments/{payment['id']}/events"),
    ):
        content = document["paths"][template]["get"]["responses"]["200"]["content"]
        assert list(content) == ["text/event-stream"]
        event_schema = content["text/event-stream"]["schema"]
        data = event_schema["properties"]["data"]
        assert data["contentMediaType"] == "application/json"
        data_validator = Draft202012Validator(
            {"$ref": "urn:payportal" + data["contentSchema"]["$ref"]}, registry=registry
        )
        response = await _subscribe(api, path, last_event_id=0)
        events = await _raw_events(response, 2)
        response.close()
        for event in events:
            Draft202012Validator(event_schema).validate(event)
            data_validator.validate(json.loads(event["data"]))
        assert [json.loads(e["data"])["status"] for e in events] == ["processing", "succeeded"]


# Not ids this API could have sent: past the database's 64-bit ids, signed, not ASCII
# digits (str.isdigit takes "²"), not decimal.
OUT_OF_RANGE_IDS = ["9999999999999999999", "9223372036854775808", "-1", "²", "1e3", "0x10",
                    "12 13", "99999999999999999999999"]  # fmt: skip


async def test_a_last_event_id_that_is_no_event_id_is_a_400_before_the_stream_starts(
    live: Live,
) -> None:
    api = live.api
    account_id = await _account_with_invoice(api)
    status, payment, _ = await api.pay(account_id, 5_000, await api.payment_method(account_id))
    assert status == 200
    await live.publisher.run_once()
    for path in (f"/v1/accounts/{account_id}/events", f"/v1/payments/{payment['id']}/events"):
        for value in OUT_OF_RANGE_IDS:
            response = await api.client.get(path, headers={**api.merchant, "Last-Event-ID": value})
            assert response.status == 400, (path, value, response.content_type)
            assert response.content_type == "application/json"
            error = (await response.json())["error"]
            assert error["type"] == "invalid_request_error", (path, value)
            assert error["code"] == "parameter_invalid", (path, value)
            assert error["param"] == "Last-Event-ID", (path, value)
        # The largest id there can be is one: nothing comes after it, and nothing fails.
        newest = await _subscribe(api, path, last_event_id=2**63 - 1)
        await _nothing_more(newest)
        newest.close()
