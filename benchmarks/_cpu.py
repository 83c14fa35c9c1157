"""CPU time by part of the system, so a benchmark can say where each payment's cost goes.

Wall-clock throughput on a shared 2-core machine moves with whatever else runs; the CPU
seconds each process spent per payment move much less, and they say which part to make
cheaper. Processes are grouped by what they are on this machine: the benchmark's own
process (the front door's side: router, batching, reply decoding), the account shards
(Ray actors), PostgreSQL's server processes, and Ray's own daemons.

The end-to-end benchmark runs the front door, the processor and the load generator as
processes of their own; they are told apart by name (``payportal serve``, ``payportal
sandbox``, ``benchmarks.loadgen``) or by pid (``roles``). On a machine shared with other
people's work it also narrows what counts: with ``roots``, only those processes and
their descendants are grouped (the rest is "other"), and with ``databases``, only the
PostgreSQL backends serving those databases (plus the server's shared background
processes, which cannot be told apart; none at all when ``databases`` is empty).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping

import psutil

__all__ = ["CpuMeter", "tree_pids"]

FRONT_DOOR_SELF = "front door (this process)"
FRONT_DOOR = "front door"
SHARDS = "account shards"
POSTGRES = "PostgreSQL"
PROCESSOR = "processor (sandbox)"
MAIL = "mail sender"
# Like the sandbox for a processor, the catcher stands in for an SMTP server elsewhere.
SMTP = "SMTP (catcher)"
RAY = "Ray daemons"
LOADGEN = "load generator"
OTHER = "other"
GROUPS = (FRONT_DOOR_SELF, FRONT_DOOR, SHARDS, POSTGRES, PROCESSOR, MAIL, SMTP, RAY, LOADGEN,
          OTHER)  # fmt: skip


# A backend's client in its process title: "127.0.0.1(52368)", "[::1](4711)" or "[local]".
_CLIENT = re.compile(r"^(\S+\(\d+\)|\[local\])$")


def _postgres_database(command: str) -> str | None:
    """The database a backend serves, from its process title (``postgres: [cluster:] user
    database client activity``); None for the server's own background processes."""
    parts = command.split()
    for i, part in enumerate(parts[1:], start=1):
        if _CLIENT.match(part):
            return parts[i - 1]
    return None


def _group(
    process: psutil.Process,
    own_pid: int,
    roles: Mapping[int, str] | None = None,
    databases: frozenset[str] | None = None,
) -> str:
    if roles and process.pid in roles:
        return roles[process.pid]
    if process.pid == own_pid:
        return FRONT_DOOR_SELF
    try:
        name = process.name()
        command = " ".join(process.cmdline()[:4])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return OTHER
    if "ray::AccountShard" in command or "ray::AccountShard" in name:
        return SHARDS
    if name.startswith("postgres"):
        if databases is not None:
            if not databases:  # a run on no PostgreSQL database: none of it is ours
                return OTHER
            try:
                database = _postgres_database(" ".join(process.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                return OTHER
            if database is not None and database not in databases:
                return OTHER
        return POSTGRES
    if "payportal sandbox" in command or "payportal.processors.sandbox" in command:
        return PROCESSOR
    if "payportal mail-catcher" in command:
        return SMTP
    if "payportal mail" in command:
        return MAIL
    if "payportal serve" in command:
        return FRONT_DOOR
    if "benchmarks.loadgen" in command:
        return LOADGEN
    if name in ("raylet", "gcs_server") or "ray/" in command or "ray::" in command:
        return RAY
    return OTHER


def tree_pids(roots: Iterable[int]) -> set[int]:
    """``roots`` and every process descended from them, as they are now."""
    pids: set[int] = set()
    for root in roots:
        try:
            process = psutil.Process(root)
            pids.add(root)
            pids.update(child.pid for child in process.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _cpu_seconds() -> Iterator[tuple[tuple[int, float], psutil.Process, float]]:
    for process in psutil.process_iter():
        try:
            times = process.cpu_times()
            yield (process.pid, process.create_time()), process, times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


class CpuMeter:
    """``start()``, run the work, ``stop()``: CPU seconds by group in between.

    ``roles`` names the group of particular pids; ``roots`` limits the count to those
    process trees (and PostgreSQL); ``databases`` limits PostgreSQL to those databases.
    """

    def __init__(
        self,
        *,
        roles: Mapping[int, str] | None = None,
        roots: Iterable[int] | None = None,
        databases: Iterable[str] | None = None,
    ) -> None:
        self._before: dict[tuple[int, float], float] = {}
        self._roles = dict(roles or {})
        self._roots = None if roots is None else list(roots)
        self._databases = None if databases is None else frozenset(databases)
        self._scope: set[int] = set()

    def start(self) -> None:
        if self._roots is not None:
            self._scope = tree_pids(self._roots)
        self._before = {key: seconds for key, _, seconds in _cpu_seconds()}

    def stop(self) -> dict[str, float]:
        own_pid = os.getpid()
        if self._roots is not None:
            # Children born during the measurement count too (Ray restarts a worker).
            self._scope |= tree_pids(self._roots)
        spent = dict.fromkeys(GROUPS, 0.0)
        for key, process, seconds in _cpu_seconds():
            # A process started meanwhile counts from zero; one that ended is not seen
            # (its time is lost, which only under-counts).
            delta = seconds - self._before.get(key, 0.0)
            if delta <= 0:
                continue
            group = _group(process, own_pid, self._roles, self._databases)
            if self._roots is not None and process.pid not in self._scope and group != POSTGRES:
                group = OTHER
            spent[group] += delta
        return spent


def report(
    spent: dict[str, float], payments: int, cores: int, *, exclude: Iterable[str] = ()
) -> list[str]:
    """Lines of µs of CPU per payment by group, and the ceiling ``cores`` allow; the
    ``exclude`` groups are left out of the lines and the total."""
    left_out = set(exclude)
    groups = [g for g in GROUPS if g not in left_out]
    total = sum(spent.get(group, 0.0) for group in groups)
    lines = [
        f"  {group:26s} {spent[group] / payments * 1e6:8.0f} µs/payment "
        f"({spent[group] / total:5.1%})"
        for group in groups
        if spent.get(group, 0.0) / payments * 1e6 >= 0.5  # idle background work rounds to nothing
    ]  # fmt: skip
    lines.append(
        f"  {'total':26s} {total / payments * 1e6:8.0f} µs/payment: {cores} cores allow at "
        f"most {cores * payments / total:,.0f} payments/s at this cost"
    )
    return lines
