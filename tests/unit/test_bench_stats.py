"""The end-to-end benchmark's arithmetic: nearest-rank percentiles, merging what several
load generator processes saw into one step, the rule that ends a ramp, the rule that
picks the next rate, and the ramp's retries and capacity steps — all on hand-made
samples, no server."""

from __future__ import annotations

import pytest

from benchmarks._stats import (
    AGAIN,
    END,
    NEXT,
    Limits,
    RampPolicy,
    StepResult,
    StepSamples,
    merge_samples,
    next_rate,
    percentile,
    stop_reason,
)


def test_percentiles_are_nearest_rank_values_some_request_had() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7], 99) == 7
    assert percentile([], 50) is None
    # Ten values: the p99 is the largest (rank ceil(9.9) = 10), never a blend.
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000], 99) == 1000
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000], 90) == 9


def _samples(**fields: object) -> StepSamples:
    base: dict[str, object] = {"offered_rate": 100.0, "duration_s": 2.0}
    base.update(fields)
    return StepSamples(**base)  # type: ignore[arg-type]


def test_merging_adds_counts_and_rates_and_takes_percentiles_over_all_latencies() -> None:
    first = _samples(scheduled=200, ok=190, declined=5, errors={"HTTP 500": 5},
                     latencies_us=[1_000] * 190, ok_in_window=180, window_s=1.8,
                     cpu_s=0.2, wall_s=2.0, connections_max=3, send_lag_p99_ms=1.5)
    second = _samples(scheduled=200, ok=200, errors={"HTTP 500": 1, "timeout": 2},
                      latencies_us=[3_000] * 10 + [2_000] * 190, ok_in_window=190,
                      window_s=1.9, cpu_s=0.1, wall_s=2.0, connections_max=4,
                      send_lag_p99_ms=0.5, follow_ups=7)  # fmt: skip
    step = merge_samples([first, second])
    assert step.offered_rate == 200.0
    assert step.scheduled == 400
    assert (step.ok, step.declined, step.follow_ups) == (390, 5, 7)
    assert step.errors == {"HTTP 500": 6, "timeout": 2}
    assert step.error_count == 8
    assert step.achieved_rate == pytest.approx(100.0 + 100.0)
    assert step.p50_ms == 2.0
    assert step.p99_ms == 3.0
    assert step.max_ms == 3.0
    assert step.connections_max == 7
    assert step.send_lag_p99_ms == 1.5
    assert step.loadgen_cpu_s == pytest.approx(0.3)
    assert step.loadgen_cpu_pct == pytest.approx(15.0)


def test_a_process_with_no_success_adds_nothing_to_the_achieved_rate() -> None:
    step = merge_samples([_samples(ok_in_window=0, window_s=0.0), _samples(ok=0)])
    assert step.achieved_rate == 0.0
    assert step.p99_ms is None


def _step(**fields: object) -> StepResult:
    base: dict[str, object] = {
        "offered_rate": 100.0, "duration_s": 2.0, "scheduled": 200, "ok": 200, "declined": 0,
        "errors": {}, "error_count": 0, "follow_ups": 0, "achieved_rate": 100.0,
        "p50_ms": 5.0, "p90_ms": 8.0, "p99_ms": 10.0, "max_ms": 12.0, "send_lag_p99_ms": 1.0,
        "connections_max": 2, "loadgen_cpu_s": 0.1, "loadgen_cpu_pct": 5.0,
    }  # fmt: skip
    base.update(fields)
    return StepResult(**base)  # type: ignore[arg-type]


def test_a_ramp_goes_on_while_latency_errors_and_throughput_are_within_limits() -> None:
    assert stop_reason(_step(), Limits()) is None
    # Declines are the card's answer, not the server's failure.
    assert stop_reason(_step(declined=50, ok=150), Limits()) is None
    assert stop_reason(_step(p99_ms=100.0), Limits(p99_ms=100.0)) is None
    assert stop_reason(_step(achieved_rate=90.0), Limits()) is None


def test_a_ramp_stops_at_the_first_error_slow_p99_or_shortfall() -> None:
    limits = Limits(p99_ms=100.0)
    reason = stop_reason(_step(errors={"HTTP 503": 2, "timeout": 1}, error_count=3), limits)
    assert reason is not None
    assert reason.startswith("errors: 3 (HTTP 503)")
    assert stop_reason(_step(p99_ms=100.5), limits) == "p99 100 ms > 100 ms"
    # A starved load generator is named: its lateness is in every latency.
    assert stop_reason(_step(p99_ms=150.0, send_lag_p99_ms=120.0), limits) == (
        "p99 150 ms > 100 ms (the load generator itself was 120 ms late)"
    )
    assert stop_reason(_step(p99_ms=350.0), Limits(p99_ms=400.0)) is None
    assert stop_reason(_step(achieved_rate=89.0), limits) == "achieved 89% of offered"
    assert stop_reason(_step(ok=0, p99_ms=None, achieved_rate=0.0), limits) == (
        "nothing succeeded"
    )
    # A tolerance for errors can be given.
    assert stop_reason(_step(errors={"x": 1}, error_count=1), Limits(errors_max=1)) is None


def test_the_next_rate_skips_a_step_only_while_the_server_is_far_from_its_limits() -> None:
    limits = Limits(p99_ms=100.0, easy_p99_ms=25.0)
    assert next_rate(100.0, _step(p99_ms=10.0), limits, 1.5) == pytest.approx(225.0)
    assert next_rate(100.0, _step(p99_ms=30.0), limits, 1.5) == pytest.approx(150.0)
    assert next_rate(100.0, _step(p99_ms=10.0, achieved_rate=95.0), limits, 1.5) == (
        pytest.approx(150.0)
    )
    # With a slow processor the easy band sits above its latency.
    slow = Limits(p99_ms=400.0, easy_p99_ms=325.0)
    assert next_rate(100.0, _step(p99_ms=310.0), slow, 1.5) == pytest.approx(225.0)


def _policy(**fields: object) -> RampPolicy:
    base: dict[str, object] = {
        "limits": Limits(p99_ms=100.0, easy_p99_ms=25.0), "beyond": Limits(p99_ms=2_000.0),
        "factor": 1.5, "max_steps": 10, "max_rate": 10_000.0,
    }  # fmt: skip
    base.update(fields)
    return RampPolicy(**base)  # type: ignore[arg-type]


def test_a_ramp_walks_up_until_the_first_failure_without_retries() -> None:
    policy = _policy()
    assert policy.after(100.0, _step(p99_ms=50.0)) == (NEXT, pytest.approx(150.0))
    action, _ = policy.after(150.0, _step(offered_rate=150.0, achieved_rate=150.0,
                                          p99_ms=150.0))  # fmt: skip
    assert action == END
    assert policy.first_stop == policy.ended_by == "p99 150 ms > 100 ms"


def test_a_failing_step_is_run_again_and_only_a_second_failure_ends_the_ramp() -> None:
    policy = _policy(retries_max=2)
    assert policy.after(100.0, _step(p99_ms=60.0)) == (NEXT, pytest.approx(150.0))
    slow = _step(p99_ms=300.0)
    assert policy.after(150.0, slow) == (AGAIN, 150.0)
    assert slow.retried
    assert slow.stop == "p99 300 ms > 100 ms"
    # The second run passes: the ramp goes on from there.
    assert policy.after(150.0, _step(p99_ms=60.0)) == (NEXT, pytest.approx(225.0))
    assert policy.after(225.0, _step(p99_ms=300.0))[0] == AGAIN
    assert policy.after(225.0, _step(p99_ms=300.0))[0] == END
    assert policy.retries_used == 2
    assert policy.first_stop == "p99 300 ms > 100 ms"


def test_a_failure_after_a_skipped_rate_tries_the_skipped_rate_then_the_failed_one() -> None:
    policy = _policy(retries_max=1)
    # Easy: the next rate skips one (×1.5²).
    assert policy.after(100.0, _step(p99_ms=10.0)) == (NEXT, pytest.approx(225.0))
    assert policy.after(225.0, _step(p99_ms=300.0)) == (AGAIN, pytest.approx(150.0))
    # The skipped rate passes, and easily: still not past 225 before 225 is run again.
    easy = _step(offered_rate=150.0, achieved_rate=150.0, p99_ms=10.0)
    assert policy.after(150.0, easy) == (NEXT, pytest.approx(225.0))
    assert policy.after(225.0, _step(offered_rate=225.0, achieved_rate=225.0,
                                     p99_ms=300.0))[0] == END  # fmt: skip


def test_retries_are_bounded_per_ramp() -> None:
    policy = _policy(retries_max=1)
    assert policy.after(100.0, _step(p99_ms=300.0))[0] == AGAIN
    assert policy.after(100.0, _step(p99_ms=50.0))[0] == NEXT
    assert policy.after(150.0, _step(p99_ms=300.0))[0] == END


def test_capacity_steps_go_on_past_the_latency_limit_while_the_server_keeps_up() -> None:
    policy = _policy(capacity_steps=3)
    assert policy.after(100.0, _step(p99_ms=300.0)) == (NEXT, pytest.approx(150.0))
    assert policy.beyond_limits
    assert policy.after(150.0, _step(offered_rate=150.0, achieved_rate=149.0,
                                     p99_ms=900.0)) == (NEXT, pytest.approx(225.0))  # fmt: skip
    # Falling short of the offered load ends it, whatever the latency.
    action, _ = policy.after(225.0, _step(offered_rate=225.0, achieved_rate=150.0, p99_ms=900.0))
    assert action == END
    assert policy.first_stop == "p99 300 ms > 100 ms"
    assert policy.ended_by == "achieved 67% of offered"


def test_capacity_steps_are_bounded_and_end_at_errors() -> None:
    policy = _policy(capacity_steps=1)
    assert policy.after(100.0, _step(p99_ms=300.0))[0] == NEXT
    assert policy.after(150.0, _step(p99_ms=300.0))[0] == END
    erring = _policy(capacity_steps=5)
    assert erring.after(100.0, _step(errors={"HTTP 503": 3}, error_count=3))[0] == END
    assert erring.ended_by.startswith("errors: 3")


def test_a_ramp_ends_at_its_step_limit_or_its_highest_rate() -> None:
    policy = _policy(max_steps=2)
    assert policy.after(100.0, _step(p99_ms=50.0))[0] == NEXT
    assert policy.after(150.0, _step(p99_ms=50.0))[0] == END
    assert policy.ended_by == "the step limit"
    capped = _policy(max_rate=120.0)
    assert capped.after(100.0, _step(p99_ms=50.0))[0] == END
    assert capped.ended_by == "the highest rate planned"
