"""The front door's Prometheus registry: what it counts itself and what it gathers.

One ``FrontDoorMetrics`` per application, on its own ``CollectorRegistry`` (never the
process-global one: tests build many apps in one process, and Ray registers its own
metrics globally). A scrape first ``refresh``es — asks every shard for its snapshot with
a short timeout and, at most every ``DB_CACHE_S``, reads the database figures — then
renders; the custom collector only reads what ``refresh`` fetched, because
prometheus_client collects synchronously. See the package docstring for where each
family comes from and how to scrape several processes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Final

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.engine import PaymentStatus
from payportal.persistence._engine import READ
from payportal.persistence.tables import payments

from ._figures import headline_figures, recognition_accuracy

__all__ = [
    "DB_CACHE_S",
    "SHARD_TIMEOUT_S",
    "SUCCESS_WINDOW",
    "FrontDoorMetrics",
    "http_metrics_middleware",
    "route_template",
]

log = logging.getLogger(__name__)

# Database figures change by the second but cost a scan; several scrapers (or workers)
# within this time share one read.
DB_CACHE_S: Final = 5.0
# Revenue recognition accuracy may replay the ledger: recomputed at most this often.
ACCURACY_CACHE_S: Final = 60.0
# A shard busy for longer than this is reported down for the scrape rather than stalling
# it: Prometheus's default scrape timeout is 10 s and the database read shares it.
SHARD_TIMEOUT_S: Final = 1.0
# The success ratio gauge looks back this far: a day has enough payments to be stable
# and is short enough to show a processor incident the same day.
SUCCESS_WINDOW: Final = dt.timedelta(hours=24)
# Front-door latency: a read is a millisecond or so, a payment waits for the processor.
HTTP_SECONDS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Methods outside this set are one label value, so a client cannot grow the series.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A client that went away before the answer: nginx's convention.
STATUS_CLIENT_CLOSED: Final = 499


def route_template(request: web.Request) -> str:
    """The matched route's template (``/v1/payments/{id}``), never the raw path."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


class _Snapshot:
    def __init__(self) -> None:
        self.shards: list[dict[str, Any] | None] = []
        self.statuses: dict[str, int] | None = None
        self.success_ratio: float | None = None
        self.accuracy: float | None = None
        self.db_at: float | None = None
        self.accuracy_at: float | None = None


class FrontDoorMetrics:
    def __init__(
        self,
        *,
        router: Any,
        engine: AsyncEngine,
        worker: str = "0",
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.router = router
        self.engine = engine
        self.worker = worker
        self.db_cache_s = DB_CACHE_S
        self.accuracy_cache_s = ACCURACY_CACHE_S
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        # ``*_created`` series would double every counter's and histogram's series for a
        # timestamp Prometheus does not use from the text format. (Process-wide switch.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self.http_requests = Counter(
            "payportal_http_requests", "HTTP requests answered, by route template and status.",
            ["worker", "method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "payportal_http_request_duration_seconds",
            "Time from receiving a request to its handler returning, by route template.",
            ["worker", "method", "route"], buckets=HTTP_SECONDS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._snapshot = _Snapshot()
        self._db_lock = asyncio.Lock()
        self.registry.register(_Gathered(self))

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.http_requests.labels(self.worker, method, route, str(status)).inc()
        self.http_seconds.labels(self.worker, method, route).observe(seconds)

    async def refresh(self) -> None:
        await asyncio.gather(self._refresh_shards(), self._refresh_database())

    async def _refresh_shards(self) -> None:
        handles: Sequence[Any] = getattr(self.router, "handles", [])

        async def one(handle: Any) -> dict[str, Any] | None:
            remote = getattr(getattr(handle, "metrics_snapshot", None), "remote", None)
            if remote is None:
                return None
            try:
                async with asyncio.timeout(SHARD_TIMEOUT_S):
                    snapshot: dict[str, Any] = await remote()
                    return snapshot
            except Exception as error:  # a slow or dead shard is reported down, not raised
                log.warning("shard metrics unavailable: %s", type(error).__name__)
                return None

        self._snapshot.shards = list(await asyncio.gather(*(one(h) for h in handles)))

    async def _refresh_database(self) -> None:
        async with self._db_lock:
            last = self._snapshot.db_at
            if last is not None and time.monotonic() - last < self.db_cache_s:
                return
            try:
                await self._read_database()
            except Exception:
                # The previous figures stay; a stale gauge beats a failed scrape.
                log.exception("database metrics unavailable")
                return
            self._snapshot.db_at = time.monotonic()

    async def _read_database(self) -> None:
        p = payments.c
        query = sa.select(p.status, sa.func.count()).group_by(p.status)
        async with self.engine.execution_options(**READ).connect() as connection:
            statuses = {str(s): int(n) for s, n in await connection.execute(query)}
        until = self._now()
        since = until - SUCCESS_WINDOW
        figures = await headline_figures(self.engine, since=since, until=until, accuracy=False)
        snapshot = self._snapshot
        snapshot.statuses = statuses
        rate = figures.payment_success_rate
        snapshot.success_ratio = None if rate is None else float(rate)
        last = snapshot.accuracy_at
        if last is None or time.monotonic() - last >= self.accuracy_cache_s:
            accuracy = await recognition_accuracy(self.engine, since=since, until=until)
            snapshot.accuracy = None if accuracy is None else float(accuracy)
            snapshot.accuracy_at = time.monotonic()


def _histogram(name: str, documentation: str, snapshots: list[tuple[str, dict[str, Any]]],
               key: str) -> HistogramMetricFamily:  # fmt: skip
    family = HistogramMetricFamily(name, documentation, labels=["shard"])
    for shard, snapshot in snapshots:
        data = snapshot.get(key)
        if data is None:
            continue
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip([*data["bounds"], float("inf")], data["counts"], strict=True):
            cumulative += count
            buckets.append(("+Inf" if math.isinf(bound) else repr(float(bound)), cumulative))
        family.add_metric([shard], buckets, sum_value=data["sum"])
    return family


class _Gathered(Collector):
    """Families computed at scrape time from the router and what ``refresh`` fetched."""

    def __init__(self, metrics: FrontDoorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        yield from self._router(metrics)
        yield from self._shards(metrics._snapshot.shards)
        yield from self._database(metrics._snapshot)

    def _router(self, metrics: FrontDoorMetrics) -> Iterator[Metric]:
        router = metrics.router
        worker = metrics.worker
        queued = GaugeMetricFamily(
            "payportal_router_queued_commands",
            "Commands waiting in this front door to be batched to a shard.",
            labels=["worker", "shard"],
        )
        for shard, depth in enumerate(router.queue_depths()):
            queued.add_metric([worker, str(shard)], depth)
        yield queued
        outstanding = GaugeMetricFamily(
            "payportal_router_outstanding_commands",
            "Commands this front door has accepted and not yet had answered by a shard "
            "(new commands are refused with 429 at the queue limit).",
            labels=["worker"],
        )
        outstanding.add_metric([worker], router.outstanding)
        yield outstanding
        in_flight = GaugeMetricFamily(
            "payportal_router_batches_in_flight",
            "Batches this front door has sent to shards and awaits replies for.",
            labels=["worker"],
        )
        in_flight.add_metric([worker], router.batches_in_flight)
        yield in_flight

    def _shards(self, shards: list[dict[str, Any] | None]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "payportal_shard_up", "1 if the shard answered this scrape's metrics request.",
            labels=["shard"],
        )  # fmt: skip
        answered: list[tuple[str, dict[str, Any]]] = []
        for index, snapshot in enumerate(shards):
            up.add_metric([str(index)], 0 if snapshot is None else 1)
            if snapshot is not None:
                answered.append((str(index), snapshot))
        yield up
        yield _histogram(
            "payportal_shard_batch_commands", "Commands per batch a shard applied.",
            answered, "batch_commands",
        )  # fmt: skip
        yield _histogram(
            "payportal_journal_commit_seconds",
            "Time a shard's group commit (journal, checkpoints, read models) took.",
            answered, "commit_seconds",
        )  # fmt: skip
        yield _histogram(
            "payportal_payment_processing_seconds",
            "Payment processing time, creation to first terminal status, observed by the "
            "shard when the payment finished.",
            answered, "processing_seconds",
        )  # fmt: skip
        finished = CounterMetricFamily(
            "payportal_payments_finished",
            "Payments that reached a terminal status, by that status.",
            labels=["shard", "status"],
        )
        retries = CounterMetricFamily(
            "payportal_payment_retries", "Payment retries started (a new or re-sent attempt).",
            labels=["shard"],
        )  # fmt: skip
        events = CounterMetricFamily(
            "payportal_journal_events", "Events a shard committed to the journal.",
            labels=["shard"],
        )  # fmt: skip
        in_memory = GaugeMetricFamily(
            "payportal_shard_accounts_in_memory", "Accounts a shard holds in memory.",
            labels=["shard"],
        )  # fmt: skip
        for shard, snapshot in answered:
            for status, count in sorted(snapshot.get("payments_finished", {}).items()):
                finished.add_metric([shard, status], count)
            if "retries" in snapshot:
                retries.add_metric([shard], snapshot["retries"])
            if "events" in snapshot:
                events.add_metric([shard], snapshot["events"])
            if "accounts_in_memory" in snapshot:
                in_memory.add_metric([shard], snapshot["accounts_in_memory"])
        yield finished
        yield retries
        yield events
        yield in_memory

    def _database(self, snapshot: _Snapshot) -> Iterator[Metric]:
        if snapshot.statuses is not None:
            by_status = GaugeMetricFamily(
                "payportal_payments",
                "Payments by current status (read model; every status is present).",
                labels=["status"],
            )
            for status in PaymentStatus:
                by_status.add_metric([str(status)], snapshot.statuses.get(str(status), 0))
            yield by_status
        if snapshot.success_ratio is not None:
            yield GaugeMetricFamily(
                "payportal_payment_success_ratio",
                "Payments that finished processing in the last 24 h and succeeded, over "
                "those that succeeded or failed (canceled left out).",
                value=snapshot.success_ratio,
            )
        if snapshot.accuracy is not None:
            yield GaugeMetricFamily(
                "payportal_revenue_recognition_accuracy_ratio",
                "Revenue recognition accuracy over the months of service the last 24 h "
                "touch (1 is exact; recomputed at most once a minute).",
                value=snapshot.accuracy,
            )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_metrics_middleware(
    metrics_of: Callable[[web.Request], FrontDoorMetrics | None],
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Outermost middleware: counts every request with the status the client got."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        except asyncio.CancelledError:
            status = STATUS_CLIENT_CLOSED
            raise
        finally:
            metrics = metrics_of(request)
            if metrics is not None:
                metrics.observe_http(
                    request.method, route_template(request), status,
                    time.perf_counter() - started,
                )  # fmt: skip

    return middleware
