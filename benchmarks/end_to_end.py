"""End-to-end benchmark: three servers given the machine in turn, the same load, database
and processor, side by side (``make bench``; ``make bench-quick`` for a short run).

1. **ceiling**: aiohttp on uvloop answering payportal's request shapes with fixed bodies
   (``benchmarks/ceiling.py``): the most this stack answers on this machine.
2. **naive**: the same payments written the obvious way, one PostgreSQL transaction each
   (``benchmarks/naive/``, not part of payportal).
3. **payportal**: ``payportal serve`` on PostgreSQL, processor callbacks and confirmation
   emails on (the built-in mail catcher).

For each server: a scratch PostgreSQL database, then the sandbox processor as a process
of its own (``payportal sandbox``, its callbacks pointed at the server under test), a
pool of sandbox card tokens, the server, and its accounts (each with open invoices never
paid off and a saved card). Then, per workload, a ramp of open-loop load (the load
generator, ``benchmarks/loadgen.py``) stepped up from a low rate (×1.5 a step; ×2.25
while a step is easy) until p99 passes the limit, errors appear or the server achieves
less than 90 % of what is offered. Passes: the processor answering at once, then after
300 ms (the p99 limit grows by that much). Then the shard benchmark
(``benchmarks.shards``) on PostgreSQL, for the end-to-end / shards ratio.

Workloads: ``uniform`` over 10,000 accounts, ``zipf`` (s = 1.0) over 100,000, ``hot``
(one account takes 40 %), and ``reads`` (``GET /v1/accounts/{id}``).

Output: a progress bar and a line per step, the summary table, a JSON file and a PNG
plot under ``benchmarks/results/``, and the ratios last.

    python -m benchmarks.end_to_end            # the full run, 20-40 minutes
    python -m benchmarks.end_to_end --quick    # under 3 minutes: fewer, shorter steps
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
from tqdm import tqdm

from . import _cpu, _ids, _report
from ._postgres import asyncpg_dsn, create_postgres_database, drop_postgres_database, server_url
from ._processes import Managed, clean_environment, free_port, wait_http
from ._stats import (
    AGAIN,
    END,
    Limits,
    RampPolicy,
    StepResult,
    StepSamples,
    merge_samples,
    stop_reason,
)
from .loadgen import LoadSpec, StepSpec

__all__ = ["Plan", "main"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SERVERS = ("ceiling", "naive", "payportal")
TOKENS = 64
# Accounts past this index (the Zipf workload's long tail) get one open invoice, not two:
# it halves the time 100,000 accounts take to seed, and no payment reaches a second one.
SINGLE_INVOICE_FROM = 10_000
TEST_CARD = "4242424242424242"  # the sandbox's always-approving Visa test card
SERVE_START_S = 240.0
SEED_S_MAX = 1200.0
# Settled: the server under test and its processor use less than this share of one core,
# measured over windows of this length.
SETTLED_CORES = 0.15
SETTLE_WINDOW_S = 0.5


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "pay" or "read"
    distribution: str
    accounts: int


@dataclasses.dataclass(frozen=True)
class Pass:
    name: str
    latency_ms: int
    # server -> workloads it runs in this pass
    workloads: dict[str, tuple[Workload, ...]]

    def accounts(self, server: str) -> int:
        """Accounts to seed on ``server``: its widest workload's."""
        return max((w.accounts for w in self.workloads.get(server, ())), default=0)


@dataclasses.dataclass(frozen=True)
class Plan:
    quick: bool
    passes: tuple[Pass, ...]
    step_s: float
    drain_s: float
    warmup_s: float
    start_rate: float
    factor: float
    max_steps: int
    retries_max: int  # failing steps run again (once each) per ramp
    # Steps past the latency limit while the server still carries ≥ 90 % of the load
    # without errors and its p99 stays under capacity_p99_ms: its capacity at any latency.
    capacity_steps: int
    capacity_p99_ms: float
    max_rate: float
    p99_ms: float
    idle_s: float
    settle_s: float
    half_peak: frozenset[str]  # servers whose uniform ramp gets a step at half its peak
    shard_args: tuple[str, ...]
    loadgen_procs: int
    connections_max: int
    notes: tuple[str, ...]
    keep_logs: bool = False
    servers: tuple[str, ...] = SERVERS
    # Front-door processes of payportal serve (``serve --workers``).
    serve_workers: int = 1


def make_plan(quick: bool, *, loadgen_procs: int = 1, p99_ms: float = 100.0) -> Plan:
    if quick:
        n = 1_000
        uniform = Workload("uniform", "pay", "uniform", n)
        hot = Workload("hot", "pay", "hot", n)
        reads = Workload("reads", "read", "uniform", n)
        return Plan(
            quick=True,
            passes=(Pass("processor at once", 0, {
                "ceiling": (uniform, reads), "naive": (uniform, hot),
                "payportal": (uniform, hot, reads),
            }),),
            step_s=1.5, drain_s=2.0, warmup_s=1.0, start_rate=10.0, factor=2.0,
            max_steps=10, retries_max=2, capacity_steps=0, capacity_p99_ms=2_000.0,
            max_rate=40_000.0, p99_ms=p99_ms, idle_s=5.0,
            settle_s=3.0,
            half_peak=frozenset({"payportal"}),
            shard_args=("--payments", "2000", "--rounds", "2", "--accounts", "100",
                        "--warmup-payments", "200", "--batched-only"),
            loadgen_procs=loadgen_procs, connections_max=512,
            notes=(
                "QUICK run: one pass (processor answering at once), 1,000 accounts, "
                "1.5 s steps ×2 apart; no Zipf workload (100,000 accounts take minutes to seed), "
                "no hot workload on the ceiling (it ignores the account), no reads on the "
                "naive server, no 300 ms pass, no capacity steps past the latency limit; the "
                "shard benchmark runs 2 short rounds. "
                "Run `make bench` for the full picture.",
            ),
        )
    n, wide = 10_000, 100_000
    uniform = Workload("uniform", "pay", "uniform", n)
    zipf = Workload("zipf", "pay", "zipf", wide)
    hot = Workload("hot", "pay", "hot", n)
    reads = Workload("reads", "read", "uniform", n)
    payments = (uniform, zipf, hot)
    return Plan(
        quick=False,
        passes=(
            Pass("processor at once", 0, {s: (*payments, reads) for s in SERVERS}),
            # The ceiling calls no processor: its figures cannot change, so it sits this
            # pass out. Reads do not reach the processor either. Zipf would only add the
            # minutes 100,000 accounts take to seed: the latency shows in the others.
            Pass("processor 300 ms", 300, {"naive": (uniform, hot), "payportal": (uniform, hot)}),
        ),
        step_s=5.0, drain_s=10.0, warmup_s=3.0, start_rate=10.0, factor=1.5,
        max_steps=18, retries_max=4, capacity_steps=6, capacity_p99_ms=2_000.0,
        max_rate=60_000.0, p99_ms=p99_ms, idle_s=30.0,
        settle_s=30.0,
        half_peak=frozenset(SERVERS), shard_args=("--batched-only",),
        loadgen_procs=loadgen_procs, connections_max=512,
        notes=("the ceiling calls no processor, so it runs in the first pass only; reads "
               "do not reach the processor, and Zipf would only add minutes of seeding, so "
               "both run in the first pass only.",),
    )  # fmt: skip


# -- the load generator processes ---------------------------------------------------------


class LoadGenerators:
    """``python -m benchmarks.loadgen`` children, each given an equal share of the rate."""

    def __init__(self, count: int, log: Path) -> None:
        self.count = count
        self.log = log
        self.processes: list[asyncio.subprocess.Process] = []
        self._encode = msgspec.json.Encoder().encode
        self._decode_samples = msgspec.json.Decoder(StepSamples).decode

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def start(self) -> None:
        with self.log.open("ab") as err:
            for _ in range(self.count):
                self.processes.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "benchmarks.loadgen", cwd=REPO,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                    limit=2**27,
                ))  # fmt: skip

    async def _ask(self, process: asyncio.subprocess.Process, command: dict[str, Any]) -> bytes:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(self._encode(command) + b"\n")
        await process.stdin.drain()
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited; see {self.log}")
        return line

    async def configure(self, spec: LoadSpec) -> None:
        await asyncio.gather(*(
            self._ask(p, {"op": "configure", "spec": msgspec.structs.replace(
                spec, key_prefix=f"{spec.key_prefix}-{i}", seed=spec.seed * 101 + i)})
            for i, p in enumerate(self.processes)
        ))  # fmt: skip

    async def step(self, index: int, rate: float, duration_s: float, drain_s: float) -> StepResult:
        start_at = time.time() + 0.1
        share = rate / self.count
        answers = await asyncio.gather(*(
            self._ask(p, {"op": "step", "step": StepSpec(
                index=index, rate=share, duration_s=duration_s, drain_s=drain_s,
                start_at=start_at)})
            for p in self.processes
        ))  # fmt: skip
        return merge_samples(self._decode_samples(a) for a in answers)

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.write(b'{"op":"quit"}\n')
                    await process.stdin.drain()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


# -- one server under test ------------------------------------------------------------------


@dataclasses.dataclass
class Running:
    server: str
    port: int
    api_key: str
    workdir: Path
    server_process: Managed
    sandbox: Managed
    database: str | None
    seed: dict[str, Any]

    @property
    def roles(self) -> dict[int, str]:
        return {self.server_process.pid: _cpu.FRONT_DOOR, self.sandbox.pid: _cpu.PROCESSOR}


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:  # loopback only
        result: dict[str, Any] = json.load(answer)
        return result


async def _tokens(sandbox_url: str, count: int) -> list[str]:
    year = dt.date.today().year + 4
    card = {"type": "card", "number": TEST_CARD, "exp_month": 12, "exp_year": year, "cvc": "123"}
    return [
        (await asyncio.to_thread(_post_json, f"{sandbox_url}/v1/tokens", card))["token"]
        for _ in range(count)
    ]


def _run(argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout_s: float) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")  # fmt: skip
    return done.stdout


@contextlib.asynccontextmanager
async def serving(
    server: str, latency_ms: int, accounts: int, plan: Plan, secret_key: str, say: Any
) -> AsyncIterator[Running]:
    """Start the processor and ``server``, seed it, yield; stop and clean up after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"payportal-bench-{server}-"))
    port, sandbox_port = free_port(), free_port()
    started: list[Managed] = []
    database = None
    pg_server = server_url()
    ok = False
    try:
        if server != "ceiling":
            url, database = await create_postgres_database(pg_server, prefix="bench")
        base_env = clean_environment({"PAYPORTAL_SECRET_KEY": secret_key})
        faults = json.dumps({"latency_ms": latency_ms} if latency_ms else {})
        (workdir / "sandbox").mkdir()
        sandbox = Managed(
            "sandbox",
            [sys.executable, "-m", "payportal", "sandbox", "--host", "127.0.0.1", "--port",
             str(sandbox_port), "--callback-url",
             f"http://127.0.0.1:{port}/v1/processors/sandbox/callbacks", "--faults", faults],
            cwd=workdir / "sandbox", env=base_env, log=workdir / "sandbox.log",
        ).start()  # fmt: skip
        started.append(sandbox)
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        await wait_http(f"{sandbox_url}/healthz", sandbox, 60)
        tokens = await _tokens(sandbox_url, TOKENS)
        seed: dict[str, Any] = {}
        seed_started = time.perf_counter()
        if server == "ceiling":
            api_key = "sk_ceiling"
            process = Managed("ceiling", [sys.executable, "-m", "benchmarks.ceiling", "--port",
                                          str(port)], cwd=REPO, env=base_env,
                              log=workdir / "server.log").start()  # fmt: skip
            started.append(process)
            await wait_http(f"http://127.0.0.1:{port}/healthz", process, 60)
        elif server == "naive":
            from .naive.seed import seed as seed_naive

            assert database is not None
            api_key = "sk_naive_" + secrets.token_urlsafe(24)
            dsn = asyncpg_dsn(pg_server, database)
            await seed_naive(dsn, accounts, tokens, api_key, invoices_per_account=2,
                             single_invoice_from=SINGLE_INVOICE_FROM)  # fmt: skip
            seed = {"seconds": round(time.perf_counter() - seed_started, 2)}
            process = Managed(
                "naive",
                [sys.executable, "-m", "benchmarks.naive", "--port", str(port), "--database-url",
                 dsn, "--processor-url", sandbox_url],
                cwd=REPO, env=base_env, log=workdir / "server.log",
            ).start()  # fmt: skip
            started.append(process)
            await wait_http(f"http://127.0.0.1:{port}/healthz", process, 60)
        else:
            assert database is not None
            (workdir / "serve").mkdir()
            env = {
                **base_env,
                "PAYPORTAL_DATABASE_URL": url,
                "PAYPORTAL_RATE_LIMITS_SCALE": "1000000",
                "PAYPORTAL_HOST": "127.0.0.1",
                "PAYPORTAL_PORT": str(port),
                "PAYPORTAL_MAIL_CATCHER_PORT": str(free_port()),
                "PAYPORTAL_MAIL_UI_PORT": str(free_port()),
                "PAYPORTAL_SANDBOX_PORT": str(free_port()),
                "PAYPORTAL_SANDBOX_URL": sandbox_url,
                "PAYPORTAL_BILLING_INTERVAL_S": "0",
                # Every connection comes from the load generator on 127.0.0.1: the cap per
                # client address (against slow-client floods) would refuse most of them.
                "PAYPORTAL_CONNECTIONS_PER_ADDRESS": "100000",
            }
            cwd = workdir / "serve"
            payportal = [sys.executable, "-m", "payportal"]
            await asyncio.to_thread(_run, [*payportal, "migrate"], cwd=cwd, env=env,
                                    timeout_s=300)  # fmt: skip
            output = await asyncio.to_thread(_run, [*payportal, "keys", "create", "--name",
                                                    "bench"], cwd=cwd, env=env, timeout_s=120)
            api_key = output.strip().splitlines()[-1]
            serve = [*payportal, "serve", "--workers", str(plan.serve_workers)]
            process = Managed("payportal serve", serve, cwd=cwd, env=env,
                              log=workdir / "server.log", stop_signal=signal.SIGINT).start()
            started.append(process)
            await wait_http(f"http://127.0.0.1:{port}/healthz", process, SERVE_START_S)
            say(f"  payportal serve up; seeding {accounts:,} accounts through its shards")
            output = await asyncio.to_thread(
                _run,
                [sys.executable, "-m", "benchmarks.seed_payportal", "--accounts",
                 str(accounts), "--tokens", ",".join(tokens), "--single-invoice-from",
                 str(SINGLE_INVOICE_FROM)],
                cwd=cwd, env={**env, "PYTHONPATH": str(REPO)}, timeout_s=SEED_S_MAX,
            )  # fmt: skip
            seed = json.loads(output.strip().splitlines()[-1])
        yield Running(server=server, port=port, api_key=api_key, workdir=workdir,
                      server_process=process, sandbox=sandbox, database=database,
                      seed=seed)  # fmt: skip
        ok = True
    finally:
        for process in reversed(started):
            await asyncio.to_thread(process.stop)
        if database is not None:
            await drop_postgres_database(pg_server, database)
        if ok and not plan.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"  {server}'s logs are kept in {workdir}")


# -- a ramp ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Ramp:
    server: str
    workload: Workload
    pass_name: str
    steps: list[StepResult]
    half_peak: StepResult | None = None
    # The reason of the first step past the limits, and what ended the ramp (the same,
    # or the capacity steps' end).
    first_stop: str | None = None
    ended_by: str = ""

    @property
    def peak(self) -> StepResult | None:
        """The step with the highest achieved rate within the limits."""
        passed = [s for s in self.steps if s.stop is None]
        return max(passed, key=lambda s: s.achieved_rate, default=None)

    @property
    def best(self) -> StepResult | None:
        """The step with the highest achieved rate, within the limits or not."""
        return max(self.steps, key=lambda s: s.achieved_rate, default=None)

    @property
    def reference(self) -> StepResult | None:
        """The peak; failing that (no step kept within the limits), the best step."""
        return self.peak or self.best


class Runner:
    def __init__(self, plan: Plan, generators: LoadGenerators, progress: tqdm) -> None:
        self.plan = plan
        self.generators = generators
        self.progress = progress
        self._step_index = 0
        self._tag = secrets.token_hex(4)

    def say(self, line: str) -> None:
        self.progress.write(line)

    async def _configure(self, running: Running, workload: Workload) -> None:
        self._step_index += 1
        await self.generators.configure(LoadSpec(
            port=running.port, kind=workload.kind, api_key=running.api_key,
            accounts=workload.accounts, distribution=workload.distribution,
            account_prefix=_ids.ACCOUNT_PREFIX, method_prefix=_ids.METHOD_PREFIX,
            id_width=_ids.WIDTH, connections_max=self.plan.connections_max,
            key_prefix=f"{self._tag}{self._step_index}", seed=self._step_index,
        ))  # fmt: skip

    async def _step(self, running: Running, rate: float, duration_s: float) -> StepResult:
        self._step_index += 1
        meter = _cpu.CpuMeter(
            roles={**running.roles, **dict.fromkeys(self.generators.pids, _cpu.LOADGEN)},
            roots=[running.server_process.pid, running.sandbox.pid, *self.generators.pids],
            databases=[running.database] if running.database else [],
        )
        meter.start()
        step = await self.generators.step(self._step_index, rate, duration_s, self.plan.drain_s)
        step.cpu_by_group_s = {g: round(v, 4) for g, v in meter.stop().items() if v > 0}
        return step

    async def settle(self, running: Running) -> float:
        """Wait (up to ``plan.settle_s``) until the server under test and its processor are
        quiet: a step the server could not keep up with leaves it working through what
        the load generator gave up on, and the next step must not pay for that."""
        started = time.perf_counter()
        while time.perf_counter() - started < self.plan.settle_s:
            meter = _cpu.CpuMeter(roles=running.roles,
                                  roots=[running.server_process.pid, running.sandbox.pid])
            meter.start()
            await asyncio.sleep(SETTLE_WINDOW_S)
            spent = meter.stop()
            busy = sum(v for g, v in spent.items() if g not in (_cpu.OTHER, _cpu.POSTGRES))
            if busy / SETTLE_WINDOW_S < SETTLED_CORES:
                break
        return time.perf_counter() - started

    async def ramp(self, running: Running, workload: Workload, pass_: Pass, *,
                   warm_up: bool) -> Ramp:  # fmt: skip
        plan = self.plan
        await self.settle(running)
        # The processor's own latency is in every payment's: the limits sit above it.
        floor_ms = pass_.latency_ms if workload.kind == "pay" else 0
        limits = Limits(p99_ms=plan.p99_ms + floor_ms, easy_p99_ms=plan.p99_ms / 4 + floor_ms)
        await self._configure(running, workload)
        if warm_up:
            await self._step(running, plan.start_rate, plan.warmup_s)
        ramp = Ramp(server=running.server, workload=workload, pass_name=pass_.name, steps=[])
        policy = RampPolicy(
            limits=limits,
            # Past the latency limit, a few more steps measure how much the server carries
            # at any latency (p99 up to capacity_p99_ms): its capacity, which the limit
            # may hide.
            beyond=Limits(p99_ms=plan.capacity_p99_ms + floor_ms, easy_p99_ms=0.0),
            factor=plan.factor, max_steps=plan.max_steps, max_rate=plan.max_rate,
            retries_max=plan.retries_max, capacity_steps=plan.capacity_steps,
        )  # fmt: skip
        rate = plan.start_rate
        what = f"{running.server:9s} {workload.name:7s}"
        while True:
            self.progress.set_postfix_str(f"{what} offering {rate:,.0f}/s", refresh=True)
            step = await self._step(running, rate, plan.step_s)
            ramp.steps.append(step)
            capacity_step = policy.beyond_limits
            action, following = policy.after(rate, step)
            if action == AGAIN:
                note = (" (running it again)" if following == rate
                        else f" (trying {following:,.0f}/s, the rate it skipped)")  # fmt: skip
            else:
                note = " (a capacity step, past the limits)" if capacity_step else ""
            rate = following
            self.say(_report.step_line(what, step) + note)
            if action == END:
                break
            if action == AGAIN:
                await self.settle(running)
        ramp.first_stop, ramp.ended_by = policy.first_stop, policy.ended_by
        peak = ramp.reference
        if peak is not None and running.server in plan.half_peak and workload.name == "uniform":
            await self.settle(running)
            half = await self._step(running, max(1.0, peak.achieved_rate / 2), 2 * plan.step_s)
            half.stop = stop_reason(half, limits)
            ramp.half_peak = half
            self.say(_report.step_line(f"{what} (half of peak)", half))
        self.progress.update(1)
        return ramp

    async def idle(self, running: Running, seconds: float) -> dict[str, float]:
        """CPU of the running serve's process tree (and of PostgreSQL for its database)
        with no traffic, as % of one core, by group."""
        self.progress.set_postfix_str(f"idle CPU of payportal serve, {seconds:.0f} s")
        meter = _cpu.CpuMeter(roles={running.server_process.pid: _cpu.FRONT_DOOR},
                              roots=[running.server_process.pid],
                              databases=[running.database] if running.database else [])
        meter.start()
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        spent = meter.stop()
        wall = time.perf_counter() - started
        return {g: round(100 * v / wall, 2) for g, v in spent.items() if v > 0 and g != "other"}


async def _shard_benchmark(plan: Plan, say: Any) -> dict[str, Any] | None:
    argv = [sys.executable, "-m", "benchmarks.shards", "--db", "postgres", "--json",
            *plan.shard_args]  # fmt: skip
    say(f"$ python -m benchmarks.shards {' '.join(argv[3:])}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    lines = out.decode().splitlines()
    for line in lines:
        if not line.startswith("{"):
            say("  " + line)
    if process.returncode != 0:
        say(f"  the shard benchmark failed ({process.returncode}):\n{err.decode()[-2000:]}")
        return None
    figures = [line for line in lines if line.startswith("{")]
    return json.loads(figures[-1]) if figures else None


async def run(plan: Plan) -> tuple[dict[str, Any], list[Ramp]]:
    started = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    secret_key = secrets.token_urlsafe(36)  # the sandbox and serve derive webhook secrets from it
    total = sum(len(w) for p in plan.passes for w in p.workloads.values())
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "quick": plan.quick,
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                    "load_average_at_start": os.getloadavg()},
        "plan": _report.plan_json(plan), "notes": list(plan.notes), "runs": [],
    }  # fmt: skip
    log_dir = Path(tempfile.mkdtemp(prefix="payportal-bench-loadgen-"))
    generators = LoadGenerators(plan.loadgen_procs, log_dir / "loadgen.log")
    await generators.start()
    ramps: list[Ramp] = []
    # A bar is for a terminal; in a log file its redraws would be noise (the step lines
    # are printed either way).
    with tqdm(total=total + 1, unit="ramp", dynamic_ncols=True, file=sys.stderr,
              disable=not sys.stderr.isatty()) as progress:  # fmt: skip
        runner = Runner(plan, generators, progress)
        for note in plan.notes:
            runner.say(f"note: {note}")
        try:
            for pass_ in plan.passes:
                for server in plan.servers:
                    workloads = pass_.workloads.get(server, ())
                    if not workloads:
                        continue
                    runner.say(f"\n== {server}, {pass_.name} "
                               f"(at {time.perf_counter() - clock:,.0f} s) ==")
                    progress.set_postfix_str(f"starting {server}", refresh=True)
                    async with serving(server, pass_.latency_ms, pass_.accounts(server), plan,
                                       secret_key, runner.say) as running:  # fmt: skip
                        entry: dict[str, Any] = {"pass": pass_.name,
                                                 "latency_ms": pass_.latency_ms,
                                                 "server": server, "seed": running.seed}
                        if running.seed:
                            runner.say(f"  seeded: {running.seed}")
                        if server == "payportal" and pass_ is plan.passes[0]:
                            entry["idle_cpu_pct"] = await runner.idle(running, plan.idle_s)
                            runner.say(f"  idle CPU, % of one core: {entry['idle_cpu_pct']}")
                        entry["ramps"] = []
                        for i, workload in enumerate(workloads):
                            ramp = await runner.ramp(running, workload, pass_, warm_up=i == 0)
                            ramps.append(ramp)
                            entry["ramps"].append(_report.ramp_json(ramp))
                        results["runs"].append(entry)
            progress.set_postfix_str("shard benchmark", refresh=True)
            runner.say(f"\n== shard benchmark (at {time.perf_counter() - clock:,.0f} s) ==")
            results["shards"] = await _shard_benchmark(plan, runner.say)
            progress.update(1)
        finally:
            await generators.close()
            shutil.rmtree(log_dir, ignore_errors=True)
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["summary"] = _report.summarize(results, ramps, plan)
    return results, ramps


def write_results(results: dict[str, Any], ramps: list[Ramp], plan: Plan, out_dir: Path) -> None:
    stamp = results["started"].replace("-", "").replace(":", "").replace("+0000", "Z")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stamp}{'-quick' if plan.quick else ''}.json"
    png_path = json_path.with_suffix(".png")
    json_path.write_text(json.dumps(results, indent=1, default=str))
    plotted = _report.plot(ramps, plan, png_path)
    if not plan.quick:
        # The one copy that may be committed: the newest full run.
        shutil.copyfile(json_path, out_dir / "latest.json")
        if plotted:
            shutil.copyfile(png_path, out_dir / "latest.png")
    print(_report.render(results, ramps, plan))
    print(f"\nresults: {json_path}" + (f"\nplot:    {png_path}" if plotted else ""))
    print(_report.render_ratios(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short run (under 3 minutes)")
    parser.add_argument("--loadgen-procs", type=int, default=1,
                        help="load generator processes (one is plenty below ~30,000 req/s)")
    parser.add_argument("--p99-ms", type=float, default=100.0,
                        help="p99 latency that ends a ramp (plus the processor's latency)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep each server's working directory and logs")
    parser.add_argument("--serve-workers", type=int, default=1,
                        help="front-door processes for payportal serve (serve --workers)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="which servers to run, comma-separated (a partial run's ratios "
                             "are incomplete)")
    args = parser.parse_args(argv)
    servers = tuple(s for s in SERVERS if s in args.servers.split(","))
    if not servers:
        parser.error(f"--servers: name one or more of {', '.join(SERVERS)}")
    plan = make_plan(args.quick, loadgen_procs=args.loadgen_procs, p99_ms=args.p99_ms)
    plan = dataclasses.replace(plan, keep_logs=args.keep_logs, servers=servers,
                               serve_workers=max(1, args.serve_workers))
    started = time.perf_counter()
    results, ramps = asyncio.run(run(plan))
    write_results(results, ramps, plan, args.out)
    print(f"\n(wall clock {time.perf_counter() - started:,.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
