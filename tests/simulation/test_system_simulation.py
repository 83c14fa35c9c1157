"""Run the real shard cores, router, API payment handler, gateway, callback receiver and
retry janitor over a simulated database, processor and network, on simulated time, with
every fault chosen by a seed, and check after every step and once all has settled that
no payment is lost, doubled or stuck and no money appears or vanishes.

Each seed is a small world (1-3 shards, 1-4 accounts, a few cards each) and a few dozen
steps: payers pay (retrying their requests on errors, sometimes giving up), the merchant
issues and voids invoices, refunds and cancels, the processor disputes now and then,
and each shard's janitor runs. Meanwhile shards crash (what was committed survives,
the calls in flight are sent again), commits fail before or after they became durable,
replies are lost and batches delivered twice, the front door crashes, the processor
answers 5xx, captures and times out, decides late, and its callbacks arrive twice, late
and out of order. Then faults stop and the world runs until nothing is left to do.

``make test`` runs ``SEEDS`` seeds. ``PAYPORTAL_SOAK=1`` runs ``PAYPORTAL_SOAK_SEEDS``
more (100,000 by default) or for ``PAYPORTAL_SOAK_SECONDS``. A failure prints its seed
and the command that runs it alone: ``PAYPORTAL_SIM_SEED=<seed> .venv/bin/pytest
tests/simulation/test_system_simulation.py`` (add ``PAYPORTAL_SIM_TRACE=1`` for every
line of the run's trace).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Final

import msgspec
import pytest
import structlog

from payportal.actors import ShardOptions
from payportal.actors.janitor import PROCESSING_STALE_MS_DEFAULT
from payportal.engine import (
    AttemptStatus,
    AttemptSucceeded,
    CancelPayment,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    ReadAccount,
    RefundPayment,
    VoidInvoice,
)
from payportal.http import ids
from payportal.http.errors import ApiError
from payportal.http.handlers_payments import create_and_charge
from payportal.http.idempotency import engine_key, hash_request
from payportal.http.schemas import AllocationRequest, PaymentCreate
from payportal.persistence.directory import PaymentMethodRow

from .auditor import AuditError
from .system_auditor import SystemAuditor
from .system_world import ATTEMPT_CREATED_AT, FAULT_KINDS, START_MS, TOTALS, Card, World
from .virtual_loop import VirtualTimeLoop

# Enough that rare coincidences (a crash while a commit is in flight right after a
# capture whose reply timed out) come up in every CI run; small enough for ~1 minute.
SEEDS: Final = 1_000
SOAK_SEEDS_DEFAULT: Final = 100_000
# Steps per seed: enough for payments to be retried, refunded and disputed across a
# few crashes, few enough to keep a seed to tens of milliseconds.
STEPS_MIN: Final = 15
STEPS_MAX: Final = 45
# Settling: rounds of "let time pass, run every janitor" before a payment still open is
# called stuck, and the most simulated time they may take (the longest retry policy
# spans 14 days).
SETTLE_ROUNDS_MAX: Final = 400
SETTLE_MS_MAX: Final = 40 * 86_400_000
# Lines of a run's trace kept (a failure shows the last 40, or all with
# PAYPORTAL_SIM_TRACE=1).
TRACE_LINES: Final = 4_000
REPRODUCE: Final = (
    "PAYPORTAL_SIM_SEED={seed} .venv/bin/pytest tests/simulation/test_system_simulation.py"
)

# Base chance of each fault, per opportunity (a step, a commit, a call, a charge, a
# callback); each seed scales them by its own intensity.
FAULT_RATES: Final = {
    "shard_crash": 0.06,
    "front_door_crash": 0.015,
    "commit_failed_before_durable": 0.02,
    "commit_failed_after_durable": 0.02,
    "reply_dropped": 0.02,
    "command_duplicated": 0.02,
    "processor_5xx": 0.06,
    "timeout_after_capture": 0.06,
    "slow_decision": 0.04,
    "inquiry_unanswered": 0.1,
    "callback_duplicated": 0.2,
    "callback_delayed": 0.15,
}
assert set(FAULT_RATES) == set(FAULT_KINDS)
# Cards by how their issuers answer: (brand, chance of success, of a soft decline).
CARD_KINDS: Final = (
    Card("visa", 0.95, 0.05), Card("mastercard", 0.9, 0.1), Card("visa", 0.35, 0.6),
    Card("mastercard", 0.35, 0.55), Card("visa", 0.5, 0.3), Card("mastercard", 0.0, 0.0),
)  # fmt: skip


class Simulation:
    """One seed: its world, its workload, its auditor."""

    def __init__(self, seed: int, loop: asyncio.AbstractEventLoop) -> None:
        self.seed = seed
        rng = self.rng = random.Random(f"{seed}/workload")
        account_ids = [f"acct_a{n}" for n in range(rng.randint(1, 4))]
        self.currency = {a: rng.choice(("USD", "EUR", "JPY")) for a in account_ids}
        cards: dict[str, Card] = {}
        methods: dict[str, PaymentMethodRow] = {}
        self.methods_of: dict[str, list[str]] = {}
        for account_id in account_ids:
            for n in range(rng.randint(1, 3)):
                card = rng.choice(CARD_KINDS)
                method_id, token = f"pm_{account_id[5:]}_{n}", f"tok_{account_id[5:]}_{n}"
                cards[token] = card
                methods[method_id] = PaymentMethodRow(
                    id=method_id, account_id=account_id, token=token, type="card",
                    brand=card.brand, last4=None, exp_month=None, exp_year=None, wallet=None,
                    created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), deleted_at=None,
                )  # fmt: skip
                self.methods_of.setdefault(account_id, []).append(method_id)
        intensity = rng.choice((0.0, 0.3, 1.0, 1.0, 1.0, 2.0, 3.0))
        self.world = World(
            seed, loop, shards=rng.randint(1, 3), account_ids=account_ids, cards=cards,
            methods=methods,
            fault_rates={kind: min(0.5, rate * intensity) for kind, rate in FAULT_RATES.items()},
            shard_options=ShardOptions(
                checkpoint_every_events=rng.choice((1, 2, 3, 5, 8, 256)),
                checkpoint_interval_ms=rng.choice((0, 500, 5_000, 60_000)),
                idle_evict_ms=rng.choice((200, 2_000, 600_000)),
                evict_scan_every_batches=rng.choice((1, 2, 5, 1_000)),
            ),
            router_options={"batch_max_items": rng.choice((1, 2, 4, 256)),
                            "batch_max_wait_ms": rng.choice((0.5, 2.0, 10.0))},
        )  # fmt: skip
        self.auditor = SystemAuditor(self.world)
        self.steps = rng.randint(STEPS_MIN, STEPS_MAX)
        self.step = -1
        self._tasks: set[asyncio.Task[None]] = set()
        self._numbers = Counter[str]()
        self._invoices: dict[str, list[str]] = {a: [] for a in account_ids}

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> None:
        world = self.world
        for account_id in world.account_ids:
            self.spawn(self.merchant(OpenAccount(account_id=account_id,
                                                 currency=self.currency[account_id])))  # fmt: skip
        for step in range(self.steps):
            self.step = step
            await asyncio.sleep(self.pause())
            self.auditor.check()
            self.act()
        world.faults.on = False
        world.trace("faults stop")
        self.step = self.steps
        await self.settle()
        self.auditor.check_settled()

    def pause(self) -> float:
        """Time between steps: mostly moments, sometimes long enough for retries, stale
        attempts and inquiries to come due."""
        roll = self.rng.random()
        if roll < 0.6:
            return self.rng.uniform(0.001, 0.5)
        if roll < 0.85:
            return self.rng.uniform(0.5, 60)
        if roll < 0.97:
            return self.rng.uniform(60, 3_600)
        return self.rng.uniform(3_600, 3 * 86_400)

    def act(self) -> None:
        world = self.world
        if world.faults.roll("shard_crash"):
            host = self.rng.choice(world.hosts)
            if host.incarnation is not None:
                host.crash(host.incarnation, "killed")
        if world.faults.roll("front_door_crash"):
            world.restart_front_door()
        actions: tuple[tuple[int, Callable[[], None]], ...] = (
            (30, self.pay), (14, self.issue_invoice), (3, self.void_invoice),
            (6, self.refund), (3, self.cancel), (2, self.dispute), (16, self.run_janitor),
        )  # fmt: skip
        ((_, action),) = self.rng.choices(actions, [w for w, _ in actions])
        action()

    async def settle(self) -> None:
        """Faults have stopped: let time pass and the janitors run until every request is
        answered, every callback taken and no payment waits for anything."""
        world = self.world
        started_ms = world.now_ms()
        for rounds in range(SETTLE_ROUNDS_MAX):
            # Moments at first; then a minute at a time, for callbacks delayed by hours.
            await asyncio.sleep(self.rng.uniform(1, 5) if rounds < 20 else 60)
            for host in world.hosts:
                await self.janitor_once(host.current())
            self.auditor.check()
            if self._tasks or not world.processor.quiet:
                continue
            due = self.next_due_ms()
            if due is None:
                return
            if world.now_ms() - started_ms > SETTLE_MS_MAX:
                break
            await asyncio.sleep(max(0, due - world.now_ms()) / 1000)
        open_payments = [
            f"{p.payment_id} {p.status} {[(a.attempt_id, a.state) for a in p.attempts]}"
            for auditor in self.auditor.accounts.values() for p in auditor.payments.values()
            if p.status in ("processing", "retry_scheduled")
        ]  # fmt: skip
        raise AuditError(
            f"not settled after {(world.now_ms() - started_ms) // 1000} s: requests "
            f"{len(self._tasks)}, processor quiet {world.processor.quiet}, open {open_payments}"
        )

    def next_due_ms(self) -> int | None:
        """When the janitors next have work, by the journal and the inquiry schedule;
        None once no payment waits for anything."""
        db, now_ms = self.world.db, self.world.now_ms()
        due: list[int] = []
        for auditor in self.auditor.accounts.values():
            for payment in auditor.payments.values():
                if payment.status == "retry_scheduled":
                    assert payment.next_retry_at_ms is not None
                    due.append(payment.next_retry_at_ms)
                elif payment.status == "processing":
                    attempt_id = payment.current.attempt_id
                    inquiry = db.inquiries.get(attempt_id)
                    if inquiry is not None:
                        due.append(inquiry.next_inquiry_at_ms)
                    else:  # inquired once it has been processing for too long
                        row = db.attempts_rm.get(attempt_id)
                        created_ms = now_ms if row is None else row[ATTEMPT_CREATED_AT]
                        due.append(created_ms + PROCESSING_STALE_MS_DEFAULT)
        if not due:
            return None
        return max(min(due), now_ms + 1_000)

    # -- the workload -------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.world.loop.create_task(self._guard(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            await coroutine
        except Exception as error:
            self.world.unexpected(f"a client's request failed oddly: {error!r}")

    def number(self, kind: str) -> int:
        self._numbers[kind] += 1
        return self._numbers[kind]

    def backoff(self) -> float:
        """A client's wait before sending a request again; now and then past the API's
        in-flight window, when an unanswered payment is taken over."""
        if self.rng.random() < 0.2:
            return self.rng.uniform(61, 180)
        return self.rng.uniform(0.2, 20)

    def pay(self) -> None:
        rng = self.rng
        account_id = rng.choice(self.world.account_ids)
        allocations = []
        amount_minor = rng.choice((rng.randint(1, 100), rng.randint(100, 50_000)))
        # The invoices the payer sees open (the journal's, a moment ago).
        invoices = self.auditor.accounts[account_id].invoices
        open_invoices = [i for i in invoices.values() if i.status == "open"]
        if open_invoices and rng.random() < 0.3:
            invoice = rng.choice(open_invoices)
            allocated_minor = rng.randint(1, invoice.remaining_minor)
            allocations.append(
                AllocationRequest(invoice=invoice.invoice_id, amount=allocated_minor)
            )
            amount_minor = allocated_minor + rng.choice((0, rng.randint(1, 5_000)))
        body = PaymentCreate(
            account=account_id, amount=amount_minor, currency=self.currency[account_id],
            payment_method=rng.choice(self.methods_of[account_id]), allocations=allocations,
        )  # fmt: skip
        key = f"key_{self.number('key')}"
        self.spawn(self.payer(account_id, key, body))

    async def payer(self, account_id: str, key: str, body: PaymentCreate) -> None:
        """``POST /v1/payments`` as a payer's client sends it: again on errors and 409s,
        with the same key and body, until answered or given up."""
        world = self.world
        hashed = hash_request("POST", "/v1/payments", msgspec.json.encode(body))
        for tries in range(self.rng.randint(1, 8)):
            front_door = world.front_door
            try:
                task = front_door.spawn(create_and_charge(
                    front_door.request, front_door.principal, key, account_id, body, hashed
                ))  # fmt: skip
                await asyncio.wait([task])
                if task.cancelled():
                    raise ConnectionError("the front door went away")
                status, payload, _ = task.result()
            except ApiError as error:
                world.trace(f"payer {key}: {error.status} {error.body.code}")
                if error.status == 409:
                    if tries == 0:
                        # Each payer has keys of its own: nothing else can hold this one.
                        world.unexpected(f"payer {key}'s first request was answered 409")
                    await asyncio.sleep(self.backoff())
                    continue
                world.counts["payments_refused"] += 1
                return
            except ConnectionError as error:
                world.trace(f"payer {key}: {error!r}")
                await asyncio.sleep(self.backoff())
                continue
            answer = msgspec.json.decode(payload)
            payment = answer if status == 200 else answer["error"]["payment"]
            world.trace(f"payer {key}: {status} {payment['id']} {payment['status']}")
            world.counts["payments_acknowledged"] += 1
            self.auditor.acknowledged(account_id, engine_key(front_door.principal, key), payment)
            return
        world.trace(f"payer {key}: gave up")
        world.counts["payers_gave_up"] += 1

    async def merchant(self, command: Any) -> None:
        """A merchant's command, sent again until the shard answers it."""
        world = self.world
        while True:
            try:
                reply = await world.front_door.router.submit(command)
            except ConnectionError:
                await asyncio.sleep(self.backoff())
                continue
            world.trace(f"merchant {type(command).__name__}: {reply.outcome.result.value} "
                        f"{reply.outcome.rejection or ''}")  # fmt: skip
            return

    def issue_invoice(self) -> None:
        rng = self.rng
        account_id = rng.choice(self.world.account_ids)
        n = self.number("invoice")
        invoice_id = f"inv_{account_id[5:]}_{n}"
        self._invoices[account_id].append(invoice_id)
        self.spawn(self.merchant(IssueInvoice(
            account_id=account_id, invoice_id=invoice_id, number=f"INV-{n:04d}",
            amount_minor=rng.randint(100, 40_000), currency=self.currency[account_id],
            due_date=self.world.today() + dt.timedelta(days=rng.randint(-10, 30)),
        )))  # fmt: skip

    def void_invoice(self) -> None:
        account_id = self.rng.choice(self.world.account_ids)
        if self._invoices[account_id]:
            invoice_id = self.rng.choice(self._invoices[account_id])
            self.spawn(self.merchant(VoidInvoice(account_id=account_id, invoice_id=invoice_id)))

    def _payments(self, *statuses: str) -> list[tuple[str, str]]:
        return [
            (auditor.account_id, payment.payment_id)
            for auditor in self.auditor.accounts.values()
            for payment in auditor.payments.values()
            if not statuses or payment.status in statuses
        ]

    def cancel(self) -> None:
        payments = self._payments()
        if payments:
            account_id, payment_id = self.rng.choice(payments)
            self.spawn(self.merchant(CancelPayment(account_id=account_id, payment_id=payment_id)))

    def refund(self) -> None:
        payments = self._payments("succeeded", "partially_refunded")
        if not payments:
            return
        account_id, payment_id = self.rng.choice(payments)
        payment = self.auditor.accounts[account_id].payments[payment_id]
        refundable_minor = payment.amount_minor - payment.refunded_minor
        amount_minor = refundable_minor
        if refundable_minor > 1 and self.rng.random() < 0.6:
            amount_minor = self.rng.randint(1, refundable_minor - 1)
        refund_id = f"re_{account_id[5:]}_{self.number('refund')}"
        self.spawn(self.refunder(account_id, payment_id, refund_id, amount_minor))

    async def refunder(
        self, account_id: str, payment_id: str, refund_id: str, amount_minor: int
    ) -> None:
        """``POST /v1/payments/{id}/refunds`` as a merchant's client sends it: again, with
        the same key, until it is answered (a request cut off by a front door's crash is
        run again once its key's lock has timed out)."""
        world = self.world
        while True:
            front_door = world.front_door
            try:
                task = front_door.spawn(self.refund_request(front_door, account_id, payment_id,
                                                            refund_id, amount_minor))  # fmt: skip
                await asyncio.wait([task])
                if task.cancelled():
                    raise ConnectionError("the front door went away")
                answer = task.result()
            except ConnectionError as error:
                world.trace(f"refund {refund_id}: {error!r}")
                await asyncio.sleep(self.backoff())
                continue
            world.trace(f"refund {refund_id}: {answer}")
            return

    async def refund_request(
        self, front_door: Any, account_id: str, payment_id: str, refund_id: str,
        amount_minor: int,
    ) -> str:  # fmt: skip
        """What the refunds handler does: read the payment, refund its capture at the
        processor, then record the refund in the account."""
        reply = await front_door.router.submit(
            ReadAccount(account_id=account_id, payment_id=payment_id)
        )
        payment = reply.payment
        assert payment is not None
        captured = [a for a in payment.attempts if a.status is AttemptStatus.succeeded]
        if not captured or captured[0].charge_id is None:
            return "400 not captured"
        result = await self.world.processor.refund(captured[0].charge_id, amount_minor, refund_id)
        if result.outcome is OutcomeKind.declined:
            return f"400 declined {result.failure_code}"
        if result.outcome is not OutcomeKind.succeeded:
            raise ConnectionError("503: the processor's answer is not known yet")
        reply = await front_door.router.submit(RefundPayment(
            account_id=account_id, payment_id=payment_id, refund_id=refund_id,
            amount_minor=amount_minor,
        ))  # fmt: skip
        return f"{reply.outcome.result.value} {reply.outcome.rejection or ''}"

    def dispute(self) -> None:
        captured = [c for c in self.world.processor.charges.values() if c.status == "succeeded"]
        refunded = {p.payment_id: p.refunded_minor for a in self.auditor.accounts.values()
                    for p in a.payments.values()}  # fmt: skip
        # Often the charge a refund is on its way for: a payer who complained may also
        # have asked the bank for the money back.
        refunding = [c for c in captured if c.refunded_minor > refunded.get(c.payment_id, 0)]
        if refunding and self.rng.random() < 0.5:
            captured = refunding
        if captured:
            self.world.processor.dispute(self.rng.choice(captured))

    def run_janitor(self) -> None:
        host = self.rng.choice(self.world.hosts)
        incarnation = host.current()
        # Now and then two at once, as after a restart that overlaps the old process.
        for _ in range(2 if self.rng.random() < 0.15 else 1):
            task = self.world.loop.create_task(self.janitor_once(incarnation))
            incarnation.tasks.add(task)
            task.add_done_callback(incarnation.tasks.discard)

    async def janitor_once(self, incarnation: Any) -> None:
        world = self.world
        try:
            report = await incarnation.janitor.run_once()
        except asyncio.CancelledError:
            return  # its shard crashed under it
        except Exception as error:
            world.unexpected(f"a janitor run failed: {error!r}")
            return
        world.counts["retries_started"] += report.retries_started
        world.counts["inquiries_made"] += report.inquiries_made


# -- running a seed -----------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic_ids(loop_counter: Iterator[int]) -> Iterator[None]:
    """The API's ids are time and randomness; a run's must come from its seed."""
    unique = ids.unique
    ids.unique = lambda: f"{next(loop_counter):011x}"
    try:
        yield
    finally:
        ids.unique = unique


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The code under test logs every failure it survives; thousands of injected faults
    would cost more time in formatting tracebacks than in running."""
    logging.disable(logging.CRITICAL)
    config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**config)
        logging.disable(logging.NOTSET)


class SeedFailed(AssertionError):
    pass


def run_seed(seed: int) -> Counter[str]:
    """Run one seed; its figures, or ``SeedFailed`` naming the seed and how to rerun it."""
    figures, _ = _run(seed)
    return figures


def _run(seed: int) -> tuple[Counter[str], list[str]]:
    simulation = _simulate(seed)
    return _figures(simulation), simulation.world.recent_trace(TRACE_LINES)


def _simulate(seed: int) -> Simulation:
    loop = VirtualTimeLoop()
    simulation: Simulation | None = None
    counter = iter(range(1, 1 << 40))
    try:
        with _deterministic_ids(counter), _quiet_logs():
            asyncio.set_event_loop(loop)
            simulation = Simulation(seed, loop)
            try:
                loop.run_until_complete(simulation.run())
            except (AssertionError, Exception) as error:
                raise _failure(seed, simulation, error) from error
            finally:
                _stop_everything(loop)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert simulation is not None
    return simulation


def _stop_everything(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def _failure(seed: int, simulation: Simulation, error: BaseException) -> SeedFailed:
    world = simulation.world
    lines = world.recent_trace(TRACE_LINES if os.environ.get("PAYPORTAL_SIM_TRACE") else 40)
    where = "after settling" if simulation.step >= simulation.steps else f"step {simulation.step}"
    headline = (
        f"system simulation seed {seed} failed at {where} "
        f"({(world.now_ms() - START_MS) / 1000:.3f} s simulated): {error!r}\n"
        f"reproduce: {REPRODUCE.format(seed=seed)}"
    )
    # The headline again after the trace, where a terminal's scrolling stops.
    return SeedFailed(
        f"{headline}\nlast {len(lines)} lines of its trace:\n  " + "\n  ".join(lines)
        + f"\n{headline}"
    )


def _figures(simulation: Simulation) -> Counter[str]:
    world = simulation.world
    figures = Counter(world.counts)
    figures["seeds"] = 1
    figures["steps"] = simulation.steps
    figures["simulated_ms"] = world.now_ms() - START_MS
    figures["payments"] = sum(len(a.payments) for a in simulation.auditor.accounts.values())
    figures["captures"] = sum(len(a.captured) for a in simulation.auditor.accounts.values())
    figures["charges"] = len(world.processor.charges)
    figures["commits"] = world.db.commits
    figures["audits"] = simulation.auditor.checks
    return figures


def _ci_seeds() -> list[int]:
    chosen = os.environ.get("PAYPORTAL_SIM_SEED")
    if chosen:
        return [int(s) for s in chosen.split(",")]
    return list(range(SEEDS))


@pytest.mark.parametrize("seed", _ci_seeds())
def test_no_payment_is_lost_doubled_or_stuck_and_money_is_conserved_under_faults(
    seed: int,
) -> None:
    TOTALS.update(run_seed(seed))


@pytest.mark.skipif(not os.environ.get("PAYPORTAL_SOAK"), reason="soak runs set PAYPORTAL_SOAK=1")
def test_soak_many_more_seeds() -> None:
    seeds = int(os.environ.get("PAYPORTAL_SOAK_SEEDS") or SOAK_SEEDS_DEFAULT)
    budget_s = float(os.environ.get("PAYPORTAL_SOAK_SECONDS") or "inf")
    started = time.monotonic()
    for seed in range(SEEDS, SEEDS + seeds):
        if time.monotonic() - started > budget_s:
            break
        TOTALS.update(run_seed(seed))


def test_a_seed_runs_the_same_way_twice() -> None:
    """Determinism: the same seed, the same run (figures and trace alike)."""
    for seed in (3, 17):
        first, second = _run(seed), _run(seed)
        assert first[0] == second[0], (seed, first[0], second[0])
        assert first[1] == second[1], seed


def test_the_auditor_catches_a_capture_the_journal_never_recorded() -> None:
    world = (simulation := _simulate(5)).world
    charge = next(c for c in world.processor.charges.values() if c.status == "succeeded")
    # The same payment captured again at the processor, under a key no attempt has.
    world.processor.charges["att_other"] = msgspec.structs.replace(
        charge, key="att_other", charge_id="ch_other"
    )
    with pytest.raises(AuditError, match="captured at the processor by"):
        simulation.auditor.check()


def test_the_auditor_catches_a_journal_whose_money_does_not_add_up() -> None:
    world = _simulate(5).world
    journal = next(j for j in world.db.journal.values()
                   if any(row[3] == "attempt_succeeded" for row in j.values()))  # fmt: skip
    version, row = next((v, r) for v, r in journal.items() if r[3] == "attempt_succeeded")
    event = msgspec.msgpack.decode(row[5], type=AttemptSucceeded)
    tampered = msgspec.structs.replace(event, unapplied_minor=event.unapplied_minor + 1)
    journal[version] = (*row[:5], msgspec.msgpack.encode(tampered), *row[6:])
    with pytest.raises(AuditError, match="unapplied"):
        SystemAuditor(world).check()
