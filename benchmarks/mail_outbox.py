"""Mail benchmarks: what payment emails cost where they are written, and how fast, and
at what CPU, they are delivered.

Projection (``--part projection``). A succeeded payment gets one outbox row
(payportal/mail). Written inside the journal's group commit, such a row made each
capture's commit measurably slower (20-40 % at 64-256 captures per commit, on both
databases, in an earlier version of the store), so the rows ride with the projection
instead: coalesced, off the reply path, in the transaction that projects their event.
This times that projection write for batches of captures (one ``AttemptSucceeded`` per
account) with and without the outbox rows, alternating the two arms round by round so
drift in a shared machine's load hits both alike, and prints the median time per arm.
The group commit itself carries no outbox row.

Delivery (``--part delivery``). ``payportal mail`` and ``payportal mail-catcher`` run
as processes of their own, as ``serve`` starts them, and sit idle; then ``--emails``
payment confirmations (accounts with a contact address, a payer and a saved card) are
committed to the outbox in one transaction, as a projection writes them. It measures the
time until the last row is marked sent (the catcher accepted each one before), the wait
for the first, the CPU seconds each of the two processes spent per email (psutil), and
the SMTP connections the catcher saw.

Idle (``--part idle``): the CPU the sender process spends over ``--idle-s`` seconds with
nothing to send.

``--baseline REV`` runs delivery and idle with the sender and catcher of git revision REV
as well (loaded from git; each in a process of its own too, so their CPU can be told
apart), alternating the arms round by round; compare the two as ratios, since wall-clock
rates on a shared machine move with its load.

    python -m benchmarks.mail_outbox --db sqlite
    python -m benchmarks.mail_outbox --db postgres --part delivery --baseline REV --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psutil
import sqlalchemy as sa

from payportal.engine import (
    AccountState,
    CreatePayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    RecordOutcome,
    execute,
)
from payportal.mail.payments import PaymentNotice
from payportal.persistence import AccountChange, Store, tables
from payportal.persistence._engine import create_engine_for
from payportal.persistence.directory import email_index
from payportal.persistence.sealing import open_keyring
from payportal.persistence.tables_payers import (
    account_profiles,
    payer_accounts,
    payers,
    payment_methods,
)

from .shards import _database

CARD = PaymentMethodRef(id="pm_bench", brand="visa")


def _copy(state: AccountState) -> AccountState:
    # The engine evolves a state in place: the opening change keeps its own.
    return msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=AccountState)


def _run(
    state: AccountState | None, command: Any, rng: random.Random
) -> tuple[Any, list[Any], list[Any]]:
    state, decision, entries = execute(state, command, 1_700_000_000_000, rng)
    return state, list(decision.events), entries


def _accounts(
    tag: str, size: int, rng: random.Random
) -> tuple[list[AccountChange], list[AccountChange]]:
    """(the opening changes: account, invoice, payment created; the captures)."""
    opening, captures = [], []
    for n in range(size):
        account_id = f"{tag}_{n}"
        events: list[Any] = []
        entries: list[Any] = []
        state = None
        for command in (
            OpenAccount(account_id=account_id, currency="USD"),
            IssueInvoice(account_id=account_id, invoice_id=f"inv_{account_id}", number="1",
                         amount_minor=10_000, currency="USD", due_date=dt.date(2026, 12, 31)),
            CreatePayment(account_id=account_id, payment_id=f"pay_{account_id}",
                          attempt_id=f"att_{account_id}", idempotency_key="k",
                          amount_minor=100, currency="USD", payment_method=CARD),
        ):  # fmt: skip
            state, new_events, posted = _run(state, command, rng)
            events += new_events
            entries += posted
        assert state is not None
        opening.append(AccountChange(account_id=account_id, version_before=0, events=events,
                                     entries=entries, state=_copy(state)))  # fmt: skip
        version = state.version
        state, events, entries = _run(
            state,
            RecordOutcome(account_id=account_id, payment_id=f"pay_{account_id}",
                          attempt_id=f"att_{account_id}", outcome=OutcomeKind.succeeded,
                          charge_id=f"ch_{account_id}"),
            rng,
        )  # fmt: skip
        captures.append(AccountChange(account_id=account_id, version_before=version,
                                      events=events, entries=entries, state=state))  # fmt: skip
    return opening, captures


async def _projection(url: str, rounds: int, sizes: str, rng: random.Random) -> None:
    store = await Store.connect(url)
    try:
        print(f"projection: rounds={rounds} (median ms to project a batch of captures; one "
              "outbox row per capture in the 'with' arm)")  # fmt: skip
        for size in (int(s) for s in sizes.split(",")):
            times: dict[str, list[float]] = {"without": [], "with": []}
            for r in range(rounds):
                arms = ["without", "with"] if r % 2 == 0 else ["with", "without"]
                for arm in arms:
                    opening, captures = _accounts(f"b{size}_{r}_{arm}", size, rng)
                    await store.commit(0, opening)
                    await store.project_pending(0)
                    rows = store.prepare(0, captures)
                    assert len(rows.projection.outbox) == size
                    if arm == "without":
                        rows.projection.outbox = []
                    await store.write(rows)
                    started = time.perf_counter()
                    await store.project_pending(0)
                    times[arm].append((time.perf_counter() - started) * 1000)
            without = statistics.median(times["without"])
            with_rows = statistics.median(times["with"])
            print(f"  batch {size:4d}: without {without:7.2f} ms, with {with_rows:7.2f} ms "
                  f"({(with_rows / without - 1) * 100:+.0f} %)")  # fmt: skip
    finally:
        await store.close()


# -- delivery ---------------------------------------------------------------------------

REPOSITORY = Path(__file__).resolve().parents[1]
ACCOUNTS = 200
PUBLIC_URL = "https://portal.example.test"
# A child process is idle once it spends less than this much CPU in SETTLE_S.
SETTLE_S = 0.5
SETTLE_CPU_S = 0.02
START_S_MAX = 120.0
DELIVERY_S_MAX = 600.0
POLL_S = 0.02


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _settled(process: subprocess.Popen[bytes]) -> None:
    """Until the child's start-up work (imports, first round) is over."""
    watched = psutil.Process(process.pid)
    deadline = time.monotonic() + START_S_MAX
    before = _cpu_s(watched)
    while True:
        assert process.poll() is None, f"child {process.args} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"child {process.args} did not settle"
        await asyncio.sleep(SETTLE_S)
        now = _cpu_s(watched)
        if now - before < SETTLE_CPU_S:
            return
        before = now


def _load_at(rev: str, path: str, name: str) -> Any:
    """Module ``name`` (in package ``payportal.mail``) from ``path`` as of git ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPOSITORY, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader(f"payportal.mail.{name}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "payportal.mail"
    sys.modules[spec.name] = module
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


async def _baseline_child(args: argparse.Namespace) -> None:
    """``--child sender|catcher --rev REV``: that revision's code, on uvloop, until SIGTERM."""
    from payportal.gc_tuning import tune_for_throughput

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if args.child == "catcher":
        old = _load_at(args.rev, "payportal/mail/catcher.py", "_baseline_catcher")
        catcher = await old.start_catcher(smtp_port=args.smtp_port, ui_port=args.ui_port)
        tune_for_throughput()
        await stop.wait()
        await catcher.close()
        return
    old = _load_at(args.rev, "payportal/mail/sender.py", "_baseline_sender")
    engine = create_engine_for(args.url)
    sender = old.OutboxSender(engine, smtp=old.SmtpTarget(hostname="127.0.0.1",
                              port=args.smtp_port), base_url=PUBLIC_URL)  # fmt: skip
    running = asyncio.create_task(sender.run())
    tune_for_throughput()
    await stop.wait()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await engine.dispose()


def _start(arm: str, role: str, url: str, smtp_port: int, ui_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PAYPORTAL_DATABASE_URL": url,
           "PAYPORTAL_MAIL_CATCHER_PORT": str(smtp_port), "PAYPORTAL_MAIL_UI_PORT": str(ui_port)}
    env.pop("PAYPORTAL_SMTP_URL", None)
    if arm == "current":
        command = (["mail-catcher"] if role == "catcher"
                   else ["mail", "--public-url", PUBLIC_URL])  # fmt: skip
        argv = [sys.executable, "-m", "payportal", *command]
    else:
        argv = [sys.executable, "-m", "benchmarks.mail_outbox", "--child", role, "--rev", arm,
                "--url", url, "--smtp-port", str(smtp_port), "--ui-port", str(ui_port)]
    return subprocess.Popen(argv, cwd=REPOSITORY, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


async def _seed_accounts(url: str) -> None:
    engine = create_engine_for(url)
    keyring = await open_keyring(engine)
    assert keyring is not None, "PAYPORTAL_DATA_KEYS: the benchmark's databases are sealed too"
    try:
        async with engine.begin() as connection:
            for n in range(ACCOUNTS):
                account_id = f"acct_mail_{n:04d}"
                await connection.execute(sa.insert(account_profiles).values(
                    account_id=account_id, name=f"Customer {n}",
                    email=f"billing{n}@example.com", currency="USD"))  # fmt: skip
                email = f"payer{n}@example.com"
                await connection.execute(sa.insert(payers).values(
                    id=f"payer_{n}", email=email, email_index=email_index(engine, email)))
                await connection.execute(
                    sa.insert(payer_accounts).values(payer_id=f"payer_{n}", account_id=account_id)
                )
                await connection.execute(sa.insert(payment_methods).values(
                    id=f"pm_{n}", account_id=account_id, token=f"tok_{n}", type="card",
                    brand="visa", last4="4242", exp_month=12, exp_year=2030))  # fmt: skip
    finally:
        await engine.dispose()


def _rows(tag: str, emails: int) -> list[dict[str, Any]]:
    rows = []
    for n in range(emails):
        account = n % ACCOUNTS
        notice = PaymentNotice(
            account_id=f"acct_mail_{account:04d}", payment_id=f"pay_{tag}_{n}", version=3,
            at_ms=1_767_225_600_000, amount_minor=12_000 + n, currency="USD",
            method_id=f"pm_{account}", method_brand="visa", outstanding_minor=3_000,
            allocations=[(f"inv_{tag}_{n}_1", "INV-0001", 10_000),
                         (f"inv_{tag}_{n}_2", "INV-0002", 2_000 + n)],
        )  # fmt: skip
        rows.append({"kind": "payment_succeeded", "dedupe_key": f"payment_succeeded:{tag}:{n}",
                     "payload": msgspec.msgpack.encode(notice), "due_at_ms": 0})  # fmt: skip
    return rows


def _inbox(ui_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/messages", timeout=60) as r:
        return dict(json.loads(r.read()))


@dataclass
class _Run:
    seconds: float
    first_s: float
    sender_cpu_s: float
    catcher_cpu_s: float
    deliveries: int
    connections: int | None


async def _deliver_once(url: str, arm: str, tag: str, emails: int) -> _Run:
    smtp_port, ui_port = _free_port(), _free_port()
    catcher = _start(arm, "catcher", url, smtp_port, ui_port)
    sender = None
    engine = create_engine_for(url)
    try:
        deadline = time.monotonic() + START_S_MAX
        while not _accepts(smtp_port):
            assert catcher.poll() is None, f"{arm} catcher exited"
            assert time.monotonic() < deadline, f"{arm} catcher did not listen"
            await asyncio.sleep(0.1)
        sender = _start(arm, "sender", url, smtp_port, ui_port)
        await _settled(catcher)
        await _settled(sender)
        watched = {"sender": psutil.Process(sender.pid), "catcher": psutil.Process(catcher.pid)}
        rows = _rows(tag, emails)
        o = tables.outbox.c
        # Every earlier round's rows are sent: what is pending is this round's.
        pending = (sa.select(sa.func.count()).select_from(tables.outbox)
                   .where(o.sent_at.is_(None), o.failed_at.is_(None)))  # fmt: skip
        # The readiness probe above was a connection too: count only the sender's.
        connections_before = (await asyncio.to_thread(_inbox, ui_port)).get("connections")
        cpu_before = {name: _cpu_s(p) for name, p in watched.items()}
        async with engine.begin() as connection:
            await connection.execute(sa.insert(tables.outbox), rows)
            if engine.dialect.name == "postgresql":
                # As the projection's insert does: the idle sender LISTENs.
                await connection.execute(sa.select(sa.func.pg_notify(tables.OUTBOX_CHANNEL, "")))
        started = time.perf_counter()
        first = None
        while True:
            async with engine.connect() as connection:
                left = (await connection.execute(pending)).scalar_one()
            now = time.perf_counter()
            if first is None and left < emails:
                first = now - started
            if left == 0:
                break
            assert now - started < DELIVERY_S_MAX, f"{arm}: {left} emails not sent"
            await asyncio.sleep(POLL_S)
        seconds = time.perf_counter() - started
        cpu = {name: _cpu_s(p) - cpu_before[name] for name, p in watched.items()}
        inbox = await asyncio.to_thread(_inbox, ui_port)
        return _Run(seconds=seconds, first_s=first or seconds, sender_cpu_s=cpu["sender"],
                    catcher_cpu_s=cpu["catcher"], deliveries=inbox["deliveries"],
                    connections=None if connections_before is None
                    else inbox["connections"] - connections_before)  # fmt: skip
    finally:
        for child in (sender, catcher):
            if child is not None:
                child.terminate()
        for child in (sender, catcher):
            if child is not None:
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        await engine.dispose()


async def _delivery(url: str, db: str, rounds: int, emails: int, baseline: str | None) -> None:
    await _seed_accounts(url)
    arms = ["current"] if baseline is None else [baseline, "current"]
    runs: dict[str, list[_Run]] = {arm: [] for arm in arms}
    print(f"delivery: database={db} emails={emails} rounds={rounds} (median of the rounds; "
          "outbox rows committed at once, sender and catcher idle before)")  # fmt: skip
    for r in range(rounds):
        for arm in arms if r % 2 == 0 else list(reversed(arms)):
            run = await _deliver_once(url, arm, f"r{r}{arm[:8]}", emails)
            assert run.deliveries >= emails, (arm, run)
            runs[arm].append(run)

    def median(arm: str, field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs[arm])

    for arm in arms:
        label = "this tree" if arm == "current" else f"baseline {arm}"
        seconds, first = median(arm, "seconds"), median(arm, "first_s")
        connections = [run.connections for run in runs[arm]]
        print(f"  {label:22s} {emails / seconds:7.0f} emails/s end to end "
              f"({emails / max(seconds - first, 1e-9):7.0f}/s after the first were marked sent, "
              f"at {first * 1000:5.0f} ms); CPU per email: sender "
              f"{median(arm, 'sender_cpu_s') / emails * 1e6:6.0f} µs, catcher "
              f"{median(arm, 'catcher_cpu_s') / emails * 1e6:6.0f} µs"
              + (f"; SMTP connections {connections}" if connections[0] is not None else ""))
    if baseline is not None:
        ratio = {field: median("current", field) / median(baseline, field)
                 for field in ("seconds", "sender_cpu_s", "catcher_cpu_s")}  # fmt: skip
        print(f"  this tree / baseline: time {ratio['seconds']:.2f}x (rate "
              f"{1 / ratio['seconds']:.1f}x), sender CPU {ratio['sender_cpu_s']:.2f}x, "
              f"catcher CPU {ratio['catcher_cpu_s']:.2f}x")  # fmt: skip


async def _idle(url: str, db: str, seconds: float, baseline: str | None) -> None:
    """CPU the sender process spends with nothing to send (and a connected catcher)."""
    print(f"idle: database={db}, CPU of the sender process over {seconds:.0f} s with an "
          "empty outbox")  # fmt: skip
    for arm in ["current"] if baseline is None else [baseline, "current"]:
        smtp_port, ui_port = _free_port(), _free_port()
        catcher = _start(arm, "catcher", url, smtp_port, ui_port)
        sender = None
        try:
            while not _accepts(smtp_port):
                assert catcher.poll() is None, f"{arm} catcher exited"
                await asyncio.sleep(0.1)
            sender = _start(arm, "sender", url, smtp_port, ui_port)
            await _settled(sender)
            watched = psutil.Process(sender.pid)
            before = _cpu_s(watched)
            await asyncio.sleep(seconds)
            spent = _cpu_s(watched) - before
        finally:
            for child in (sender, catcher):
                if child is not None:
                    child.terminate()
                    child.wait(timeout=30)
        label = "this tree" if arm == "current" else f"baseline {arm}"
        print(f"  {label:22s} {spent * 1000:7.1f} ms of CPU in {seconds:.0f} s "
              f"({spent / seconds * 100:.3f} % of a core)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--part", choices=["projection", "delivery", "idle", "all"],
                        default="all")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None,
                        help="projection: 20; delivery: 3")  # fmt: skip
    parser.add_argument("--sizes", default="1,16,64,256", help="projection batch sizes")
    parser.add_argument("--emails", type=int, default=2_000, help="delivery: emails a round")
    parser.add_argument("--baseline", metavar="REV",
                        help="delivery and idle: compare with git REV")  # fmt: skip
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle: seconds measured")
    # A process of the baseline arm (started by this benchmark itself).
    parser.add_argument("--child", choices=["sender", "catcher"], help=argparse.SUPPRESS)
    parser.add_argument("--rev", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ui-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        await _baseline_child(args)
        return
    url, drop = await _database(args.db)
    rng = random.Random(5)
    try:
        if args.part in ("projection", "all"):
            await _projection(url, args.rounds or 20, args.sizes, rng)
        if args.part in ("delivery", "all"):
            await _delivery(url, args.db, args.rounds or 3, args.emails, args.baseline)
        if args.part in ("idle", "all"):
            await _idle(url, args.db, args.idle_s, args.baseline)
    finally:
        if drop is not None:
            await drop()


if __name__ == "__main__":
    with contextlib.suppress(ImportError):  # both arms' processes run on uvloop, as serve
        import uvloop

        uvloop.install()
    asyncio.run(main())
