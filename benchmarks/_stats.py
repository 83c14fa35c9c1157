"""The arithmetic of the end-to-end benchmark, kept apart from any I/O so it can be tested:
percentiles, merging the load generator processes' samples into one step, and the rule
that stops stepping the offered load up.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

__all__ = [
    "Limits", "RampPolicy", "StepResult", "StepSamples", "merge_samples", "next_rate",
    "percentile", "stop_reason",
]  # fmt: skip


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending sequence; None if empty.

    Nearest rank, not interpolation: the answer is always a latency some request had, and
    the p99 of 100 requests is the 99th slowest-but-one, not a blend with the maximum."""
    if not sorted_values:
        return None
    assert 0 <= q <= 100
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class StepSamples(msgspec.Struct, kw_only=True):
    """What one load generator process saw during one step."""

    offered_rate: float
    duration_s: float
    scheduled: int = 0
    ok: int = 0
    declined: int = 0
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    follow_ups: int = 0
    # Latency of every succeeded request, µs, from its scheduled send time.
    latencies_us: list[int] = msgspec.field(default_factory=list)
    # Succeeded requests answered between the first success and the end of the schedule,
    # and that span: the rate the server sustained once requests had started coming back.
    ok_in_window: int = 0
    window_s: float = 0.0
    send_lag_p99_ms: float = 0.0
    connections_max: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


class StepResult(msgspec.Struct, kw_only=True):
    """One step of a ramp, all load generator processes together."""

    offered_rate: float
    duration_s: float
    scheduled: int
    ok: int
    declined: int
    errors: dict[str, int]
    error_count: int
    follow_ups: int
    achieved_rate: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    send_lag_p99_ms: float
    connections_max: int
    loadgen_cpu_s: float
    loadgen_cpu_pct: float  # % of one core, summed over the processes
    stop: str | None = None
    # Set on a failing step that was run again at the same rate before the ramp ended.
    retried: bool = False
    cpu_by_group_s: dict[str, float] = msgspec.field(default_factory=dict)


def merge_samples(samples: Iterable[StepSamples]) -> StepResult:
    samples = list(samples)
    assert samples
    latencies = sorted(v for s in samples for v in s.latencies_us)
    errors: Counter[str] = Counter()
    for s in samples:
        errors.update(s.errors)

    def ms(q: float) -> float | None:
        value = percentile(latencies, q)
        return None if value is None else value / 1000

    # Each process paced its own share of the rate; their sustained rates add up.
    achieved = sum(s.ok_in_window / s.window_s for s in samples if s.window_s > 0)
    return StepResult(
        offered_rate=sum(s.offered_rate for s in samples),
        duration_s=max(s.duration_s for s in samples),
        scheduled=sum(s.scheduled for s in samples),
        ok=sum(s.ok for s in samples),
        declined=sum(s.declined for s in samples),
        errors=dict(errors),
        error_count=sum(errors.values()),
        follow_ups=sum(s.follow_ups for s in samples),
        achieved_rate=achieved,
        p50_ms=ms(50),
        p90_ms=ms(90),
        p99_ms=ms(99),
        max_ms=None if not latencies else latencies[-1] / 1000,
        send_lag_p99_ms=max(s.send_lag_p99_ms for s in samples),
        connections_max=sum(s.connections_max for s in samples),
        loadgen_cpu_s=sum(s.cpu_s for s in samples),
        loadgen_cpu_pct=sum(100 * s.cpu_s / s.wall_s for s in samples if s.wall_s > 0),
    )


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """When a ramp stops stepping up."""

    p99_ms: float = 100.0
    # Below this p99 a step is easy and the next one may skip a step.
    easy_p99_ms: float = 25.0
    # Errors allowed in a step before it counts as failing (declines are not errors).
    errors_max: int = 0
    achieved_min_share: float = 0.9


def stop_reason(step: StepResult, limits: Limits) -> str | None:
    """Why the ramp must not go past ``step``, or None to keep stepping up."""
    if step.error_count > limits.errors_max:
        worst = max(step.errors.items(), key=lambda kv: kv[1])[0]
        return f"errors: {step.error_count} ({worst})"
    if step.ok == 0:
        return "nothing succeeded"
    if step.p99_ms is not None and step.p99_ms > limits.p99_ms:
        reason = f"p99 {step.p99_ms:.0f} ms > {limits.p99_ms:.0f} ms"
        if step.send_lag_p99_ms > step.p99_ms / 2:
            # The generator's own lateness is in every latency (they count from the
            # schedule); when it is most of the p99, the machine starved the generator.
            reason += f" (the load generator itself was {step.send_lag_p99_ms:.0f} ms late)"
        return reason
    if step.achieved_rate < limits.achieved_min_share * step.offered_rate:
        return f"achieved {step.achieved_rate / step.offered_rate:.0%} of offered"
    return None


def next_rate(rate: float, step: StepResult, limits: Limits, factor: float) -> float:
    """The next step's offered rate: ``factor`` times this one, or ``factor`` squared while
    the step was easy (p99 within ``limits.easy_p99_ms`` and nearly all of the offered
    load achieved), so a fast server is not walked up from 10/s a half-step at a time."""
    easy = (
        step.error_count == 0
        and step.p99_ms is not None
        and step.p99_ms <= limits.easy_p99_ms
        and step.achieved_rate >= 0.97 * step.offered_rate
    )
    return rate * (factor * factor if easy else factor)


AGAIN, NEXT, END = "again", "next", "end"


@dataclasses.dataclass
class RampPolicy:
    """What a ramp does after each step: run another step ``AGAIN`` after letting the
    server settle, go on to the ``NEXT`` rate, or ``END``; and at which rate.

    - Within the limits: the next rate (``next_rate``: ×factor, or ×factor² while easy),
      until ``max_steps`` or past ``max_rate``.
    - A step past the limits is not believed at once (at most ``retries_max`` times a
      ramp): on a shared machine one slow step may be someone else's doing. The ramp
      runs that rate again — or, if it got there by skipping a rate, the rate it
      skipped — and only a second failure ends it.
    - A confirmed failure ends the ramp, unless ``capacity_steps`` allow a few more steps
      to find what the server carries at any latency: they go on while it achieves ≥ 90 %
      of the load without errors and its p99 stays within ``beyond`` (its capacity).
    """

    limits: Limits
    beyond: Limits
    factor: float
    max_steps: int
    max_rate: float
    retries_max: int = 0
    capacity_steps: int = 0
    steps: int = 0
    retries_used: int = 0
    extra_steps: int = 0
    beyond_limits: bool = False
    first_stop: str | None = None
    ended_by: str = "the step limit"
    # A rate that failed once and awaits confirmation, and the rate stepped up from last.
    _failed_at: float | None = None
    _previous: float | None = None

    def after(self, rate: float, step: StepResult) -> tuple[str, float]:
        """Judge ``step`` (run at ``rate``): sets its ``stop`` and ``retried``, and says
        what comes next and at which rate."""
        self.steps += 1
        step.stop = stop_reason(step, self.limits)
        previous, self._previous = self._previous, rate
        if step.stop is not None:
            unconfirmed = self._failed_at is None and not self.beyond_limits
            if unconfirmed and self.retries_used < self.retries_max:
                self.retries_used += 1
                step.retried = True
                self._failed_at = rate
                skipped = previous is not None and rate > previous * self.factor * 1.001
                return AGAIN, rate / self.factor if skipped else rate
            if self.first_stop is None:
                self.first_stop = step.stop
            carried = stop_reason(step, self.beyond)
            if carried is not None or self.extra_steps >= self.capacity_steps:
                self.ended_by = step.stop if carried is None else carried
                return END, rate
            self.beyond_limits = True
            self._failed_at = None
            self.extra_steps += 1
            return NEXT, rate * self.factor
        if self._failed_at is not None and rate >= self._failed_at:
            self._failed_at = None  # the failure there was a hiccup
        if self.steps >= self.max_steps + (self.capacity_steps if self.beyond_limits else 0):
            self.ended_by = "the step limit"
            return END, rate
        following = next_rate(rate, step, self.limits, self.factor)
        if self._failed_at is not None:
            # Not past a rate that failed until it was run again.
            following = min(following, self._failed_at)
        if following > self.max_rate:
            self.ended_by = "the highest rate planned"
            return END, rate
        return NEXT, following
