"""GET /v1/reports/revenue over HTTP: the report as of the latest recognition run in JSON and
CSV, merchant only, and every wrong parameter a 400 in the contract's shape. Driven through
the in-process API harness (real store, shards and sandbox) on SQLite and PostgreSQL; the
figures themselves are checked on a simulated calendar in the integration tests."""

from __future__ import annotations

import csv
import datetime as dt
import io

import sqlalchemy as sa

from payportal.accounting import recognize_revenue
from payportal.http.typedefs import ROUTER
from payportal.persistence.tables_accounting import revenue_recognition_runs

from .api_harness import Api


async def _subscription_invoice(api: Api, account_id: str, amount: int) -> str:
    today = dt.datetime.now(dt.UTC).date()
    body = await api.ok("POST", f"/v1/accounts/{account_id}/invoices", json={
        "amount": amount, "due_date": today.isoformat(),
        "service_period": {"start": today.isoformat(),
                           "end": (today + dt.timedelta(days=29)).isoformat()},
    })  # fmt: skip
    return str(body["id"])


async def test_the_report_is_as_of_the_latest_run_and_reads_the_same_in_json_and_csv(
    api: Api,
) -> None:
    account_id = await api.account()
    await _subscription_invoice(api, account_id, 3_000)
    await api.invoice(account_id, 500, dt.date(2026, 1, 31))

    before = await api.ok("GET", "/v1/reports/revenue")
    assert before["as_of"] is None
    assert before["accuracy_exact"] == "1"
    assert sum(m["recognized"] for m in before["months"]) == 0
    assert sum(m["deferred"] for m in before["months"]) == 3_500

    for shard in range(len(api.client.app[ROUTER].handles)):
        await api.store.project_pending(shard)
    run = await recognize_revenue(api.client.app[ROUTER], api.store.engine)
    assert run.accounts_total == 1
    report = await api.ok("GET", "/v1/reports/revenue", params={"format": "json"})
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    assert report["as_of"] == yesterday.isoformat()
    # As of the end of yesterday the invoices issued today did not exist yet.
    assert report["accuracy"] == 1
    assert report["differing_invoices"] == []
    assert report["months"] == []

    status, _, raw = await api.call("GET", "/v1/reports/revenue", params={"format": "csv"})
    assert status == 200
    assert list(csv.DictReader(io.StringIO(raw.decode()))) == []
    # Before any run, the CSV lists what was issued, all of it deferred.
    async with api.store.engine.begin() as connection:
        await connection.execute(sa.delete(revenue_recognition_runs))
    status, _, raw = await api.call("GET", "/v1/reports/revenue", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [(r["month"], int(r["deferred_minor"])) for r in rows] == [
        (m["month"], m["deferred"]) for m in before["months"]
    ]
    assert all(r["as_of"] == "" and r["accuracy"] == "1" for r in rows)


async def test_only_a_merchant_sees_the_report(api: Api) -> None:
    account_id = await api.account()
    payer = await api.payer(account_id, "payer@example.com")
    status, body, _ = await api.call("GET", "/v1/reports/revenue", headers=payer)
    assert (status, body["error"]["code"]) == (404, "resource_missing")
    status, body, _ = await api.call("GET", "/v1/reports/revenue", headers={})
    assert status == 401


async def test_every_wrong_parameter_is_a_400_naming_it(api: Api) -> None:
    for params, param in (
        ({"from": "2025-02-01", "to": "2025-01-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"format": "pdf"}, "format"),
        ({"colour": "blue"}, "colour"),
    ):
        status, body, _ = await api.call("GET", "/v1/reports/revenue", params=params)
        assert status == 400, (params, body)
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] == param, (params, body)
