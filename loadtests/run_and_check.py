"""Run the peak-season Locust load test against a fresh ``payportal serve``, then check
what it left in the database (``make loadtest-check``).

It starts ``payportal serve`` on a scratch PostgreSQL database beside the local test
database (``PAYPORTAL_BENCH_POSTGRES_URL``), on free loopback ports, with its own sandbox
processor sending every callback twice (same webhook id), runs Locust headless for the
given time (``loadtests/locustfile.py``, including the user that replays callbacks under
new event ids), waits for the read models to catch up, stops the server, and checks:

1. every payment the portal acknowledged (answered 2xx) exists exactly once: one row in
   ``payments``, one ``payment_created`` in the journal, at most one capture, and one
   capture for those answered ``succeeded``;
2. the ledger is balanced: every entry's debits equal its credits, and so the total;
3. every account's balance, version and ledger, as the read models and ledger rows show
   them, equal a replay of its journal from the first event (``engine.evolve``), and
   the replayed state passes the engine's invariants.

Exits 0 when all hold, 1 naming each one that does not, 2 if the run itself failed.

    python loadtests/run_and_check.py --duration 60s --users 30
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._postgres import (  # noqa: E402 - the repository root is on the path now
    create_postgres_database,
    drop_postgres_database,
    server_url,
)
from benchmarks._processes import Managed, clean_environment, free_port, wait_http  # noqa: E402

SERVE_START_S = 240.0
PROJECTION_WAIT_S = 120.0
# Payments still in flight when Locust stops are answered within the charge timeout.
SETTLE_S = 5.0


def _post_json(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10):  # loopback only
        pass


def _run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Failures:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.messages.append(message)


async def _wait_for_projection(store: Any, shards: int) -> bool:
    import sqlalchemy as sa

    from payportal.persistence import tables

    j = tables.journal
    deadline = time.monotonic() + PROJECTION_WAIT_S
    while time.monotonic() < deadline:
        async with store.engine.connect() as connection:
            last = dict((await connection.execute(
                sa.select(j.c.shard_id, sa.func.max(j.c.id)).group_by(j.c.shard_id)
            )).all())  # fmt: skip
        cursors = [await store.projection_cursor(s) for s in range(shards)]
        if all(cursors[s] >= last.get(s, 0) for s in range(shards)):
            return True
        await asyncio.sleep(0.2)
    return False


async def check_invariants(url: str, acknowledged: dict[str, str]) -> Failures:
    """The three invariants over the database at ``url``; ``acknowledged`` maps each
    payment id answered 2xx to the status it was answered with."""
    import sqlalchemy as sa

    from payportal.engine import check_invariants as engine_invariants
    from payportal.engine import evolve
    from payportal.persistence import Store, tables

    failures = Failures()
    store = await Store.connect(url)
    try:
        async with store.engine.connect() as connection:
            p, j = tables.payments, tables.journal
            ids = list(acknowledged)
            rows = Counter((await connection.execute(
                sa.select(p.c.payment_id).where(p.c.payment_id.in_(ids))
            )).scalars())  # fmt: skip
            created = Counter((await connection.execute(
                sa.select(j.c.payment_id).where(j.c.event_type == "payment_created",
                                                j.c.payment_id.in_(ids))
            )).scalars())  # fmt: skip
            captured = Counter((await connection.execute(
                sa.select(j.c.payment_id).where(j.c.event_type == "attempt_succeeded",
                                                j.c.payment_id.in_(ids))
            )).scalars())  # fmt: skip
            missing = [i for i in ids if rows[i] == 0 or created[i] == 0]
            doubled = [i for i in ids if rows[i] > 1 or created[i] > 1 or captured[i] > 1]
            unsettled = [i for i, status in acknowledged.items()
                         if status == "succeeded" and captured[i] != 1]  # fmt: skip
            failures.check(not missing, f"{len(missing)} acknowledged payments are missing, "
                                        f"e.g. {missing[:3]}")  # fmt: skip
            failures.check(not doubled, f"{len(doubled)} acknowledged payments exist more than "
                                        f"once or were captured twice, e.g. {doubled[:3]}")
            failures.check(not unsettled, f"{len(unsettled)} payments answered 'succeeded' "
                                          f"have no single capture, e.g. {unsettled[:3]}")
            # Every entry (one account version) balances, hence the whole ledger does.
            le = tables.ledger_entries
            signed = sa.case((le.c.side == "debit", le.c.amount_minor), else_=-le.c.amount_minor)
            unbalanced = (await connection.execute(
                sa.select(le.c.account_id, le.c.version, sa.func.sum(signed))
                .group_by(le.c.account_id, le.c.version).having(sa.func.sum(signed) != 0)
            )).all()  # fmt: skip
            total = (await connection.execute(sa.select(sa.func.sum(signed)))).scalar() or 0
            failures.check(not unbalanced and total == 0,
                           f"the ledger is unbalanced: {len(unbalanced)} entries, total "
                           f"{total}, e.g. {unbalanced[:3]}")  # fmt: skip
            ledger: dict[str, Counter[str]] = {}
            for account_id, ledger_account, amount in (await connection.execute(
                sa.select(le.c.account_id, le.c.ledger_account, sa.func.sum(signed))
                .group_by(le.c.account_id, le.c.ledger_account)
            )).all():  # fmt: skip
                ledger.setdefault(account_id, Counter())[ledger_account] = int(amount)
            a = tables.accounts
            accounts = (await connection.execute(
                sa.select(a.c.account_id, a.c.outstanding_minor, a.c.credit_minor, a.c.version)
            )).all()  # fmt: skip
        wrong: list[str] = []
        for row in accounts:
            state = None
            for _, _, event in await store.journal(account_id=row.account_id):
                state, _ = evolve(state, event)
            if state is None:
                wrong.append(f"{row.account_id}: no journal")
                continue
            try:
                engine_invariants(state)
            except AssertionError as error:
                wrong.append(f"{row.account_id}: replayed state breaks an invariant: {error}")
            shown = (row.outstanding_minor, row.credit_minor, row.version)
            replayed = (state.outstanding_minor, state.credit_minor, state.version)
            if shown != replayed:
                wrong.append(f"{row.account_id}: (outstanding, credit, version) {shown} "
                             f"!= replay {replayed}")  # fmt: skip
            expected = {k.value: v for k, v in state.ledger.items() if v}
            got = {k: v for k, v in ledger.get(row.account_id, Counter()).items() if v}
            if expected != got:
                wrong.append(f"{row.account_id}: ledger rows {got} != replay {expected}")
        failures.check(not wrong, f"{len(wrong)} differences between accounts and their "
                                  "journals: " + "; ".join(wrong[:3]))  # fmt: skip
        print(f"checked {len(acknowledged):,} acknowledged payments, {len(accounts):,} "
              f"accounts replayed from their journals, {sum(map(len, ledger.values())):,} "
              "ledger balances")  # fmt: skip
    finally:
        await store.close()
    return failures


def _acknowledged(path: Path) -> dict[str, str]:
    answered: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            payment_id, _, status = line.partition(" ")
            if payment_id:
                answered[payment_id] = status
    return answered


async def _main(args: argparse.Namespace) -> int:
    pg_server = server_url()
    url, database = await create_postgres_database(pg_server, prefix="loadtest")
    workdir = Path(tempfile.mkdtemp(prefix="payportal-loadtest-"))
    (workdir / "serve").mkdir()
    port, sandbox_port = free_port(), free_port()
    secret_key = secrets.token_urlsafe(36)
    env = clean_environment({
        "PAYPORTAL_SECRET_KEY": secret_key, "PAYPORTAL_DATABASE_URL": url,
        "PAYPORTAL_RATE_LIMITS_SCALE": "1000000", "PAYPORTAL_HOST": "127.0.0.1",
        "PAYPORTAL_PORT": str(port), "PAYPORTAL_SANDBOX_PORT": str(sandbox_port),
        "PAYPORTAL_MAIL_CATCHER_PORT": str(free_port()),
        "PAYPORTAL_MAIL_UI_PORT": str(free_port()), "PAYPORTAL_BILLING_INTERVAL_S": "0",
    })  # fmt: skip
    serve = Managed("payportal serve", [sys.executable, "-m", "payportal", "serve"],
                    cwd=workdir / "serve", env=env, log=workdir / "serve.log",
                    stop_signal=signal.SIGINT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    ok = False
    try:
        await asyncio.to_thread(_run, [sys.executable, "-m", "payportal", "migrate"],
                                cwd=workdir / "serve", env=env)  # fmt: skip
        api_key = (await asyncio.to_thread(
            _run, [sys.executable, "-m", "payportal", "keys", "create", "--name", "loadtest"],
            cwd=workdir / "serve", env=env,
        )).strip().splitlines()[-1]  # fmt: skip
        serve.start()
        await wait_http(f"{base}/healthz", serve, SERVE_START_S)
        await wait_http(f"{sandbox}/healthz", serve, 60)
        # Every callback twice under the same webhook id, as processors do.
        await asyncio.to_thread(_post_json, f"{sandbox}/v1/_faults", {"duplicate_callbacks": 2})
        print(f"payportal serve on {base} (database {database}); Locust for {args.duration}, "
              f"{args.users} users", flush=True)  # fmt: skip

        from payportal.config import load_settings
        from payportal.server import sandbox_webhook_secret

        settings = load_settings(env, cwd=workdir / "serve")
        ack_file = workdir / "acknowledged.txt"
        locust_env = {
            **os.environ, "PYTHONPATH": str(REPO),
            "PAYPORTAL_LOADTEST_API_KEY": api_key, "PAYPORTAL_LOADTEST_SANDBOX": sandbox,
            "PAYPORTAL_LOADTEST_ACK_FILE": str(ack_file),
            "PAYPORTAL_LOADTEST_WEBHOOK_SECRET": sandbox_webhook_secret(settings),
        }  # fmt: skip
        locust = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"),
            "--headless", "--host", base, "--users", str(args.users),
            "--spawn-rate", str(args.spawn_rate), "--run-time", args.duration, "--only-summary",
            cwd=REPO, env=locust_env,
        )  # fmt: skip
        locust_code = await locust.wait()
        if locust_code not in (0, 1):  # 1: some requests failed, which the checks judge
            print(f"Locust itself failed (exit {locust_code})", file=sys.stderr)
            return 2
        await asyncio.sleep(SETTLE_S)
        from payportal.persistence import Store

        store = await Store.connect(url)
        try:
            caught_up = await _wait_for_projection(store, settings.shards)
        finally:
            await store.close()
        if not caught_up:
            print(f"the read models did not catch up in {PROJECTION_WAIT_S:.0f} s; checking "
                  "anyway", file=sys.stderr)  # fmt: skip
        await asyncio.to_thread(serve.stop)
        acknowledged = _acknowledged(ack_file)
        failures = await check_invariants(url, acknowledged)
        statuses = Counter(acknowledged.values())
        print(f"acknowledged payments by status: {dict(statuses)}; Locust exit {locust_code}"
              + (" (some requests failed; see its summary)" if locust_code else ""))
        if not acknowledged:
            failures.check(False, "no payment was acknowledged: the load test did not pay")
        if failures.messages:
            print("INVARIANTS BROKEN:", file=sys.stderr)
            for message in failures.messages:
                print(f"  - {message}", file=sys.stderr)
            return 1
        print("all invariants hold: every acknowledged payment exists exactly once, the "
              "ledger balances, every balance equals its journal's replay")  # fmt: skip
        ok = True
        return 0
    finally:
        await asyncio.to_thread(serve.stop)
        await drop_postgres_database(pg_server, database)
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="1m", help="Locust --run-time, e.g. 90s, 2m")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--spawn-rate", type=float, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the logs even when all hold")
    args = parser.parse_args()
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
