"""Idempotency-Key behaves as docs/api.md says — one payment and one charge however many
requests race with one key, byte-identical replays, 422 on a different body, 400 without
a key — checked by firing real concurrent HTTP requests at the in-process front door and
counting payments in the journal and charges at the sandbox."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec

from payportal.engine import CreatePayment, PaymentCreated, PaymentMethodRef, Result
from payportal.http import ids
from payportal.http.idempotency import IN_FLIGHT_MAX_MS, hash_request
from payportal.http.schemas import PaymentCreate

from .api_harness import Api


async def test_fifty_concurrent_requests_with_one_key_make_one_payment_and_one_charge(
    api: Api,
) -> None:
    account = await api.account()
    await api.invoice(account, 5_000, dt.date(2026, 1, 1))
    method = await api.payment_method(account)

    results = await asyncio.gather(
        *(api.pay(account, 1_000, method, key="same-key") for _ in range(50))
    )

    winners = [raw for status, _, raw in results if status == 200]
    conflicts = [body for status, body, _ in results if status == 409]
    assert len(winners) + len(conflicts) == 50, [s for s, _, _ in results]
    assert winners, "at least the first request answers 200"
    assert all(raw == winners[0] for raw in winners), "replays are byte-identical"
    assert all(b["error"]["code"] == "idempotency_key_in_use" for b in conflicts)
    assert len(api.charges()) == 1
    journal = await api.store.journal(account_id=account)
    assert sum(isinstance(event, PaymentCreated) for _, _, event in journal) == 1
    status, _, raw = await api.pay(account, 1_000, method, key="same-key")
    assert (status, raw) == (200, winners[0])


async def test_a_replayed_decline_is_the_same_402_and_charges_nothing_more(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account, "do_not_honor")

    first = await api.pay(account, 700, method, key="declined-once")
    second = await api.pay(account, 700, method, key="declined-once")

    assert first[0] == second[0] == 402
    assert first[2] == second[2]
    assert len(api.charges()) == 1


async def test_the_same_key_with_a_different_body_is_422(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account)
    await api.pay(account, 1_000, method, key="reused")

    status, body, _ = await api.pay(account, 1_001, method, key="reused")

    assert status == 422
    assert body["error"]["type"] == "idempotency_error"
    assert body["error"]["code"] == "idempotency_key_reused"
    assert len(api.charges()) == 1


async def test_keys_are_scoped_to_the_account(api: Api) -> None:
    first, second = await api.account(), await api.account()
    first_method = await api.payment_method(first)
    second_method = await api.payment_method(second)

    a = await api.pay(first, 1_000, first_method, key="shared")
    b = await api.pay(second, 1_000, second_method, key="shared")

    assert a[0] == b[0] == 200
    assert a[1]["id"] != b[1]["id"]
    assert len(api.charges()) == 2


async def test_a_missing_or_malformed_key_is_400_and_nothing_is_charged(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account)
    payload = {"account": account, "amount": 100, "currency": "USD", "payment_method": method}

    missing = await api.call("POST", "/v1/payments", json=payload)
    too_long = await api.call(
        "POST", "/v1/payments", headers={**api.merchant, "Idempotency-Key": "k" * 256},
        json=payload,
    )  # fmt: skip

    assert missing[0] == 400
    assert missing[1]["error"]["code"] == "idempotency_key_missing"
    assert too_long[0] == 400
    assert too_long[1]["error"]["param"] == "Idempotency-Key"
    assert api.charges() == []


async def test_a_validation_error_is_not_stored_so_the_key_can_be_used_again(api: Api) -> None:
    account = await api.account()
    method = await api.payment_method(account)

    bad, _, _ = await api.pay(account, 100, method, key="fix-and-retry", tip=1)
    good, body, _ = await api.pay(account, 100, method, key="fix-and-retry")

    assert bad == 400
    assert good == 200, body


async def test_a_payment_whose_creation_reaches_its_shard_twice_is_charged_and_answered(
    api: Api,
) -> None:
    account_id = await api.account()
    method = await api.payment_method(account_id)
    assert api.router is not None
    for handle in api.router.handles:
        # At-least-once: every call is applied, its answer lost, then applied again (Ray
        # re-sends the calls of a shard that restarted after its commit).
        async def twice(batch: bytes, core: Any = handle.core) -> bytes:
            await core.apply(batch)
            return await core.apply(batch)

        handle.remote = twice

    status, body, _ = await api.pay(account_id, 1_000, method, key="sent-twice")

    assert status == 200, body  # not 409: no other request holds the key
    assert body["status"] == "succeeded"
    assert len(api.charges()) == 1


async def test_a_key_left_in_flight_by_a_dead_process_is_taken_over_after_the_lock_timeout(
    api: Api,
) -> None:
    account_id = await api.account()
    method = await api.payment_method(account_id)
    body = {"account": account_id, "amount": 1_000, "currency": "USD", "payment_method": method}
    # What a front door that died after creating the payment, before charging it, left.
    canonical = msgspec.json.encode(msgspec.json.decode(msgspec.json.encode(body),
                                                        type=PaymentCreate))  # fmt: skip
    assert api.router is not None
    created = await api.router.submit(CreatePayment(
        account_id=account_id, payment_id=ids.child_id("pay", account_id),
        attempt_id=ids.child_id("att", account_id), idempotency_key="merchant:stuck",
        amount_minor=1_000, currency="USD", payment_method=PaymentMethodRef(id=method),
        request_hash=hash_request("POST", "/v1/payments", canonical),
    ))  # fmt: skip
    assert created.outcome.result is Result.ok

    status, busy, _ = await api.pay(account_id, 1_000, method, key="stuck")
    assert status == 409, busy  # it may still be running somewhere
    assert busy["error"]["code"] == "idempotency_key_in_use"
    assert api.charges() == []

    api.clock_offset_ms = IN_FLIGHT_MAX_MS
    status, again, first_raw = await api.pay(account_id, 1_000, method, key="stuck")
    assert status == 200, again
    assert again["id"] == created.outcome.payment_id  # the engine's payment, taken over
    assert again["status"] == "succeeded"
    assert len(api.charges()) == 1
    # Answered now, and kept: the same request is replayed, charging nothing more.
    status, _, raw = await api.pay(account_id, 1_000, method, key="stuck")
    assert (status, raw) == (200, first_raw)
    assert len(api.charges()) == 1


async def test_a_replay_is_the_first_answer_even_after_the_payment_moved_on(api: Api) -> None:
    account_id = await api.account()
    method = await api.payment_method(account_id)
    status, first, first_raw = await api.pay(account_id, 1_000, method, key="refunded-later")
    assert status == 200
    await api.ok("POST", f"/v1/payments/{first['id']}/refunds",
                 headers={**api.merchant, "Idempotency-Key": "refund-1"}, json={})  # fmt: skip

    status, again, raw = await api.pay(account_id, 1_000, method, key="refunded-later")

    assert status == 200
    assert raw == first_raw  # the answer as first given, not the refunded payment
    assert again["status"] == "succeeded"
    current = await api.ok("GET", f"/v1/payments/{first['id']}")
    assert current["status"] == "refunded"
