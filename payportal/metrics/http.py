"""HTTP side of the metrics: ``GET /metrics`` (Prometheus) and ``GET /v1/metrics/summary``.

Both are merchant operations: a payer gets 404 (the operation does not exist for them,
as everywhere in this API), a missing or bad key 401. The summary's window is a
duration ending at ``end`` (unix seconds, exclusive; default now): ``30m``, ``24h``, ``7d``… up to
366 days; see ``payportal.metrics._figures`` for what is counted in it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from fractions import Fraction
from typing import Annotated, Final, Literal

import msgspec
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from payportal.http.auth import authenticate
from payportal.http.codec import decode_query, respond
from payportal.http.errors import not_found, parameter_invalid
from payportal.http.typedefs import ROUTER, STORE

from ._exposition import FrontDoorMetrics, http_metrics_middleware
from ._figures import headline_figures

__all__ = [
    "METRICS",
    "MetricsSummary",
    "MetricsSummaryQuery",
    "MetricsSummaryWindow",
    "install_metrics",
    "metrics_summary",
    "prometheus_metrics",
]

METRICS: Final = web.AppKey("payportal_metrics", FrontDoorMetrics)

# A year and a day: a yearly report over a leap year; longer windows are a report, not a
# headline, and would scan the whole table.
WINDOW_DAYS_MAX: Final = 366
_UNIT_SECONDS: Final = {"m": 60, "h": 3_600, "d": 86_400}
_WINDOW: Final = re.compile(r"([1-9][0-9]{0,5})([mhd])")

Window = Annotated[
    str,
    msgspec.Meta(
        # ``(?!\n)``: Python's ``$`` also matches before a final newline.
        pattern=r"^[1-9][0-9]{0,5}[mhd]$(?!\n)",
        description="A duration: minutes (m), hours (h) or days (d), e.g. 24h; at most 366d.",
    ),
]


class MetricsSummaryQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    window: Window = "24h"
    end: Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799)] | None = None


class MetricsSummaryWindow(msgspec.Struct, frozen=True, kw_only=True):
    start: int
    end: int
    seconds: int


class MetricsSummary(msgspec.Struct, frozen=True, kw_only=True):
    object: Literal["metrics_summary"] = "metrics_summary"
    # Mean of processing_ms over payments that finished in the window (succeeded or failed).
    payment_processing_ms_avg: float | None
    # Succeeded / (succeeded + failed) among payments that finished in the window.
    payment_success_rate: float | None
    # 1.0 is exact; null where the accounting module does not provide it.
    revenue_recognition_accuracy: float | None
    window: MetricsSummaryWindow
    payments_counted: int
    payments_succeeded: int
    payments_failed: int
    payments_canceled: int


async def _merchant(request: web.Request) -> None:
    principal = await authenticate(request)
    if not principal.is_merchant:
        raise not_found(None, "resource")


def window_seconds(window: str) -> int:
    match = _WINDOW.fullmatch(window)
    if match is None:
        raise parameter_invalid("window", "window is a number and m, h or d, e.g. 24h.")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > WINDOW_DAYS_MAX * 86_400:
        raise parameter_invalid("window", f"window is at most {WINDOW_DAYS_MAX}d.")
    return seconds


async def metrics_summary(request: web.Request) -> web.Response:
    await _merchant(request)
    query = decode_query(request, MetricsSummaryQuery)
    seconds = window_seconds(query.window)
    # Now, rounded up to the second: the window's ends are whole seconds, and rounding
    # down would leave out what finished in the current second.
    end_s = query.end if query.end is not None else math.floor(time.time()) + 1
    until = dt.datetime.fromtimestamp(end_s, dt.UTC)
    since = until - dt.timedelta(seconds=seconds)
    figures = await headline_figures(request.app[STORE].engine, since=since, until=until)

    def number(value: Fraction | None) -> float | None:
        return None if value is None else float(value)

    return respond(MetricsSummary(
        payment_processing_ms_avg=number(figures.payment_processing_ms_avg),
        payment_success_rate=number(figures.payment_success_rate),
        revenue_recognition_accuracy=number(figures.revenue_recognition_accuracy),
        window=MetricsSummaryWindow(start=end_s - seconds, end=end_s, seconds=seconds),
        payments_counted=figures.payments_counted,
        payments_succeeded=figures.payments_succeeded,
        payments_failed=figures.payments_failed,
        payments_canceled=figures.payments_canceled,
    ))  # fmt: skip


async def prometheus_metrics(request: web.Request) -> web.Response:
    await _merchant(request)
    metrics = request.app[METRICS]
    await metrics.refresh()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})


def install_metrics(app: web.Application, *, worker: str = "0") -> FrontDoorMetrics:
    """Give ``app`` its registry and put the request counter outermost, so it records the
    status the client got (after the error middleware has shaped it)."""
    metrics = FrontDoorMetrics(router=app[ROUTER], engine=app[STORE].engine, worker=worker)
    app[METRICS] = metrics
    middleware = http_metrics_middleware(lambda request: request.app.get(METRICS))
    app.middlewares.insert(0, middleware)  # type: ignore[arg-type]
    return metrics
