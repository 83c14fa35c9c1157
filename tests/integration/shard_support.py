"""Helpers for the actor tests: seeded accounts, and an independent check of what the journal
says against what the read models and shards say. (Fresh databases: ``tests.databases``.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from payportal.engine import (
    AccountState,
    AttemptSucceeded,
    IssueInvoice,
    OpenAccount,
    PaymentCreated,
    Result,
    check_invariants,
    evolve,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


async def run_python(*args: str, timeout_s: float = 300) -> dict[str, Any]:
    """Run ``python ARGS`` from the repository (another process, as a second front door or
    a CLI command is) and return the JSON object its last line of output printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args,
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout_s)
    assert process.returncode == 0, stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def seed_accounts(
    router: Any, accounts: int, invoices_per_account: int, amount_minor: int
) -> list[str]:
    account_ids = [f"acct_{i:05d}" for i in range(accounts)]
    replies = await router.submit_many(
        [OpenAccount(account_id=a, currency="USD") for a in account_ids]
    )
    assert all(r.outcome.result is not Result.rejected for r in replies)
    commands = [
        IssueInvoice(
            account_id=a,
            invoice_id=f"inv_{a}_{n}",
            number=f"{n:04d}",
            amount_minor=amount_minor,
            currency="USD",
            due_date=dt.date(2026, 1, 1) + dt.timedelta(days=n),
        )
        for a in account_ids
        for n in range(invoices_per_account)
    ]
    replies = await router.submit_many(commands)
    assert all(r.outcome.result is not Result.rejected for r in replies)
    return account_ids


class JournalAudit(msgspec.Struct, kw_only=True):
    accounts: int
    events: int
    payments_created: int
    captures: int
    double_applied: int
    version_gaps: int


async def audit_journal(
    store: Any, account_ids: list[str]
) -> tuple[JournalAudit, dict[str, AccountState]]:
    """Rebuild every account from its whole journal (no checkpoint) and count anomalies.

    Independent of the shards: it reads only the durable journal and replays it."""
    events_total = created = captures = double_applied = gaps = 0
    rebuilt: dict[str, AccountState] = {}
    journals = await asyncio.gather(*(store.journal(account_id=a) for a in account_ids))
    for account_id, journal in zip(account_ids, journals, strict=True):
        versions = [version for _, version, _ in journal]
        if versions != list(range(1, len(versions) + 1)):
            gaps += 1
        captured = Counter(
            event.payment_id for _, _, event in journal if isinstance(event, AttemptSucceeded)
        )
        double_applied += sum(1 for n in captured.values() if n > 1)
        captures += len(captured)
        created += sum(isinstance(event, PaymentCreated) for _, _, event in journal)
        events_total += len(journal)
        state: AccountState | None = None
        for _, _, event in journal:
            state, _ = evolve(state, event)
        assert state is not None, account_id
        check_invariants(state)
        rebuilt[account_id] = state
    audit = JournalAudit(
        accounts=len(account_ids),
        events=events_total,
        payments_created=created,
        captures=captures,
        double_applied=double_applied,
        version_gaps=gaps,
    )
    return audit, rebuilt


async def pay_and_capture(
    router: Any,
    account_id: str,
    payment_id: str,
    amount_minor: int,
    *,
    patience_s: float = 120.0,
) -> Any:
    """Create a payment and record its capture, re-sending either on failure as a client
    would (same ids, so the engine answers a repeat with ``exists``)."""
    import time

    from ray.exceptions import RayError

    from payportal.actors import Overloaded
    from payportal.engine import CreatePayment, OutcomeKind, PaymentMethodRef, RecordOutcome

    deadline = time.monotonic() + patience_s
    commands = (
        CreatePayment(
            account_id=account_id, payment_id=payment_id, attempt_id=f"att_{payment_id}",
            idempotency_key=f"key_{payment_id}", amount_minor=amount_minor, currency="USD",
            payment_method=PaymentMethodRef(id="pm_card", brand="visa"),
        ),
        RecordOutcome(
            account_id=account_id, payment_id=payment_id, attempt_id=f"att_{payment_id}",
            outcome=OutcomeKind.succeeded, charge_id=f"ch_{payment_id}",
        ),
    )  # fmt: skip
    reply = None
    for command in commands:
        while True:
            try:
                reply = await router.submit(command)
                break
            except (RayError, Overloaded):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert reply.outcome.result in (Result.ok, Result.exists), reply.outcome
    return reply
