"""The reconciliation exceptions queue over HTTP: a seeded settlement discrepancy appears once
in GET /v1/reconciliation/exceptions, a merchant resolves it with a resolution and a note,
it stays resolved when the job runs again, and wrong input gets the contract's errors.
Driven through the in-process API harness (real store, shards and sandbox processor) on
SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from payportal.accounting import reconcile
from payportal.http.typedefs import ROUTER
from payportal.processors._settlement import Discrepancy

from .api_harness import Api


async def _reconcile(api: Api) -> None:
    router = api.client.app[ROUTER]
    for shard in range(len(router.handles)):
        await api.store.project_pending(shard)
    await reconcile(router, api.store.engine, api.processor, grace_ms=0)


async def test_a_seeded_discrepancy_is_listed_once_resolved_and_stays_resolved(api: Api) -> None:
    account_id = await api.account()
    await api.invoice(account_id, 2_000, dt.date(2026, 1, 31))
    method = await api.payment_method(account_id)
    status, payment, _ = await api.pay(account_id, 2_000, method)
    assert status == 200, payment
    charge_id = api.charges()[0].id
    api.sandbox.settlement.discrepancies.append(
        Discrepancy(kind="amount", charge=charge_id, amount=-1)
    )
    await _reconcile(api)
    await _reconcile(api)

    listed = await api.ok("GET", "/v1/reconciliation/exceptions", params={"status": "open"})
    assert listed["has_more"] is False
    assert len(listed["data"]) == 1
    exception = listed["data"][0]
    assert (exception["kind"], exception["charge"], exception["payment"]) == (
        "amount_mismatch", charge_id, payment["id"]
    )
    assert (exception["expected_amount"], exception["reported_amount"]) == (2_000, 1_999)

    resolved = await api.ok(
        "POST", f"/v1/reconciliation/exceptions/{exception['id']}/resolve",
        json={"resolution": "processor_corrected", "note": "processor re-sent the report"},
    )  # fmt: skip
    assert (resolved["status"], resolved["resolution"]) == ("resolved", "processor_corrected")
    assert resolved["resolved_at"] is not None
    await _reconcile(api)
    assert (await api.ok("GET", "/v1/reconciliation/exceptions",
                         params={"status": "open"}))["data"] == []  # fmt: skip
    done = await api.ok("GET", "/v1/reconciliation/exceptions", params={"status": "resolved"})
    assert [x["id"] for x in done["data"]] == [exception["id"]]


async def test_wrong_input_gets_the_contracts_errors(api: Api) -> None:
    status, body, _ = await api.call(
        "POST", "/v1/reconciliation/exceptions/rex_nope/resolve",
        json={"resolution": "written_off", "note": "n"},
    )  # fmt: skip
    assert (status, body["error"]["code"]) == (404, "resource_missing")
    for payload, param in (
        ({"resolution": "shrug", "note": "n"}, "resolution"),
        ({"resolution": "written_off"}, "note"),
        ({"resolution": "written_off", "note": "n", "extra": 1}, "extra"),
    ):
        status, body, _ = await api.call(
            "POST", "/v1/reconciliation/exceptions/rex_nope/resolve", json=payload
        )
        assert status == 400, (payload, body)
        assert body["error"]["param"] == param, (payload, body)
    status, body, _ = await api.call("GET", "/v1/reconciliation/exceptions",
                                     params={"status": "closed"})  # fmt: skip
    assert (status, body["error"]["param"]) == (400, "status")
    account_id = await api.account()
    payer = await api.payer(account_id, "payer@example.com")
    status, _, _ = await api.call("GET", "/v1/reconciliation/exceptions", headers=payer)
    assert status == 404
