"""Drive the engine with seeded random command sequences (duplicated and reordered processor
outcomes, retries on a simulated clock, refunds, voids, disputes, replayed keys) and after
every step compare its state with an independent auditor model and its journal replay."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Final

import msgspec
import pytest

from payportal.engine import (
    AccountState,
    Allocation,
    AttemptSucceeded,
    CancelPayment,
    CreatePayment,
    DisputePayment,
    Event,
    Initiator,
    IssueInvoice,
    OpenAccount,
    OutcomeKind,
    PaymentMethodRef,
    PaymentStatus,
    RecordOutcome,
    RefundPayment,
    ReplacePaymentMethod,
    Result,
    RetrySchedule,
    ServicePeriod,
    StartRetry,
    VoidInvoice,
    check_invariants,
    evolve,
    execute,
)
from payportal.engine.messages import Command
from tests.simulation.auditor import AccountAuditor, AuditError

# The issue's floor: enough seeds that rare interleavings (a redelivery after two
# declines, a deferral by a network cap) turn up in every run.
SEEDS: Final = 200
# Enough steps for payments to go through retries, replacements and refunds, few enough
# that 200 seeds stay well under half a minute (about 12 s on a laptop).
STEPS_PER_SEED: Final = 300
# Journal replays per seed besides the one at the end: recovery can happen at any step.
REPLAYS_MID_RUN: Final = 2
# 2026-01-01T00:00:00Z: any fixed instant keeps a run reproducible from its seed alone.
START_MS: Final = 1_767_225_600_000
FIRST_DUE_DATE: Final = dt.date(2026, 1, 1)
# Due dates fall in a short range so that several invoices share one and the tie-breaks
# (invoice number, then id) are exercised.
DUE_DATE_SPREAD_DAYS: Final = 20
# Few invoice numbers, so two invoices sometimes share one.
INVOICE_NUMBERS: Final = 30
# Units of the simulated clock.
SECOND_MS: Final = 1_000
HOUR_MS: Final = 3_600 * SECOND_MS
DAY_MS: Final = 24 * HOUR_MS

# Two Visa cards share the Visa caps per initiator; Mastercard has its own caps; Amex is
# the "other" network.
PAYMENT_METHODS: Final = (
    PaymentMethodRef(id="pm_visa_1", brand="visa"),
    PaymentMethodRef(id="pm_visa_2", brand="visa", kind="debit"),
    PaymentMethodRef(id="pm_mc_1", brand="mastercard"),
    PaymentMethodRef(id="pm_amex_1", brand="amex", kind="wallet"),
)
# (decline code, Visa category, Mastercard advice code): the contract's hard and soft cases.
HARD_DECLINES: Final = (
    ("do_not_honor", None, None), ("expired_card", None, None), ("lost_card", None, None),
    ("insufficient_funds", 1, None), ("insufficient_funds", None, "21"),
)  # fmt: skip
SOFT_DECLINES: Final = (
    ("insufficient_funds", None, None), ("try_again_later", None, None),
    ("issuer_unavailable", 2, None), ("insufficient_funds", None, "24"),
    ("try_again_later", None, "25"),
)  # fmt: skip


def encode(state: AccountState | None) -> bytes:
    return msgspec.msgpack.encode(state)


def replay(events: list[Event]) -> AccountState | None:
    """Recovery: rebuild an account from nothing but its journal."""
    state: AccountState | None = None
    for event in events:
        state, _ = evolve(state, event)
    return state


class Simulation:
    """A seeded workload over a few accounts, each with its engine state and its auditor."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        # The engine's jitter comes from its own stream, so the workload does not depend on it.
        self.engine_rng = random.Random(f"engine/{seed}")
        self.now_ms = START_MS
        # One seed in four is a dunning run: one account and one Mastercard, mostly soft
        # declines and many retries close together, so the card networks' reattempt caps
        # defer and exhaust retries.
        self.dunning = seed % 4 == 3
        accounts = 1 if self.dunning else self.rng.randint(1, 3)
        self.account_ids = [f"acct_{n}" for n in range(accounts)]
        self.currency_by_account = {a: self.rng.choice(("USD", "EUR", "JPY"))
                                    for a in self.account_ids}  # fmt: skip
        self.states: dict[str, AccountState | None] = dict.fromkeys(self.account_ids)
        self.auditors = {a: AccountAuditor(a) for a in self.account_ids}
        self.journals: dict[str, list[Event]] = {a: [] for a in self.account_ids}
        self.sent: dict[str, list[Command]] = {a: [] for a in self.account_ids}
        self.captures: Counter[tuple[str, str]] = Counter()
        self.payment_methods = PAYMENT_METHODS[2:3] if self.dunning else PAYMENT_METHODS
        self._ids = itertools.count(1)

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{self.seed}_{next(self._ids)}"

    # -- running ---------------------------------------------------------------------------

    def run(self, steps: int) -> None:
        replay_steps = set(self.rng.sample(range(steps), REPLAYS_MID_RUN))
        for step in range(steps):
            try:
                self.step()
                if step in replay_steps:
                    self.check_replay()
            except AssertionError as error:
                raise AssertionError(
                    f"reproduce with seed={self.seed} step={step}: {error}"
                ) from error
        try:
            self.check_replay()
        except AssertionError as error:
            raise AssertionError(f"reproduce with seed={self.seed} step=end: {error}") from error

    def step(self) -> None:
        self.advance_clock()
        account_id = self.rng.choice(self.account_ids)
        command = self.next_command(account_id)
        self.execute(account_id, command)

    def execute(self, account_id: str, command: Command) -> None:
        state = self.states[account_id]
        before = encode(state)
        try:
            state, decision, _ = execute(state, command, self.now_ms, self.engine_rng)
        except AssertionError as error:
            raise AssertionError(f"the engine crashed on {command!r}: {error!r}") from error
        result = decision.outcome.result
        where = f"{command!r} -> {decision.outcome!r}"
        if result is not Result.ok:
            assert not decision.events, f"{where}: a {result} command emitted events"
            assert encode(state) == before, f"{where}: a {result} command changed the state"
        self.states[account_id] = state
        self.journals[account_id].extend(decision.events)
        self.sent[account_id].append(command)
        for event in decision.events:
            if isinstance(event, AttemptSucceeded):
                self.captures[(account_id, event.payment_id)] += 1
                assert self.captures[(account_id, event.payment_id)] == 1, (
                    f"{where}: payment {event.payment_id} captured twice"
                )
        try:
            self.auditors[account_id].audit(command, self.now_ms, decision.outcome, state)
        except AuditError as error:
            raise AssertionError(f"{where}: {error}") from error
        if state is not None:
            check_invariants(state)

    def check_replay(self) -> None:
        for account_id in self.account_ids:
            rebuilt = replay(self.journals[account_id])
            assert encode(rebuilt) == encode(self.states[account_id]), (
                f"replaying the journal of {account_id} does not rebuild the live state"
            )

    def advance_clock(self) -> None:
        roll = self.rng.random()
        if roll < 0.3:
            return
        if self.dunning:  # a billing run: many payments within hours, retries close together
            self.now_ms += self.rng.randint(1, 10 * 60 * SECOND_MS)
            return
        if roll < 0.7:
            self.now_ms += self.rng.randint(1, 60 * SECOND_MS)
        elif roll < 0.95:
            self.now_ms += self.rng.randint(60 * SECOND_MS, 6 * HOUR_MS)
        else:
            self.now_ms += self.rng.randint(6 * HOUR_MS, 3 * DAY_MS)

    # -- choosing a command ----------------------------------------------------------------

    def next_command(self, account_id: str) -> Command:
        state = self.states[account_id]
        if state is None and self.rng.random() < 0.2:
            return self.before_opening(account_id)
        if state is None or self.rng.random() < 0.01:
            return self.open_account(account_id, opened=state is not None)
        generators: list[tuple[int, Callable[[AccountState], Command | None]]] = [
            (14, self.issue_invoice),
            (4, self.reissue_invoice),
            (4, self.void_invoice),
            (14, self.create_payment),
            (5, self.repeat_payment),
            (26, self.outcome_for_open_attempt),
            (8, self.redeliver),
            (5, self.stale_outcome),
            (10, self.start_retry),
            (5, self.replace_payment_method),
            (3, self.cancel_payment),
            (7, self.refund_payment),
            (2, self.dispute_payment),
            (1, self.unknown_target),
        ]
        if self.dunning:
            generators += [
                (20, self.create_payment),
                (20, self.outcome_for_open_attempt),
                (20, self.start_retry),
            ]
        weights = [w for w, _ in generators]
        for _ in range(10):
            ((_, generate),) = self.rng.choices(generators, weights)
            command = generate(state)
            if command is not None:
                return command
        return self.issue_invoice(state)

    def open_account(self, account_id: str, *, opened: bool) -> Command:
        currency = self.currency_by_account[account_id]
        roll = self.rng.random()
        if roll < 0.05:
            currency = "ZZZ"  # not a currency: rejected
        elif opened and roll < 0.3:
            currency = "EUR" if currency != "EUR" else "USD"  # reopening differently: rejected
        return OpenAccount(account_id=account_id, currency=currency)

    def before_opening(self, account_id: str) -> Command:
        """Commands for an account not opened yet: all refused, none opens it."""
        return self.rng.choice((
            IssueInvoice(account_id=account_id, invoice_id=self.next_id("inv"), number="INV-1",
                         amount_minor=100, currency=self.currency_by_account[account_id],
                         due_date=FIRST_DUE_DATE),
            CreatePayment(account_id=account_id, payment_id=self.next_id("pay"),
                          attempt_id=self.next_id("att"), idempotency_key=self.next_id("key"),
                          amount_minor=100, currency=self.currency_by_account[account_id],
                          payment_method=PAYMENT_METHODS[0]),
            RefundPayment(account_id=account_id, payment_id="pay_missing",
                          refund_id=self.next_id("re"), amount_minor=1),
            VoidInvoice(account_id=account_id, invoice_id="inv_missing"),
        ))  # fmt: skip

    def amount_minor(self) -> int:
        return self.rng.choice((self.rng.randint(1, 100), self.rng.randint(100, 50_000)))

    def issue_invoice(self, state: AccountState) -> Command:
        due_date = FIRST_DUE_DATE + dt.timedelta(days=self.rng.randint(0, DUE_DATE_SPREAD_DAYS))
        period = None
        if self.rng.random() < 0.3:
            start = due_date - dt.timedelta(days=30)
            period = ServicePeriod(start=start, end=due_date - dt.timedelta(days=1))
            if self.rng.random() < 0.05:
                period = ServicePeriod(start=period.end, end=period.start)  # backwards: rejected
        currency = state.currency
        roll = self.rng.random()
        if roll < 0.03:
            currency = "ZZZ"
        elif roll < 0.06:
            currency = "EUR" if currency != "EUR" else "JPY"
        amount_minor = self.amount_minor() if self.rng.random() > 0.03 else 0
        return IssueInvoice(
            account_id=state.account_id, invoice_id=self.next_id("inv"),
            number=f"INV-{self.rng.randint(1, INVOICE_NUMBERS):04d}", amount_minor=amount_minor,
            currency=currency, due_date=due_date, service_period=period,
        )  # fmt: skip

    def reissue_invoice(self, state: AccountState) -> Command | None:
        if not state.invoices:
            return None
        invoice = state.invoices[self.rng.choice(list(state.invoices))]
        command = IssueInvoice(
            account_id=state.account_id, invoice_id=invoice.invoice_id, number=invoice.number,
            amount_minor=invoice.amount_due_minor, currency=state.currency,
            due_date=invoice.due_date, service_period=invoice.service_period,
        )  # fmt: skip
        change = self.rng.choice(("none", "none", "amount", "due_date", "number", "period"))
        if change == "amount":
            return msgspec.structs.replace(command, amount_minor=command.amount_minor + 1)
        if change == "due_date":
            return msgspec.structs.replace(command, due_date=command.due_date + dt.timedelta(1))
        if change == "number":
            return msgspec.structs.replace(command, number=command.number + "-B")
        if change == "period":
            period = None if command.service_period else ServicePeriod(
                start=command.due_date - dt.timedelta(days=30), end=command.due_date
            )  # fmt: skip
            return msgspec.structs.replace(command, service_period=period)
        return command

    def void_invoice(self, state: AccountState) -> Command:
        invoice_ids = list(state.invoices) or ["inv_missing"]
        open_ids = [i.invoice_id for i in state.invoices.values() if i.status == "open"]
        if open_ids and self.rng.random() < 0.7:
            invoice_ids = open_ids
        return VoidInvoice(account_id=state.account_id, invoice_id=self.rng.choice(invoice_ids))

    def create_payment(self, state: AccountState) -> Command:
        outstanding_minor = state.outstanding_minor
        open_invoices = [i for i in state.invoices.values() if i.status == "open"]
        allocations: list[Allocation] = []
        kind = self.rng.choice(("full", "partial", "over", "any", "explicit", "explicit",
                                "invalid"))  # fmt: skip
        if kind == "full" and outstanding_minor > 0:
            amount_minor = outstanding_minor
        elif kind == "partial" and outstanding_minor > 1:
            amount_minor = self.rng.randint(1, outstanding_minor - 1)
        elif kind == "over":
            amount_minor = outstanding_minor + self.rng.randint(1, 20_000)
        elif kind in ("explicit", "invalid") and open_invoices:
            for invoice in self.rng.sample(open_invoices, min(len(open_invoices), 3)):
                remaining_minor = invoice.amount_due_minor - invoice.amount_paid_minor
                allocations.append(
                    Allocation(
                        invoice_id=invoice.invoice_id,
                        amount_minor=self.rng.randint(1, remaining_minor),
                    )
                )
            amount_minor = sum(a.amount_minor for a in allocations) + self.rng.choice(
                (0, 0, self.rng.randint(1, 10_000))
            )
            if kind == "invalid":
                allocations, amount_minor = self.break_allocations(state, allocations, amount_minor)
        else:
            amount_minor = self.amount_minor()
        currency = state.currency
        roll = self.rng.random()
        if roll < 0.02:
            currency = "EUR" if currency != "EUR" else "USD"
        elif roll < 0.03:
            amount_minor = 0
        key = self.next_id("key") if self.rng.random() > 0.01 else ""
        return CreatePayment(
            account_id=state.account_id, payment_id=self.next_id("pay"),
            attempt_id=self.next_id("att"), idempotency_key=key, amount_minor=amount_minor,
            currency=currency, payment_method=self.rng.choice(self.payment_methods),
            allocations=tuple(allocations),
            initiator=self.rng.choice((Initiator.customer, Initiator.merchant)),
            schedule=RetrySchedule.subscription if self.rng.random() < 0.2
            else RetrySchedule.one_off,
        )  # fmt: skip

    def break_allocations(
        self, state: AccountState, allocations: list[Allocation], amount_minor: int
    ) -> tuple[list[Allocation], int]:
        """Explicit allocations the contract refuses, each in its own way."""
        first = allocations[0]
        invoice = state.invoices[first.invoice_id]
        remaining_minor = invoice.amount_due_minor - invoice.amount_paid_minor
        closed = [i.invoice_id for i in state.invoices.values() if i.status != "open"]
        way = self.rng.choice(("over_remaining", "closed", "unknown", "duplicate", "zero",
                               "over_amount"))  # fmt: skip
        if way == "over_remaining":
            allocations[0] = Allocation(
                invoice_id=first.invoice_id, amount_minor=remaining_minor + 1
            )
            return allocations, amount_minor + remaining_minor + 1
        if way == "closed" and closed:
            allocations.append(Allocation(invoice_id=self.rng.choice(closed), amount_minor=1))
            return allocations, amount_minor + 1
        if way == "duplicate":
            return [*allocations, first], amount_minor + first.amount_minor
        if way == "zero":
            return [*allocations, Allocation(invoice_id="inv_other", amount_minor=0)], amount_minor
        if way == "over_amount":
            return allocations, sum(a.amount_minor for a in allocations) - 1
        allocations.append(Allocation(invoice_id="inv_missing", amount_minor=1))
        return allocations, amount_minor + 1

    def past(self, state: AccountState, kind: type[Command]) -> list[Command]:
        return [c for c in self.sent[state.account_id] if isinstance(c, kind)]

    def repeat_payment(self, state: AccountState) -> Command | None:
        past = self.past(state, CreatePayment)
        if not past:
            return None
        command = self.rng.choice(past)
        assert isinstance(command, CreatePayment)
        change = self.rng.choice(("none", "none", "new_id", "amount", "method", "allocations"))
        if change == "new_id":  # a client retry that minted a new id: the key decides
            return msgspec.structs.replace(command, payment_id=self.next_id("pay"),
                                           attempt_id=self.next_id("att"))  # fmt: skip
        if change == "amount":
            return msgspec.structs.replace(command, amount_minor=command.amount_minor + 1)
        if change == "method":
            others = [m for m in PAYMENT_METHODS if m.id != command.payment_method.id]
            return msgspec.structs.replace(command, payment_method=self.rng.choice(others))
        if change == "allocations":
            return msgspec.structs.replace(command, allocations=command.allocations[:-1])
        return command

    def payments_where(self, state: AccountState, *statuses: PaymentStatus) -> list[str]:
        return [p.payment_id for p in state.payments.values() if p.status in statuses]

    def outcome(self, state: AccountState, payment_id: str, attempt_id: str,
                kind: OutcomeKind) -> RecordOutcome:  # fmt: skip
        payment = state.payments[payment_id]
        decline_code = visa_category = advice_code = None
        if kind is OutcomeKind.declined:
            hard = self.rng.random() < (0.1 if self.dunning else 0.4)
            decline_code, visa_category, advice_code = self.rng.choice(
                HARD_DECLINES if hard else SOFT_DECLINES
            )
        elif kind is OutcomeKind.errored:
            decline_code = "processing_error"
        amount_minor: int | None = None
        if self.rng.random() < 0.5:
            amount_minor = payment.amount_minor + (1 if self.rng.random() < 0.03 else 0)
        return RecordOutcome(
            account_id=state.account_id, payment_id=payment_id, attempt_id=attempt_id,
            outcome=kind, charge_id=f"ch_{attempt_id}", decline_code=decline_code,
            visa_category=visa_category, advice_code=advice_code, amount_minor=amount_minor,
            currency=payment.currency if amount_minor is not None else None,
        )  # fmt: skip

    def random_kind(self) -> OutcomeKind:
        (kind,) = self.rng.choices(
            (OutcomeKind.succeeded, OutcomeKind.declined, OutcomeKind.errored,
             OutcomeKind.unknown), (15, 70, 10, 5) if self.dunning else (40, 35, 15, 10)
        )  # fmt: skip
        return kind

    def outcome_for_open_attempt(self, state: AccountState) -> Command | None:
        open_payments = [
            p for p in state.payments.values()
            if p.status in (PaymentStatus.processing, PaymentStatus.retry_scheduled)
            and p.current_attempt.status in ("processing", "unknown", "errored")
        ]  # fmt: skip
        if not open_payments:
            return None
        payment = self.rng.choice(open_payments)
        return self.outcome(state, payment.payment_id, payment.current_attempt.attempt_id,
                            self.random_kind())  # fmt: skip

    def redeliver(self, state: AccountState) -> Command | None:
        """At-least-once delivery: an earlier command of some kind arrives again, late."""
        kind = self.rng.choice(
            (
                RecordOutcome,
                RecordOutcome,
                StartRetry,
                ReplacePaymentMethod,
                CancelPayment,
                RefundPayment,
                DisputePayment,
                VoidInvoice,
            )
        )
        past = self.past(state, kind)
        return self.rng.choice(past) if past else None

    def stale_outcome(self, state: AccountState) -> Command | None:
        """Any outcome for any attempt ever made, old ones included."""
        attempts = [(p.payment_id, a.attempt_id) for p in state.payments.values()
                    for a in p.attempts]  # fmt: skip
        if not attempts:
            return None
        payment_id, attempt_id = self.rng.choice(attempts)
        if self.rng.random() < 0.05:
            attempt_id = "att_missing"
        return self.outcome(state, payment_id, attempt_id, self.random_kind())

    def start_retry(self, state: AccountState) -> Command | None:
        waiting = [p for p in state.payments.values()
                   if p.status is PaymentStatus.retry_scheduled]  # fmt: skip
        if not waiting:
            return None
        if self.dunning or self.rng.random() < 0.5:  # timers fire in the order they are due
            payment = min(waiting, key=lambda p: (p.next_retry_at_ms or 0, p.payment_id))
        else:
            payment = self.rng.choice(waiting)
        assert payment.next_retry_at_ms is not None
        if self.rng.random() < 0.9:  # the timer fires when due, sometimes a little late
            due_ms = payment.next_retry_at_ms + self.rng.choice((0, self.rng.randint(1, HOUR_MS)))
            self.now_ms = max(self.now_ms, due_ms)
        current = payment.current_attempt
        attempt_id = self.next_id("att")
        roll = self.rng.random()
        if current.status == "errored" and roll < 0.8:
            attempt_id = current.attempt_id  # a technical error is sent again as it was
        elif roll < 0.05:
            attempt_id = self.rng.choice(payment.attempts).attempt_id  # a reused id
        return StartRetry(account_id=state.account_id, payment_id=payment.payment_id,
                          attempt_id=attempt_id)  # fmt: skip

    def replace_payment_method(self, state: AccountState) -> Command | None:
        needing = self.payments_where(state, PaymentStatus.requires_payment_method)
        if not needing:
            return None
        return ReplacePaymentMethod(
            account_id=state.account_id, payment_id=self.rng.choice(needing),
            attempt_id=self.next_id("att"), payment_method=self.rng.choice(self.payment_methods),
        )  # fmt: skip

    def cancel_payment(self, state: AccountState) -> Command | None:
        if not state.payments:
            return None
        cancelable = self.payments_where(
            state, PaymentStatus.retry_scheduled, PaymentStatus.requires_payment_method
        )
        candidates = cancelable if cancelable and self.rng.random() < 0.7 else list(state.payments)
        return CancelPayment(account_id=state.account_id, payment_id=self.rng.choice(candidates))

    def refund_payment(self, state: AccountState) -> Command | None:
        captured = self.payments_where(
            state, PaymentStatus.succeeded, PaymentStatus.partially_refunded
        )
        if not state.payments:
            return None
        if not captured or self.rng.random() < 0.1:
            captured = list(state.payments)
        payment = state.payments[self.rng.choice(captured)]
        refundable_minor = payment.amount_minor - payment.amount_refunded_minor
        roll = self.rng.random()
        if roll < 0.35:
            amount_minor = refundable_minor
        elif roll < 0.85 and refundable_minor > 1:
            amount_minor = self.rng.randint(1, refundable_minor - 1)
        elif roll < 0.95:
            amount_minor = refundable_minor + 1
        else:
            amount_minor = 0
        refund_id = self.next_id("re")
        if state.refunds and self.rng.random() < 0.15:
            refund_id = self.rng.choice(list(state.refunds))  # a refund id used before
        return RefundPayment(account_id=state.account_id, payment_id=payment.payment_id,
                             refund_id=refund_id, amount_minor=amount_minor)  # fmt: skip

    def dispute_payment(self, state: AccountState) -> Command | None:
        captured = self.payments_where(
            state, PaymentStatus.succeeded, PaymentStatus.partially_refunded
        )
        candidates = captured if captured and self.rng.random() < 0.8 else list(state.payments)
        if not candidates:
            return None
        return DisputePayment(account_id=state.account_id, payment_id=self.rng.choice(candidates),
                              dispute_id=self.next_id("dp"), fee_minor=self.rng.choice((0, 1500)))

    def unknown_target(self, state: AccountState) -> Command:
        account_id = state.account_id
        return self.rng.choice((
            CancelPayment(account_id=account_id, payment_id="pay_missing"),
            DisputePayment(account_id=account_id, payment_id="pay_missing"),
            StartRetry(account_id=account_id, payment_id="pay_missing", attempt_id="att_x"),
            RefundPayment(account_id=account_id, payment_id="pay_missing",
                          refund_id=self.next_id("re"), amount_minor=1),
            VoidInvoice(account_id=account_id, invoice_id="inv_missing"),
        ))  # fmt: skip


@pytest.mark.parametrize("seed", range(SEEDS))
def test_balances_match_auditor_under_random_workload(seed: int) -> None:
    Simulation(seed).run(STEPS_PER_SEED)


@pytest.mark.parametrize("corruption", ["invoice_paid", "credit", "allocation", "ledger"])
def test_simulation_detects_a_broken_engine(corruption: str) -> None:
    """The check can fail: a state corrupted behind the auditor's back is caught."""
    simulation = Simulation(seed=0)
    for _ in range(STEPS_PER_SEED):
        simulation.step()
    account_id, state = next(
        (a, s)
        for a, s in simulation.states.items()
        if s is not None and any(p.allocations for p in s.payments.values())
    )
    auditor = simulation.auditors[account_id]
    auditor.compare(state)
    if corruption == "invoice_paid":
        invoice = next(i for i in state.invoices.values() if i.amount_paid_minor > 0)
        invoice.amount_paid_minor -= 1
    elif corruption == "credit":
        state.credit_minor += 1
    elif corruption == "allocation":
        payment = next(p for p in state.payments.values() if p.allocations)
        first = payment.allocations[0]
        payment.allocations = (
            Allocation(invoice_id=first.invoice_id, amount_minor=first.amount_minor + 1),
            *payment.allocations[1:],
        )
    else:
        (name,) = [k for k in state.ledger if k == "processor_clearing"]
        state.ledger[name] += 1
    with pytest.raises(AuditError):
        auditor.compare(state)
