"""headline_figures against a seeded payments read model on SQLite and PostgreSQL: every
status, payments on both edges of the half-open window, and a random history whose
figures are recomputed independently in Python (exact fractions)."""

from __future__ import annotations

import datetime as dt
import random
from fractions import Fraction
from typing import Any

import pytest
import sqlalchemy as sa

from payportal.engine import PaymentStatus
from payportal.metrics import headline_figures
from payportal.persistence import create_engine_for
from payportal.persistence.tables import payments

SINCE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
UNTIL = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
SINCE_MS = int(SINCE.timestamp() * 1000)
UNTIL_MS = int(UNTIL.timestamp() * 1000)


def _row(n: int, status: str, created_at_ms: int, finished_at_ms: int | None) -> dict[str, Any]:
    return {
        "payment_id": f"pay_{n}", "account_id": f"acct_{n % 7}", "amount_minor": 1_000 + n,
        "currency": "USD", "status": status, "payment_method_id": "pm_1",
        "amount_applied_minor": 0, "amount_unapplied_minor": 0, "amount_refunded_minor": 0,
        "created_at_ms": created_at_ms, "finished_at_ms": finished_at_ms,
        "next_retry_at_ms": None, "idempotency_key": f"key_{n}", "version": 1,
    }  # fmt: skip


async def _seed(database_url: str, rows: list[dict[str, Any]]) -> Any:
    engine = create_engine_for(database_url)
    async with engine.begin() as connection:
        await connection.execute(sa.insert(payments), rows)
    return engine


async def test_window_edges_and_status_groups(database_url: str) -> None:
    rows = [
        _row(1, "succeeded", SINCE_MS - 500, SINCE_MS),  # finishes on the first instant: in
        _row(2, "refunded", SINCE_MS + 1_000, SINCE_MS + 2_500),  # refunded later: succeeded
        _row(3, "disputed", SINCE_MS + 10, SINCE_MS + 20),
        _row(4, "partially_refunded", SINCE_MS, SINCE_MS + 4),
        _row(5, "failed", SINCE_MS + 100, SINCE_MS + 1_100),
        _row(6, "requires_payment_method", SINCE_MS + 5, SINCE_MS + 10),
        _row(7, "canceled", SINCE_MS + 5, SINCE_MS + 99_999),  # counted apart
        _row(8, "succeeded", UNTIL_MS - 2_000, UNTIL_MS),  # finishes at the end: out
        _row(9, "succeeded", SINCE_MS - 2_000, SINCE_MS - 1),  # before: out
        _row(10, "retry_scheduled", SINCE_MS + 1, None),  # not finished: out
        _row(11, "processing", SINCE_MS + 1, None),
        _row(12, "failed", UNTIL_MS - 3, UNTIL_MS - 1),  # last instant: in
    ]
    engine = await _seed(database_url, rows)
    try:
        figures = await headline_figures(engine, since=SINCE, until=UNTIL)
    finally:
        await engine.dispose()
    counted = [1, 2, 3, 4, 5, 6, 12]
    processing_ms = {r["payment_id"]: r["finished_at_ms"] - r["created_at_ms"] for r in rows
                     if r["finished_at_ms"] is not None}  # fmt: skip
    total_ms = sum(processing_ms[f"pay_{n}"] for n in counted)
    assert figures.payments_succeeded == 4
    assert figures.payments_failed == 3
    assert figures.payments_canceled == 1
    assert figures.payments_counted == 7
    assert figures.payment_processing_ms_total == total_ms
    assert figures.payment_processing_ms_avg == Fraction(total_ms, 7)
    assert figures.payment_success_rate == Fraction(4, 7)
    assert (figures.since, figures.until) == (SINCE, UNTIL)


async def test_an_empty_window_has_no_rate_and_no_average(database_url: str) -> None:
    engine = await _seed(database_url, [_row(1, "succeeded", SINCE_MS - 10, SINCE_MS - 5)])
    try:
        figures = await headline_figures(engine, since=SINCE, until=UNTIL)
    finally:
        await engine.dispose()
    assert figures.payments_counted == 0
    assert figures.payment_success_rate is None
    assert figures.payment_processing_ms_avg is None


@pytest.mark.parametrize("seed", range(3))
async def test_random_history_matches_an_independent_recomputation(
    database_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    statuses = [str(s) for s in PaymentStatus]
    rows = []
    for n in range(300):
        status = rng.choice(statuses)
        created = SINCE_MS + rng.randint(-86_400_000, 86_400_000)
        terminal = status not in ("processing", "retry_scheduled")
        finished = created + rng.randint(0, 5_000_000) if terminal else None
        rows.append(_row(n, status, created, finished))
    engine = await _seed(database_url, rows)
    try:
        figures = await headline_figures(engine, since=SINCE, until=UNTIL)
    finally:
        await engine.dispose()
    inside = [r for r in rows if r["finished_at_ms"] is not None
              and SINCE_MS <= r["finished_at_ms"] < UNTIL_MS]  # fmt: skip
    good = [r for r in inside if r["status"] in
            {"succeeded", "partially_refunded", "refunded", "disputed"}]  # fmt: skip
    bad = [r for r in inside if r["status"] in {"failed", "requires_payment_method"}]
    both = good + bad
    assert both, f"seed {seed} seeded no payment in the window"
    total = sum(r["finished_at_ms"] - r["created_at_ms"] for r in both)
    assert figures.payments_counted == len(both), f"seed={seed}"
    assert figures.payment_success_rate == Fraction(len(good), len(both)), f"seed={seed}"
    assert figures.payment_processing_ms_avg == Fraction(total, len(both)), f"seed={seed}"
    assert figures.payments_canceled == sum(r["status"] == "canceled" for r in inside)
