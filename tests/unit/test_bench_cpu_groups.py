"""How the end-to-end benchmark attributes CPU: PostgreSQL backends by the database in
their process title (other people's databases are not ours), named pids by role, and
only the process trees it started when it says so."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from benchmarks._cpu import FRONT_DOOR_SELF, LOADGEN, OTHER, CpuMeter, _group, _postgres_database


def test_a_backends_database_is_read_from_its_process_title() -> None:
    assert _postgres_database("postgres: 15/main: postgres bench_1 127.0.0.1(52368) idle") == (
        "bench_1"
    )
    assert _postgres_database("postgres: app shop [local] SELECT") == "shop"
    assert _postgres_database("postgres: bob pp_2 [::1](4711) idle in transaction") == "pp_2"
    # The server's own processes serve no database.
    assert _postgres_database("postgres: 15/main: walwriter ") is None
    assert _postgres_database("postgres: checkpointer") is None


def test_a_pid_given_a_role_is_counted_in_that_group() -> None:
    me = psutil.Process(os.getpid())
    assert _group(me, os.getpid()) == FRONT_DOOR_SELF
    assert _group(me, os.getpid(), roles={os.getpid(): LOADGEN}) == LOADGEN


def test_outside_the_given_trees_everything_is_other() -> None:
    # Rooted at a child of this process: this process is outside that tree, so its CPU
    # counts as someone else's.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        meter = CpuMeter(roots=[child.pid])
        meter.start()
        started = psutil.Process().cpu_times()
        while sum(psutil.Process().cpu_times()[:2]) - sum(started[:2]) < 0.02:
            sum(range(10_000))
        spent = meter.stop()
    finally:
        child.kill()
        child.wait()
    assert spent[FRONT_DOOR_SELF] == 0.0
    assert spent[OTHER] >= 0.015


def test_with_no_database_of_its_own_no_postgres_process_is_counted() -> None:
    postgres = [p for p in psutil.process_iter(["name"])
                if (p.info["name"] or "").startswith("postgres")]  # fmt: skip
    for process in postgres[:3]:
        assert _group(process, os.getpid(), databases=frozenset()) == OTHER
