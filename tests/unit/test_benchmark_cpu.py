"""The CPU accounting the shard benchmark prints: grouping of processes and the figures."""

from __future__ import annotations

import gc
import os

import psutil

from benchmarks._cpu import GROUPS, CpuMeter, _group, report
from payportal.gc_tuning import THRESHOLDS, tune_for_throughput


def test_report_gives_microseconds_per_payment_and_the_ceiling_the_cores_allow() -> None:
    spent = dict.fromkeys(GROUPS, 0.0)
    spent["account shards"] = 3.0
    spent["PostgreSQL"] = 1.0
    lines = report(spent, payments=10_000, cores=2)
    assert any("account shards" in line and " 300 µs/payment" in line for line in lines)
    assert any("PostgreSQL" in line and " 100 µs/payment" in line for line in lines)
    # Groups that spent nothing are left out.
    assert not any("Ray daemons" in line for line in lines)
    # 400 µs a payment on 2 cores: at most 5,000 payments/s.
    assert "400 µs/payment" in lines[-1]
    assert "at most 5,000 payments/s" in lines[-1]


def test_the_meter_counts_this_process_as_the_front_door() -> None:
    assert _group(psutil.Process(os.getpid()), os.getpid()) == "front door (this process)"
    meter = CpuMeter()
    meter.start()
    started = psutil.Process().cpu_times()
    # Burn 50 ms of this process's CPU, which the meter must then count.
    while sum(psutil.Process().cpu_times()[:2]) - sum(started[:2]) < 0.05:
        sum(range(10_000))
    spent = meter.stop()
    assert spent["front door (this process)"] >= 0.04


def test_tuning_raises_the_collector_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_for_throughput()
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
