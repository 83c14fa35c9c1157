"""Mail benchmark: what the payment emails' outbox rows cost where they are written.

A succeeded payment gets one outbox row (payportal/mail). Written inside the journal's
group commit, such a row made each capture's commit measurably slower (20-40 % at 64-256
captures per commit, on both databases, in an earlier version of the store), so the rows
ride with the projection instead: coalesced, off the reply path, in the transaction that
projects their event. This times that projection write for batches of captures (one
``AttemptSucceeded`` per account) with and without the outbox rows, alternating the two
arms round by round so drift in a shared machine's load hits both alike, and prints the
median time per arm. The group commit itself carries no outbox row.

    python -m benchmarks.mail_outbox --db sqlite
    python -m benchmarks.mail_outbox --db postgres --rounds 30
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import time
from typing import Any

import msgspec

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
from payportal.persistence import AccountChange, Store

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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sizes", default="1,16,64,256")
    args = parser.parse_args()
    url, drop = await _database(args.db)
    rng = random.Random(5)
    try:
        store = await Store.connect(url)
        try:
            print(f"database={args.db} rounds={args.rounds} (median ms to project a batch of "
                  "captures; one outbox row per capture in the 'with' arm)")  # fmt: skip
            for size in (int(s) for s in args.sizes.split(",")):
                times: dict[str, list[float]] = {"without": [], "with": []}
                for r in range(args.rounds):
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
    finally:
        if drop is not None:
            await drop()


if __name__ == "__main__":
    asyncio.run(main())
