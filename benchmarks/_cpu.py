"""CPU time by part of the system, so a benchmark can say where each payment's cost goes.

Wall-clock throughput on a shared 2-core machine moves with whatever else runs; the CPU
seconds each process spent per payment move much less, and they say which part to make
cheaper. Processes are grouped by what they are on this machine: the benchmark's own
process (the front door's side: router, batching, reply decoding), the account shards
(Ray actors), PostgreSQL's server processes, and Ray's own daemons.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psutil

__all__ = ["CpuMeter"]

GROUPS = ("front door (this process)", "account shards", "PostgreSQL", "Ray daemons", "other")


def _group(process: psutil.Process, own_pid: int) -> str:
    if process.pid == own_pid:
        return GROUPS[0]
    try:
        name = process.name()
        command = " ".join(process.cmdline()[:2])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return GROUPS[4]
    if "ray::AccountShard" in command or "ray::AccountShard" in name:
        return GROUPS[1]
    if name.startswith("postgres"):
        return GROUPS[2]
    if name in ("raylet", "gcs_server") or "ray/" in command or "ray::" in command:
        return GROUPS[3]
    return GROUPS[4]


def _cpu_seconds() -> Iterator[tuple[tuple[int, float], psutil.Process, float]]:
    for process in psutil.process_iter():
        try:
            times = process.cpu_times()
            yield (process.pid, process.create_time()), process, times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


class CpuMeter:
    """``start()``, run the work, ``stop()``: CPU seconds by group in between."""

    def __init__(self) -> None:
        self._before: dict[tuple[int, float], float] = {}

    def start(self) -> None:
        self._before = {key: seconds for key, _, seconds in _cpu_seconds()}

    def stop(self) -> dict[str, float]:
        own_pid = os.getpid()
        spent = dict.fromkeys(GROUPS, 0.0)
        for key, process, seconds in _cpu_seconds():
            # A process started meanwhile counts from zero; one that ended is not seen
            # (its time is lost, which only under-counts).
            delta = seconds - self._before.get(key, 0.0)
            if delta > 0:
                spent[_group(process, own_pid)] += delta
        return spent


def report(spent: dict[str, float], payments: int, cores: int) -> list[str]:
    """Lines of µs of CPU per payment by group, and the ceiling ``cores`` allow."""
    total = sum(spent.values())
    lines = [
        f"  {group:26s} {spent[group] / payments * 1e6:8.0f} µs/payment "
        f"({spent[group] / total:5.1%})"
        for group in GROUPS
        if spent[group] / payments * 1e6 >= 0.5  # idle background work rounds to nothing
    ]  # fmt: skip
    lines.append(
        f"  {'total':26s} {total / payments * 1e6:8.0f} µs/payment: {cores} cores allow at "
        f"most {cores * payments / total:,.0f} payments/s at this cost"
    )
    return lines
