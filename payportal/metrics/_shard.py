"""What a shard counts about itself, cheaply, for the front door to expose.

The model: a shard is a Ray actor, so the front door's Prometheus registry cannot see
inside it. Each shard keeps plain counters and fixed-bucket histograms here — a list
index bump per observation, no locks (the shard's event loop is its only writer), no
dependency — and answers ``snapshot()`` from its ``metrics_snapshot`` actor method. The
front door turns snapshots into metric families at scrape time
(``payportal.metrics._exposition``).

A payment is counted when it first reaches a terminal status; a payment sent back to
processing with a new payment method (after a hard decline) finishes, and is counted,
again — the engine measures its processing anew. Replayed commands add no events and so
count nothing. Counts start at zero when a shard (re)starts; they are exposed per shard,
so Prometheus sees a counter reset on one series, which ``rate()`` handles, rather than a
dip in a sum.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Final

from payportal.engine.messages import RetryStarted

__all__ = [
    "BATCH_COMMANDS_BUCKETS",
    "COMMIT_SECONDS_BUCKETS",
    "PROCESSING_SECONDS_BUCKETS",
    "Buckets",
    "ShardMetrics",
]

# Powers of two up to the router's largest batch (256) and past it.
BATCH_COMMANDS_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
# A group commit is milliseconds on a healthy database; the top buckets catch a stall.
COMMIT_SECONDS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
# A card answer takes a second or two; a soft decline is retried over minutes to days.
PROCESSING_SECONDS_BUCKETS: Final = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3_600.0, 86_400.0, 604_800.0,
)  # fmt: skip


class Buckets:
    """A histogram with fixed upper bounds (``le``, inclusive) and an implicit +Inf."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        assert list(bounds) == sorted(bounds), "bucket bounds must ascend"
        self.bounds = tuple(bounds)
        # One more than the bounds: the last counts values above every bound (+Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}


class ShardMetrics:
    def __init__(self) -> None:
        self.batch_commands = Buckets(BATCH_COMMANDS_BUCKETS)
        self.commit_seconds = Buckets(COMMIT_SECONDS_BUCKETS)
        self.processing_seconds = Buckets(PROCESSING_SECONDS_BUCKETS)
        # Payments that reached a terminal status here, by that status.
        self.payments_finished: dict[str, int] = {}
        self.retries = 0

    def unfinished_payment(self, state: Any, event: Any) -> str | None:
        """Before ``event`` is applied: the id of the payment it touches if that payment
        has not finished processing (so the event may be the one that finishes it)."""
        payment_id: str | None = getattr(event, "payment_id", None)
        if payment_id is None or state is None:
            return None
        if isinstance(event, RetryStarted):
            self.retries += 1
        payment = state.payments.get(payment_id)
        if payment is not None and payment.finished_at_ms is not None:
            return None
        return payment_id

    def after_event(self, state: Any, payment_id: str) -> None:
        """After the event: count the payment if it has just finished processing."""
        payment = state.payments.get(payment_id)
        if payment is None or payment.finished_at_ms is None:
            return
        self.processing_seconds.observe((payment.finished_at_ms - payment.created_at_ms) / 1000)
        status = str(payment.status)
        self.payments_finished[status] = self.payments_finished.get(status, 0) + 1

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        return {
            "batch_commands": self.batch_commands.snapshot(),
            "commit_seconds": self.commit_seconds.snapshot(),
            "processing_seconds": self.processing_seconds.snapshot(),
            "payments_finished": dict(self.payments_finished),
            "retries": self.retries,
            **extra,
        }
