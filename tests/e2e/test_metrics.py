"""/metrics and /v1/metrics/summary through the real front door (harness: shards driven
directly, sandbox processor, SQLite and PostgreSQL): payments with real outcomes move the
counters, nothing carries an account label, and the summary equals an independent
recomputation from the payments table."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from payportal.accounting import recognition_accuracy_report
from payportal.http.typedefs import ROUTER
from payportal.metrics.http import METRICS
from payportal.persistence.tables import payments

from .api_harness import Api

# Label names any family may carry: none of them names an account, payer or payment.
ALLOWED_LABELS = {"worker", "method", "route", "status", "shard", "le"}
# The read models are projected after the commit; a test waits for them this long at most.
PROJECTION_WAIT_S = 10.0


class _Remote:
    """``handle.metrics_snapshot.remote()`` for the harness's directly-driven shards."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    async def remote(self) -> dict[str, Any]:
        return self._read()


def _with_shard_metrics(api: Api) -> None:
    for handle in api.client.app[ROUTER].handles:
        handle.metrics_snapshot = _Remote(handle.core.metrics_snapshot)
    # Every scrape reads the database afresh, so one test can watch it change.
    api.client.app[METRICS].db_cache_s = 0.0


async def _scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, raw = await api.call("GET", "/metrics")
    assert status == 200, raw[:500]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(raw.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        value for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )  # fmt: skip


async def _finished_rows(api: Api, expected: int) -> list[Any]:
    """The payments that finished processing, once the read model holds ``expected``."""
    p = payments.c
    query = sa.select(p.payment_id, p.status, p.created_at_ms, p.finished_at_ms).where(
        p.finished_at_ms.is_not(None)
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROJECTION_WAIT_S
    while True:
        async with api.store.engine.connect() as connection:
            rows = list(await connection.execute(query))
        if len(rows) >= expected or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.02)


async def _seed_outcomes(api: Api) -> dict[str, str]:
    """Two succeeded, one hard decline, one soft decline then canceled, one retrying."""
    account_id = await api.account()
    await api.invoice(account_id, 100_000, dt.date(2026, 1, 31))
    ids: dict[str, str] = {}
    for name, card, amount in [
        ("ok_1", "visa", 1_000), ("ok_2", "mastercard", 2_500), ("hard", "do_not_honor", 700),
        ("canceled", "insufficient_funds", 300), ("retrying", "insufficient_funds", 400),
    ]:  # fmt: skip
        method = await api.payment_method(account_id, card)
        status, body, raw = await api.pay(account_id, amount, method)
        if card == "do_not_honor":
            assert status == 402, raw
            ids[name] = body["error"]["payment"]["id"]
        else:
            assert status == 200, raw
            ids[name] = body["id"]
    await api.ok("POST", f"/v1/payments/{ids['canceled']}/cancel")
    return ids


async def test_exposition_parses_and_counters_move_after_real_payments(api: Api) -> None:
    _with_shard_metrics(api)
    before = await _scrape(api)
    ids = await _seed_outcomes(api)
    rows = await _finished_rows(api, expected=4)
    assert len(rows) == 4, rows
    after = await _scrape(api)

    def moved(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    # Front door: route templates, never raw paths, with the status the client got.
    assert moved("payportal_http_requests_total", route="/v1/payments", method="POST",
                 status="200") == 4  # fmt: skip
    assert moved("payportal_http_requests_total", route="/v1/payments", status="402") == 1
    assert moved("payportal_http_requests_total", route="/v1/payments/{id}/cancel") == 1
    assert moved("payportal_http_request_duration_seconds_count", route="/v1/payments") == 5
    assert not any(ids["canceled"] in labels.get("route", "") for _, labels in
                   ((n, dict(ls)) for n, ls in after))  # fmt: skip

    # Shards: what finished, how long it took, batches and commits.
    assert moved("payportal_payments_finished_total", status="succeeded") == 2
    assert moved("payportal_payments_finished_total", status="requires_payment_method") == 1
    assert moved("payportal_payments_finished_total", status="canceled") == 1
    assert moved("payportal_payment_processing_seconds_count") == 4
    assert moved("payportal_shard_batch_commands_count") >= 1
    assert moved("payportal_journal_commit_seconds_count") >= 1
    assert _total(after, "payportal_shard_up") == len(api.client.app[ROUTER].handles)
    # The processing time histogram holds exactly the database's processing times.
    processing_s = sum((r.finished_at_ms - r.created_at_ms) / 1000 for r in rows)
    assert abs(moved("payportal_payment_processing_seconds_sum") - processing_s) < 1e-6

    # Database: payments by current status, and the 24 h success ratio (2 of 3).
    assert _total(after, "payportal_payments", status="succeeded") == 2
    assert _total(after, "payportal_payments", status="retry_scheduled") == 1
    assert _total(after, "payportal_payments", status="canceled") == 1
    assert _total(after, "payportal_payment_success_ratio") == 2 / 3

    today = dt.datetime.now(dt.UTC)
    report = await recognition_accuracy_report(
        api.store.engine, start=(today - dt.timedelta(hours=24)).date(), end=today.date()
    )
    assert _total(after, "payportal_revenue_recognition_accuracy_ratio") == float(report.accuracy)

    # Router gauges exist for this process.
    assert ("payportal_router_outstanding_commands", (("worker", "0"),)) in after


async def test_no_metric_carries_an_account_payer_or_payment_label(api: Api) -> None:
    _with_shard_metrics(api)
    ids = await _seed_outcomes(api)
    await _finished_rows(api, expected=4)
    status, _, raw = await api.call("GET", "/metrics")
    assert status == 200
    text = raw.decode()
    families = list(text_string_to_metric_families(text))
    assert families
    names = {name for f in families for s in f.samples for name in s.labels}
    assert names <= ALLOWED_LABELS, names - ALLOWED_LABELS
    for payment_id in ids.values():
        assert payment_id not in text
    assert "acct_" not in text
    assert "pm_" not in text


async def test_summary_equals_a_recomputation_from_the_payments_table(api: Api) -> None:
    await _seed_outcomes(api)
    rows = await _finished_rows(api, expected=4)
    body = await api.ok("GET", "/v1/metrics/summary", params={"window": "1h"})

    # Recomputed here from the rows, by the documented definitions.
    succeeded = [r for r in rows if r.status in
                 ("succeeded", "partially_refunded", "refunded", "disputed")]  # fmt: skip
    failed = [r for r in rows if r.status in ("failed", "requires_payment_method")]
    counted = succeeded + failed
    assert (len(succeeded), len(failed)) == (2, 1)
    expected_avg = sum(r.finished_at_ms - r.created_at_ms for r in counted) / len(counted)
    assert body["payments_counted"] == 3, (body, rows)
    assert body["payments_succeeded"] == 2
    assert body["payments_failed"] == 1
    assert body["payments_canceled"] == 1
    assert body["payment_success_rate"] == 2 / 3
    assert body["payment_processing_ms_avg"] == expected_avg
    window = body["window"]
    # The accounting module's accuracy for the months the window touches.
    until = dt.datetime.fromtimestamp(window["end"], dt.UTC)
    report = await recognition_accuracy_report(
        api.store.engine, start=(until - dt.timedelta(hours=1)).date(),
        end=(until - dt.timedelta(microseconds=1)).date(),
    )  # fmt: skip
    assert body["revenue_recognition_accuracy"] == float(report.accuracy)
    assert window["end"] - window["start"] == window["seconds"] == 3_600

    # The API's processing_ms on each payment is what the average was taken over.
    listed = await api.ok("GET", "/v1/payments", params={"limit": 100})
    by_id = {p["id"]: p["processing_ms"] for p in listed["data"]}
    assert sorted(by_id[r.payment_id] for r in counted) == sorted(
        r.finished_at_ms - r.created_at_ms for r in counted
    )

    # A window that ends before the payments were made counts none of them.
    before = str(window["start"] - 7_200)
    earlier = await api.ok("GET", "/v1/metrics/summary", params={"window": "1h", "end": before})
    assert earlier["payments_counted"] == 0
    assert earlier["payment_success_rate"] is None
    assert earlier["payment_processing_ms_avg"] is None


async def test_metrics_are_merchant_only_and_windows_are_checked(api: Api) -> None:
    account_id = await api.account()
    payer = await api.payer(account_id, "payer@example.com")
    for path in ("/metrics", "/v1/metrics/summary"):
        status, body, _ = await api.call("GET", path, headers=payer)
        assert status == 404, body
        assert body["error"]["code"] == "resource_missing"
        status, body, _ = await api.call("GET", path, headers={})
        assert status == 401, body
        status, body, _ = await api.call(
            "GET", path, headers={"Authorization": "Bearer sk_not_a_key"}
        )
        assert status == 401, body
    for window in ("0h", "24", "1w", "367d", "-1d"):
        status, body, _ = await api.call("GET", "/v1/metrics/summary", params={"window": window})
        assert status == 400, (window, body)
        assert body["error"]["param"] == "window", body
    body = await api.ok("GET", "/v1/metrics/summary", params={"window": "366d"})
    assert body["window"]["seconds"] == 366 * 86_400


async def test_openmetrics_is_served_when_asked_for(api: Api) -> None:
    response = await api.client.get(
        "/metrics", headers={**api.merchant, "Accept": "application/openmetrics-text"}
    )
    assert response.status == 200
    assert response.content_type == "application/openmetrics-text"
    text = await response.text()
    assert text.rstrip().endswith("# EOF")
