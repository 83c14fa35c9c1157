"""Properties the engine must keep for every input, checked with Hypothesis on generated data.

Method: allocation, entries and the retry policy are called directly on generated inputs;
the ledger, the status tables and the network caps are checked by driving the real
engine (``execute``) with generated command sequences and a simulated clock, asserting
after every step. Expected values (status pairs, caps, delays) are written out here, not
read from the engine, so a wrong table or constant makes a test fail. Examples are
derandomized, so a run is repeatable and needs no example database.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections import defaultdict
from collections.abc import Iterable

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from payportal.engine import (
    AccountState,
    Allocation,
    AllocationResult,
    AttemptStatus,
    CancelPayment,
    ConfirmPayment,
    CreatePayment,
    DeclineClass,
    DisputePayment,
    Entry,
    Initiator,
    IssueInvoice,
    LedgerAccount,
    Line,
    OpenAccount,
    OpenInvoice,
    OutcomeKind,
    PaymentMethodRef,
    PaymentStatus,
    RecordOutcome,
    RefundPayment,
    Rejection,
    ReplacePaymentMethod,
    Result,
    RetriesExhausted,
    RetryDeferred,
    RetrySchedule,
    RetryStarted,
    ServicePeriod,
    Side,
    StartRetry,
    VoidInvoice,
    allocate,
    check_invariants,
    classify,
    evolve,
    execute,
    next_delay_ms,
    preview_allocation,
)
from payportal.engine.messages import Command, Event
from payportal.engine.retry_policy import (
    HARD_CODES,
    ONE_OFF,
    SOFT_CODES,
    SUBSCRIPTION,
    TECHNICAL,
    TECHNICAL_CODES,
    RetryPolicy,
)

S = PaymentStatus
SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: any fixed instant will do
DUE_BASE = dt.date(2026, 1, 1)

# Derandomized: the same examples on every run, and no example database to drift.
FAST = settings(
    max_examples=150, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
SLOW = settings(FAST, max_examples=40)

VISA = PaymentMethodRef(id="pm_visa", brand="visa")
MASTERCARD = PaymentMethodRef(id="pm_mc", brand="mastercard")
AMEX = PaymentMethodRef(id="pm_amex", brand="amex")
METHODS = (VISA, MASTERCARD, AMEX)

# Every status change a payment may make (docs/api.md statuses), written out by hand.
STATUS_CHANGES_ALLOWED: frozenset[tuple[PaymentStatus, PaymentStatus]] = frozenset({
    (S.processing, S.succeeded), (S.processing, S.requires_payment_method),
    (S.processing, S.retry_scheduled), (S.processing, S.failed),
    (S.retry_scheduled, S.succeeded), (S.retry_scheduled, S.requires_payment_method),
    (S.retry_scheduled, S.failed), (S.retry_scheduled, S.processing),
    (S.retry_scheduled, S.canceled),
    (S.requires_payment_method, S.processing), (S.requires_payment_method, S.canceled),
    (S.succeeded, S.partially_refunded), (S.succeeded, S.refunded), (S.succeeded, S.disputed),
    (S.partially_refunded, S.refunded), (S.partially_refunded, S.disputed),
    # Only when the attempt had errored (sent again under its key), never after a decline.
    (S.failed, S.succeeded),
    # 3-D Secure: a challenge, or an authentication decline, waits for the payer.
    (S.processing, S.requires_action), (S.retry_scheduled, S.requires_action),
    (S.requires_action, S.succeeded), (S.requires_action, S.requires_payment_method),
    (S.requires_action, S.retry_scheduled), (S.requires_action, S.failed),
    (S.requires_action, S.processing), (S.requires_action, S.canceled),
})  # fmt: skip
STATUSES_FINAL = frozenset({S.canceled, S.refunded, S.disputed})


# -- allocation -----------------------------------------------------------------------------


@st.composite
def open_invoices(draw: st.DrawFn) -> list[OpenInvoice]:
    """Invoices with clashing due dates and numbers, some already settled (remaining 0)."""
    count = draw(st.integers(0, 8))
    return [
        OpenInvoice(
            invoice_id=f"inv_{i}",
            number=draw(st.sampled_from(["A-1", "A-2", "B-1", "9", "10"])),
            due_date=DUE_BASE + dt.timedelta(days=draw(st.integers(0, 4))),
            amount_remaining_minor=draw(st.sampled_from([0, 1]) | st.integers(0, 5_000)),
        )
        for i in range(count)
    ]


@st.composite
def valid_explicit(draw: st.DrawFn, invoices: list[OpenInvoice]) -> tuple[Allocation, ...]:
    """Explicit allocations as CreatePayment accepts them: unique, open, within remaining."""
    payable = [i for i in invoices if i.amount_remaining_minor > 0]
    chosen = draw(st.lists(st.sampled_from(payable), unique=True)) if payable else []
    return tuple(
        Allocation(
            invoice_id=i.invoice_id,
            amount_minor=draw(st.integers(1, i.amount_remaining_minor)),
        )
        for i in chosen
    )


@st.composite
def any_explicit(draw: st.DrawFn, invoices: list[OpenInvoice]) -> tuple[Allocation, ...]:
    """Explicit requests allocate() must survive: unknown, settled or over-large invoices."""
    ids = [i.invoice_id for i in invoices] + ["inv_unknown"]
    chosen = draw(st.lists(st.sampled_from(ids), unique=True, max_size=4))
    return tuple(Allocation(invoice_id=x, amount_minor=draw(st.integers(1, 8_000))) for x in chosen)


def _by_invoice(result: AllocationResult) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for allocation in result.allocations:
        totals[allocation.invoice_id] += allocation.amount_minor
    return dict(totals)


@FAST
@given(data=st.data())
def test_allocation_conserves_the_payment_amount(data: st.DataObject) -> None:
    invoices = data.draw(open_invoices())
    explicit = data.draw(any_explicit(invoices))
    amount_minor = data.draw(st.integers(0, 30_000))
    result = allocate(invoices, amount_minor, explicit)
    assert sum(a.amount_minor for a in result.allocations) + result.unapplied_minor == (
        amount_minor
    )
    assert result.unapplied_minor >= 0
    assert all(a.amount_minor > 0 for a in result.allocations)


@FAST
@given(data=st.data())
def test_allocation_never_over_allocates_or_touches_a_settled_invoice(data: st.DataObject) -> None:
    invoices = data.draw(open_invoices())
    explicit = data.draw(any_explicit(invoices))
    result = allocate(invoices, data.draw(st.integers(0, 30_000)), explicit)
    remaining = {i.invoice_id: i.amount_remaining_minor for i in invoices}
    ids = [a.invoice_id for a in result.allocations]
    assert len(ids) == len(set(ids)), "one allocation per invoice"
    for invoice_id, total_minor in _by_invoice(result).items():
        assert invoice_id in remaining, "money went to an invoice that was not offered"
        assert remaining[invoice_id] > 0, "money went to an invoice with nothing remaining"
        assert total_minor <= remaining[invoice_id]


@FAST
@given(data=st.data())
def test_allocation_is_deterministic_whatever_the_invoice_order(data: st.DataObject) -> None:
    invoices = data.draw(open_invoices())
    explicit = data.draw(any_explicit(invoices))
    amount_minor = data.draw(st.integers(0, 30_000))
    shuffled = data.draw(st.permutations(invoices))
    first = allocate(invoices, amount_minor, explicit)
    assert allocate(invoices, amount_minor, explicit) == first
    assert allocate(shuffled, amount_minor, explicit) == first


@FAST
@given(data=st.data())
def test_explicit_allocations_are_honoured_first(data: st.DataObject) -> None:
    invoices = data.draw(open_invoices())
    explicit = data.draw(valid_explicit(invoices))
    requested_minor = sum(a.amount_minor for a in explicit)
    amount_minor = requested_minor + data.draw(st.integers(0, 20_000))
    got = _by_invoice(allocate(invoices, amount_minor, explicit))
    for request in explicit:
        assert got.get(request.invoice_id, 0) >= request.amount_minor, request


@FAST
@given(data=st.data())
def test_the_rest_goes_to_the_oldest_due_invoice_first(data: st.DataObject) -> None:
    invoices = data.draw(open_invoices())
    explicit = data.draw(valid_explicit(invoices))
    requested = {a.invoice_id: a.amount_minor for a in explicit}
    amount_minor = sum(requested.values()) + data.draw(st.integers(0, 20_000))
    result = allocate(invoices, amount_minor, explicit)
    got = _by_invoice(result)
    # docs/api.md: oldest due date first, then invoice number (then id, to make the order total).
    order = sorted(invoices, key=lambda i: (i.due_date, i.number, i.invoice_id))
    still_owed_before = False
    for invoice in order:
        rest_minor = got.get(invoice.invoice_id, 0) - requested.get(invoice.invoice_id, 0)
        assert rest_minor >= 0
        if rest_minor > 0:
            assert not still_owed_before, "a later invoice was paid before an earlier one"
        left_minor = invoice.amount_remaining_minor - got.get(invoice.invoice_id, 0)
        still_owed_before = still_owed_before or left_minor > 0
    if result.unapplied_minor > 0:
        assert not still_owed_before, "credit was left while an invoice still owed money"


# -- the ledger -----------------------------------------------------------------------------


@FAST
@given(
    lines=st.lists(
        st.builds(
            Line,
            account=st.sampled_from(LedgerAccount),
            side=st.sampled_from(Side),
            amount_minor=st.integers(1, 10_000),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_an_unbalanced_entry_cannot_be_constructed(lines: list[Line]) -> None:
    debits_minor = sum(x.amount_minor for x in lines if x.side is Side.debit)
    credits_minor = sum(x.amount_minor for x in lines if x.side is Side.credit)
    if debits_minor == credits_minor:
        assert Entry(memo="balanced", lines=tuple(lines)).lines == tuple(lines)
    else:
        with pytest.raises(AssertionError):
            Entry(memo="unbalanced", lines=tuple(lines))


@FAST
@given(amount_minor=st.integers(-10_000, 0), account=st.sampled_from(LedgerAccount))
def test_an_entry_line_of_zero_or_less_cannot_be_constructed(
    amount_minor: int, account: LedgerAccount
) -> None:
    lines = (
        Line(account=account, side=Side.debit, amount_minor=amount_minor),
        Line(account=account, side=Side.credit, amount_minor=amount_minor),
    )
    with pytest.raises(AssertionError):
        Entry(memo="non-positive", lines=lines)


def _entry_balances(posted: Entry) -> bool:
    debits_minor = sum(x.amount_minor for x in posted.lines if x.side is Side.debit)
    credits_minor = sum(x.amount_minor for x in posted.lines if x.side is Side.credit)
    return debits_minor == credits_minor and all(x.amount_minor > 0 for x in posted.lines)


DECLINE_CODES = (
    "insufficient_funds", "try_again_later", "51", "do_not_honor", "expired_card",
    "stolen_card", "processing_error", "something_new", "authentication_required", None,
)  # fmt: skip
ADVICE_CODES = (None, "02", "03", "21", "24", "25", "26", "27", "28", "29", "30")
JOURNAL_DECODER = msgspec.msgpack.Decoder(list[Event])
# Mostly aim a command at a payment it can move; sometimes at any, to exercise refusals.
AIMED = st.sampled_from([True, True, True, False])


class AccountMachine(RuleBasedStateMachine):
    """One account driven by random commands; every step is audited by ``_run``."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(0)
        self.now_ms = T0_MS
        self.state: AccountState | None = None
        self.ids = itertools.count(1)
        # An auditor's ledger, rebuilt only from the entries each step reports.
        self.balances: dict[LedgerAccount, int] = defaultdict(int)
        self.status_changes: list[tuple[str, PaymentStatus, PaymentStatus]] = []
        # A replica rebuilt only from the journal, as a shard recovers: every event is
        # encoded and decoded as it would be on disk, then replayed with ``evolve``.
        self.replica: AccountState | None = None
        self._run(OpenAccount(account_id="acct_prop", currency="USD"))

    @property
    def account(self) -> AccountState:
        assert self.state is not None
        return self.state

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    def _pick(self, ids: Iterable[str], index: int, missing: str) -> str:
        ordered = sorted(ids)
        return ordered[index % len(ordered)] if ordered else missing

    def _pick_payment(self, index: int, aimed: bool, statuses: Iterable[PaymentStatus]) -> str:
        """A payment in one of ``statuses`` when ``aimed`` and there is one, else any."""
        wanted = set(statuses)
        payments = self.account.payments.values()
        candidates = [p.payment_id for p in payments if p.status in wanted] if aimed else []
        return self._pick(candidates or self.account.payments, index, "pay_missing")

    def _run(self, command: Command) -> None:
        before_statuses = (
            {} if self.state is None
            else {pid: p.status for pid, p in self.state.payments.items()}
        )  # fmt: skip
        before_attempts = (
            {} if self.state is None
            else {pid: p.current_attempt.status for pid, p in self.state.payments.items()}
        )  # fmt: skip
        before = msgspec.msgpack.encode(self.state)
        preview = self._preview_for(command)
        self.state, decision, posted = execute(self.state, command, self.now_ms, self.rng)
        assert self.state is not None
        for event in JOURNAL_DECODER.decode(msgspec.msgpack.encode(list(decision.events))):
            self.replica, _ = evolve(self.replica, event)
        if decision.outcome.result is not Result.ok:
            assert not decision.events, decision
            assert not posted
            assert msgspec.msgpack.encode(self.state) == before, "a refusal changed the state"
        for entry_posted in posted:
            assert _entry_balances(entry_posted), entry_posted
            for line in entry_posted.lines:
                signed = line.amount_minor if line.side is Side.debit else -line.amount_minor
                self.balances[line.account] += signed
        for payment_id, payment in self.state.payments.items():
            status_before = before_statuses.get(payment_id)
            if status_before is None:
                assert payment.status is S.processing, "a new payment starts processing"
            elif status_before is not payment.status:
                assert status_before not in STATUSES_FINAL, (status_before, command)
                if status_before is S.failed:
                    assert before_attempts[payment_id] is AttemptStatus.errored, command
                self.status_changes.append((payment_id, status_before, payment.status))
                assert (status_before, payment.status) in STATUS_CHANGES_ALLOWED, (
                    status_before, payment.status, command,
                )  # fmt: skip
        if preview is not None and decision.outcome.result is Result.ok:
            payment_id, expected = preview
            assert self.account.payments[payment_id].allocations == expected.allocations
            assert self.account.payments[payment_id].amount_unapplied_minor == (
                expected.unapplied_minor
            )

    def _preview_for(self, command: Command) -> tuple[str, AllocationResult] | None:
        """The split preview_allocation promises, when ``command`` may capture a payment."""
        if not isinstance(command, RecordOutcome) or command.outcome is not OutcomeKind.succeeded:
            return None
        payment = self.account.payments.get(command.payment_id)
        if payment is None:
            return None
        expected = preview_allocation(
            self.account, payment.amount_minor, payment.requested_allocations
        )
        return payment.payment_id, expected

    @invariant()
    def ledger_balances(self) -> None:
        assert sum(self.account.ledger.values()) == 0, self.account.ledger
        nonzero = {k: v for k, v in self.balances.items() if v}
        assert nonzero == {k: v for k, v in self.account.ledger.items() if v}
        check_invariants(self.account)

    @invariant()
    def journal_replay_rebuilds_the_state(self) -> None:
        assert msgspec.msgpack.encode(self.replica) == msgspec.msgpack.encode(self.state)

    @rule(
        amount_minor=st.integers(1, 5_000),
        due_days=st.integers(0, 60),
        with_period=st.booleans(),
    )
    def issue_invoice(self, amount_minor: int, due_days: int, with_period: bool) -> None:
        due = DUE_BASE + dt.timedelta(days=due_days)
        period = ServicePeriod(start=due, end=due + dt.timedelta(days=30)) if with_period else None
        invoice_id = self._id("inv")
        self._run(IssueInvoice(
            account_id="acct_prop", invoice_id=invoice_id, number=invoice_id,
            amount_minor=amount_minor, currency="USD", due_date=due, service_period=period,
        ))  # fmt: skip

    @precondition(lambda self: bool(self.account.invoices))
    @rule(index=st.integers(0, 50))
    def void_invoice(self, index: int) -> None:
        invoice_id = self._pick(self.account.invoices, index, "inv_missing")
        self._run(VoidInvoice(account_id="acct_prop", invoice_id=invoice_id))

    @rule(
        amount_minor=st.integers(1, 8_000),
        method=st.sampled_from(METHODS),
        key=st.integers(0, 20),
        explicit=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 1_000)), max_size=2),
        fits=st.sampled_from([True, True, True, False]),
        initiator=st.sampled_from(Initiator),
        schedule=st.sampled_from(RetrySchedule),
    )
    def create_payment(
        self, amount_minor: int, method: PaymentMethodRef, key: int,
        explicit: list[tuple[int, int]], fits: bool, initiator: Initiator,
        schedule: RetrySchedule,
    ) -> None:  # fmt: skip
        # Mostly allocations the engine accepts (a share of an open invoice's remaining
        # amount); sometimes raw ones, so its refusals are exercised too.
        open_ids = [i.invoice_id for i in self.account.open_invoices()]
        requested: dict[str, int] = {}
        for index, permille in explicit:
            if fits and open_ids:
                invoice_id = open_ids[index % len(open_ids)]
                remaining_minor = self.account.invoices[invoice_id].amount_remaining_minor
                requested[invoice_id] = max(1, remaining_minor * permille // 1_000)
            else:
                requested[self._pick(self.account.invoices, index, "inv_missing")] = permille
        if fits:
            amount_minor = max(amount_minor, sum(requested.values()))
        allocations = tuple(Allocation(invoice_id=k, amount_minor=v) for k, v in requested.items())
        self._run(CreatePayment(
            account_id="acct_prop", payment_id=self._id("pay"), attempt_id=self._id("att"),
            idempotency_key=f"key_{key}", amount_minor=amount_minor, currency="USD",
            payment_method=method, allocations=allocations, initiator=initiator,
            schedule=schedule,
        ))  # fmt: skip

    @precondition(lambda self: bool(self.account.payments))
    @rule(
        index=st.integers(0, 50),
        aimed=AIMED,
        older_attempt=st.booleans(),
        outcome=st.sampled_from(OutcomeKind),
        decline_code=st.sampled_from(DECLINE_CODES),
        visa_category=st.sampled_from([None, 1, 2, 3, 4]),
        advice_code=st.sampled_from(ADVICE_CODES),
        amount_off=st.sampled_from([None, None, None, 0, 1]),
    )
    def record_outcome(
        self, index: int, aimed: bool, older_attempt: bool, outcome: OutcomeKind,
        decline_code: str | None, visa_category: int | None, advice_code: str | None,
        amount_off: int | None,
    ) -> None:  # fmt: skip
        payment_id = self._pick_payment(
            index, aimed, [S.processing, S.retry_scheduled, S.requires_action]
        )
        payment = self.account.payments.get(payment_id)
        attempt_id = "att_missing"
        amount_minor = None
        if payment is not None:
            attempts = payment.attempts
            attempt_id = (attempts[0] if older_attempt else attempts[-1]).attempt_id
            amount_minor = None if amount_off is None else payment.amount_minor + amount_off
        self._run(RecordOutcome(
            account_id="acct_prop", payment_id=payment_id, attempt_id=attempt_id,
            outcome=outcome, charge_id=f"ch_{attempt_id}",
            decline_code=decline_code if outcome is not OutcomeKind.succeeded else None,
            visa_category=visa_category, advice_code=advice_code, amount_minor=amount_minor,
        ))  # fmt: skip

    @precondition(lambda self: bool(self.account.payments))
    @rule(index=st.integers(0, 50), aimed=AIMED, when_due=st.booleans())
    def start_retry(self, index: int, aimed: bool, when_due: bool) -> None:
        payment_id = self._pick_payment(index, aimed, [S.retry_scheduled])
        payment = self.account.payments.get(payment_id)
        if when_due and payment is not None and payment.next_retry_at_ms is not None:
            self.now_ms = max(self.now_ms, payment.next_retry_at_ms)
        self._run(StartRetry(
            account_id="acct_prop", payment_id=payment_id, attempt_id=self._id("att"),
        ))  # fmt: skip

    @precondition(lambda self: bool(self.account.payments))
    @rule(index=st.integers(0, 50), aimed=AIMED, method=st.sampled_from(METHODS))
    def replace_payment_method(self, index: int, aimed: bool, method: PaymentMethodRef) -> None:
        payment_id = self._pick_payment(index, aimed, [S.requires_payment_method,
                                                       S.requires_action])  # fmt: skip
        self._run(ReplacePaymentMethod(
            account_id="acct_prop", payment_id=payment_id, attempt_id=self._id("att"),
            payment_method=method,
        ))  # fmt: skip

    @precondition(lambda self: bool(self.account.payments))
    @rule(index=st.integers(0, 50), aimed=AIMED)
    def confirm_payment(self, index: int, aimed: bool) -> None:
        payment_id = self._pick_payment(index, aimed, [S.requires_action])
        self._run(ConfirmPayment(
            account_id="acct_prop", payment_id=payment_id, attempt_id=self._id("att"),
        ))  # fmt: skip

    @precondition(lambda self: bool(self.account.payments))
    @rule(index=st.integers(0, 50), aimed=AIMED)
    def cancel_payment(self, index: int, aimed: bool) -> None:
        wanted = [S.retry_scheduled, S.requires_payment_method, S.requires_action]
        payment_id = self._pick_payment(index, aimed, wanted)
        self._run(CancelPayment(account_id="acct_prop", payment_id=payment_id))

    @precondition(lambda self: bool(self.account.payments))
    @rule(
        index=st.integers(0, 50),
        aimed=AIMED,
        amount_minor=st.integers(1, 9_000),
        refund=st.integers(0, 30),
    )
    def refund_payment(self, index: int, aimed: bool, amount_minor: int, refund: int) -> None:
        wanted = [S.succeeded, S.partially_refunded]
        payment_id = self._pick_payment(index, aimed, wanted)
        payment = self.account.payments.get(payment_id)
        if payment is not None and amount_minor > payment.amount_minor:
            # Often the exact rest, so full refunds happen and not only refusals.
            amount_minor = max(1, payment.amount_minor - payment.amount_refunded_minor)
        self._run(RefundPayment(
            account_id="acct_prop", payment_id=payment_id, refund_id=f"re_{refund}",
            amount_minor=amount_minor,
        ))  # fmt: skip

    @precondition(lambda self: bool(self.account.payments))
    @rule(index=st.integers(0, 50), aimed=AIMED)
    def dispute_payment(self, index: int, aimed: bool) -> None:
        wanted = [S.succeeded, S.partially_refunded]
        payment_id = self._pick_payment(index, aimed, wanted)
        self._run(DisputePayment(account_id="acct_prop", payment_id=payment_id))

    @rule(ms=st.integers(0, 3 * DAY_MS))
    def advance_clock(self, ms: int) -> None:
        self.now_ms += ms


def test_random_command_sequences_keep_the_ledger_balanced_and_statuses_legal() -> None:
    run_state_machine_as_test(
        AccountMachine, settings=settings(FAST, max_examples=250, stateful_step_count=50)
    )


# -- the retry policy -----------------------------------------------------------------------


class Simulation:
    """One account, a clock and a seeded random source, for retry-policy properties."""

    def __init__(self, seed: int = 0) -> None:
        self.now_ms = T0_MS
        self.rng = random.Random(seed)
        self.ids = itertools.count(1)
        self.state: AccountState | None = None
        self.events: list[Event] = []
        self.run(OpenAccount(account_id="acct_sim", currency="USD"))

    @property
    def account(self) -> AccountState:
        assert self.state is not None
        return self.state

    def run(self, command: Command) -> Result:
        self.state, decision, _ = execute(self.state, command, self.now_ms, self.rng)
        assert self.state is not None
        check_invariants(self.state)
        self.events.extend(decision.events)
        return decision.outcome.result

    def create(
        self, method: PaymentMethodRef, initiator: Initiator = Initiator.customer,
        schedule: RetrySchedule = RetrySchedule.one_off,
    ) -> str:  # fmt: skip
        payment_id = f"pay_{next(self.ids)}"
        result = self.run(CreatePayment(
            account_id="acct_sim", payment_id=payment_id, attempt_id=f"att_{next(self.ids)}",
            idempotency_key=f"key_{payment_id}", amount_minor=1_000, currency="USD",
            payment_method=method, initiator=initiator, schedule=schedule,
        ))  # fmt: skip
        assert result is Result.ok
        return payment_id

    def decline(self, payment_id: str, decline_code: str | None, **kw: object) -> None:
        attempt_id = self.account.payments[payment_id].current_attempt.attempt_id
        result = self.run(RecordOutcome(
            account_id="acct_sim", payment_id=payment_id, attempt_id=attempt_id,
            outcome=OutcomeKind.declined, decline_code=decline_code,
            **kw,  # type: ignore[arg-type]
        ))  # fmt: skip
        assert result is Result.ok

    def start_retry(self, payment_id: str) -> Result:
        return self.run(StartRetry(
            account_id="acct_sim", payment_id=payment_id, attempt_id=f"att_{next(self.ids)}",
        ))  # fmt: skip

    def retry_due(self) -> tuple[int, str] | None:
        due = [
            (p.next_retry_at_ms, p.payment_id) for p in self.account.payments.values()
            if p.status is S.retry_scheduled and p.next_retry_at_ms is not None
        ]  # fmt: skip
        return min(due) if due else None


HARD_SIGNALS = st.one_of(
    st.fixed_dictionaries({
        "decline_code": st.sampled_from(sorted(HARD_CODES)),
        "visa_category": st.sampled_from([None, 1, 2, 3, 4]),
        "advice_code": st.sampled_from(ADVICE_CODES),
    }),
    # A stop signal beside a code that alone would be retried.
    st.fixed_dictionaries({
        "decline_code": st.sampled_from([*sorted(SOFT_CODES | TECHNICAL_CODES), None]),
        "visa_category": st.just(1),
        "advice_code": st.sampled_from(ADVICE_CODES),
    }),
    st.fixed_dictionaries({
        "decline_code": st.sampled_from([*sorted(SOFT_CODES | TECHNICAL_CODES), None]),
        "visa_category": st.sampled_from([None, 1, 2, 3, 4]),
        "advice_code": st.sampled_from(["03", "21"]),
    }),
)  # fmt: skip


@pytest.mark.parametrize("decline_code", sorted(HARD_CODES))
def test_every_hard_decline_code_asks_for_another_payment_method(decline_code: str) -> None:
    sim = Simulation()
    payment_id = sim.create(VISA)
    sim.decline(payment_id, decline_code)
    payment = sim.account.payments[payment_id]
    assert payment.status is S.requires_payment_method
    assert payment.next_retry_at_ms is None


@FAST
@given(
    signal=HARD_SIGNALS,
    soft_declines_before=st.integers(0, 2),
    method=st.sampled_from(METHODS),
    schedule=st.sampled_from(RetrySchedule),
    initiator=st.sampled_from(Initiator),
)
def test_hard_decline_is_never_retried(
    signal: dict[str, object], soft_declines_before: int, method: PaymentMethodRef,
    schedule: RetrySchedule, initiator: Initiator,
) -> None:  # fmt: skip
    sim = Simulation()
    payment_id = sim.create(method, initiator, schedule)
    for _ in range(soft_declines_before):
        sim.decline(payment_id, "insufficient_funds")
        due = sim.retry_due()
        assert due is not None
        sim.now_ms = due[0]
        assert sim.start_retry(payment_id) is Result.ok
    sim.decline(payment_id, **signal)  # type: ignore[arg-type]
    payment = sim.account.payments[payment_id]
    assert payment.status is S.requires_payment_method
    assert payment.next_retry_at_ms is None
    retries_before = sum(isinstance(e, RetryStarted) for e in sim.events)
    for days in (0, 1, 10, 60):
        sim.now_ms = payment.created_at_ms + days * DAY_MS
        assert sim.start_retry(payment_id) is Result.rejected
    assert sum(isinstance(e, RetryStarted) for e in sim.events) == retries_before
    assert sim.account.payments[payment_id].status is S.requires_payment_method


CODES = st.sampled_from(
    [*sorted(HARD_CODES | SOFT_CODES | TECHNICAL_CODES), "something_new", "05", None]
)
CATEGORIES = st.sampled_from([None, 1, 2, 3, 4])
ADVICE = st.sampled_from(ADVICE_CODES)


@FAST
@given(code=CODES, visa_category=CATEGORIES, advice_code=ADVICE)
def test_stop_signals_win_over_every_code(
    code: str | None, visa_category: int | None, advice_code: str | None
) -> None:
    got = classify(code, visa_category=visa_category, advice_code=advice_code)
    if visa_category == 1 or advice_code in ("03", "21"):
        assert got is DeclineClass.hard
    elif code in TECHNICAL_CODES:
        assert got is DeclineClass.technical  # the processor failed, not the card
    elif code in HARD_CODES:
        assert got is DeclineClass.hard  # a hard code beats a retryable category
    elif code in SOFT_CODES or visa_category in (2, 3):
        assert got is DeclineClass.soft
    else:
        assert got is DeclineClass.hard  # unknown: never guess "retry"


# The backoff each policy promises after attempt n fails (docs/api.md; none after the last).
BACKOFF_BASE_MS: dict[str, tuple[int, ...]] = {
    "one_off": (6 * HOUR_MS, 18 * HOUR_MS, 54 * HOUR_MS),
    "subscription": (12 * HOUR_MS, DAY_MS) + (2 * DAY_MS,) * 5,
    "technical": (30 * SECOND_MS, 2 * MINUTE_MS, 8 * MINUTE_MS),
}
POLICIES: dict[str, RetryPolicy] = {
    "one_off": ONE_OFF, "subscription": SUBSCRIPTION, "technical": TECHNICAL,
}  # fmt: skip
JITTER_PERMILLE = 100  # ±10 %


@FAST
@given(name=st.sampled_from(sorted(POLICIES)), attempt=st.integers(1, 12), seed=st.integers())
def test_backoff_is_within_jitter_and_stops_after_attempts_max(
    name: str, attempt: int, seed: int
) -> None:
    delay_ms = next_delay_ms(POLICIES[name], attempt, random.Random(seed))
    bases = BACKOFF_BASE_MS[name]
    if attempt > len(bases):
        assert delay_ms is None
        return
    assert delay_ms is not None
    base_ms = bases[attempt - 1]
    assert abs(delay_ms - base_ms) <= base_ms * JITTER_PERMILLE // 1000
    assert delay_ms == next_delay_ms(POLICIES[name], attempt, random.Random(seed))


def test_policies_allow_the_documented_attempts() -> None:
    assert (ONE_OFF.attempts_max, ONE_OFF.window_ms) == (4, 7 * DAY_MS)
    assert (SUBSCRIPTION.attempts_max, SUBSCRIPTION.window_ms) == (8, 14 * DAY_MS)


# Card-network caps on reattempts per card (docs/api.md), as (window, most allowed).
NETWORK_CAPS_EXPECTED: dict[str, tuple[tuple[int, int], ...]] = {
    "visa": ((30 * DAY_MS, 20),),  # counted per initiator since May 2025
    "mastercard": ((DAY_MS, 10), (30 * DAY_MS, 35)),
    "amex": ((DAY_MS, 10), (30 * DAY_MS, 20)),
}
ADVICE_WAIT_MS: dict[str, int] = {
    "24": HOUR_MS, "25": DAY_MS, "26": 2 * DAY_MS, "27": 4 * DAY_MS,
    "28": 6 * DAY_MS, "29": 8 * DAY_MS, "30": 10 * DAY_MS,
}  # fmt: skip
POLICY_CAPS: dict[RetrySchedule, tuple[int, int]] = {
    RetrySchedule.one_off: (4, 7 * DAY_MS),
    RetrySchedule.subscription: (8, 14 * DAY_MS),
}
SIMULATED_MS = 30 * DAY_MS


def _window_peak(times_ms: list[int], window_ms: int) -> int:
    """The most reattempts in any window (t - window, t], over every t."""
    ordered = sorted(times_ms)
    peak = 0
    start = 0
    for end, t_ms in enumerate(ordered):
        while ordered[start] <= t_ms - window_ms:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


Arrival = tuple[int, Initiator, RetrySchedule]  # (offset from T0, initiator, schedule)
Workload = tuple[PaymentMethodRef, list[Arrival], list[str | None], int]


def _simulate_soft_declines(
    sim: Simulation, method: PaymentMethodRef, arrivals: list[Arrival],
    advice_codes: list[str | None],
) -> None:  # fmt: skip
    """Payments arrive over time on one card and every attempt is declined softly (Mastercard
    declines cycle through ``advice_codes``); a clock runs each retry when it falls due,
    until no payment has a retry left."""
    pending = sorted(arrivals, key=lambda a: a[0])
    advice = itertools.cycle(advice_codes)
    decline_code = {"visa": "51", "mastercard": "insufficient_funds"}.get(
        method.brand, "try_again_later"
    )

    def decline(payment_id: str) -> None:
        code = next(advice) if method is MASTERCARD else None
        category = 2 if method is VISA else None
        sim.decline(payment_id, decline_code, visa_category=category, advice_code=code)

    for _ in range(10_000):
        due = sim.retry_due()
        if pending and (due is None or T0_MS + pending[0][0] <= due[0]):
            offset_ms, initiator, schedule = pending.pop(0)
            sim.now_ms = T0_MS + offset_ms
            decline(sim.create(method, initiator, schedule))
            continue
        if due is None:
            break
        sim.now_ms, payment_id = due
        events_before = len(sim.events)
        assert sim.start_retry(payment_id) is Result.ok
        (event,) = sim.events[events_before:]
        if isinstance(event, RetryStarted):
            decline(payment_id)
        else:
            assert isinstance(event, RetryDeferred | RetriesExhausted), event
    else:
        raise AssertionError("the simulated clock never ran out of work")


@st.composite
def card_workloads(draw: st.DrawFn) -> Workload:
    method = draw(st.sampled_from(METHODS))
    count = draw(st.integers(5, 60))
    # Bursts (many payments within an hour) stress the daily caps; spread ones the monthly.
    burst = draw(st.booleans())
    span_ms = HOUR_MS if burst else SIMULATED_MS - 1
    arrivals = [
        (
            draw(st.integers(0, span_ms)),
            draw(st.sampled_from(Initiator)),
            draw(st.sampled_from(RetrySchedule)),
        )
        for _ in range(count)
    ]
    advice_codes = draw(st.lists(st.sampled_from([None, *ADVICE_WAIT_MS]), min_size=1))
    return method, arrivals, advice_codes, draw(st.integers(0, 2**32))


@SLOW
@given(workload=card_workloads())
def test_no_card_exceeds_the_network_caps_over_thirty_days(
    workload: Workload,
) -> None:
    method, arrivals, advice_codes, seed = workload
    sim = Simulation(seed)
    _simulate_soft_declines(sim, method, arrivals, advice_codes)
    payments = sim.account.payments
    reattempts = [
        (e.at_ms, payments[e.payment_id].initiator)
        for e in sim.events if isinstance(e, RetryStarted) and not e.resend
    ]  # fmt: skip
    assert all(not e.resend for e in sim.events if isinstance(e, RetryStarted))
    if method is VISA:
        groups = [[t for t, who in reattempts if who is i] for i in Initiator]
    else:
        groups = [[t for t, _ in reattempts]]
    for times_ms in groups:
        for window_ms, most in NETWORK_CAPS_EXPECTED[method.brand]:
            peak = _window_peak(times_ms, window_ms)
            assert peak <= most, (method.brand, window_ms // HOUR_MS, peak)
    assert all(p.status is S.failed for p in payments.values())


@SLOW
@given(workload=card_workloads())
def test_retries_respect_mastercard_advice_waits_and_the_policy_caps(
    workload: Workload,
) -> None:
    _, arrivals, advice_codes, seed = workload
    sim = Simulation(seed)
    _simulate_soft_declines(sim, MASTERCARD, arrivals, advice_codes)
    for payment in sim.account.payments.values():
        attempts_max, window_ms = POLICY_CAPS[payment.schedule]
        assert len(payment.attempts) <= attempts_max, payment.payment_id
        for attempt in payment.attempts:
            assert attempt.created_at_ms - payment.created_at_ms <= window_ms
        # Each attempt after a decline waits at least what that decline's advice code asks.
        for previous, following in itertools.pairwise(payment.attempts):
            wait_ms = ADVICE_WAIT_MS.get(previous.advice_code or "", 0)
            assert previous.advice_code is None or previous.advice_code in ADVICE_WAIT_MS
            declined_at_ms = previous.created_at_ms  # the simulation declines at once
            assert following.created_at_ms >= declined_at_ms + wait_ms, (
                previous.advice_code, following.created_at_ms - declined_at_ms,
            )  # fmt: skip


def test_a_burst_on_one_mastercard_is_held_to_ten_reattempts_a_day() -> None:
    """The caps bind, so the properties above are not passing vacuously."""
    sim = Simulation()
    arrivals = [(i * MINUTE_MS, Initiator.customer, RetrySchedule.subscription) for i in range(40)]
    _simulate_soft_declines(sim, MASTERCARD, arrivals, [None])
    times_ms = [e.at_ms for e in sim.events if isinstance(e, RetryStarted)]
    assert _window_peak(times_ms, DAY_MS) == 10
    assert _window_peak(times_ms, 30 * DAY_MS) == 35
    assert any(isinstance(e, RetryDeferred) for e in sim.events)
    assert any(isinstance(e, RetriesExhausted) for e in sim.events)


# -- idempotency ----------------------------------------------------------------------------


@st.composite
def payment_requests(draw: st.DrawFn) -> tuple[Simulation, CreatePayment]:
    sim = Simulation()
    invoice_ids = []
    for n in range(draw(st.integers(0, 3))):
        invoice_id = f"inv_{n}"
        result = sim.run(IssueInvoice(
            account_id="acct_sim", invoice_id=invoice_id, number=invoice_id,
            amount_minor=draw(st.integers(1, 5_000)), currency="USD",
            due_date=DUE_BASE + dt.timedelta(days=n),
        ))  # fmt: skip
        assert result is Result.ok
        invoice_ids.append(invoice_id)
    chosen = draw(st.lists(st.sampled_from(invoice_ids), unique=True)) if invoice_ids else []
    allocations = tuple(
        Allocation(
            invoice_id=x,
            amount_minor=draw(st.integers(1, sim.account.invoices[x].amount_remaining_minor)),
        )
        for x in chosen
    )
    command = CreatePayment(
        account_id="acct_sim", payment_id="pay_first", attempt_id="att_first",
        idempotency_key=draw(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                     min_size=1, max_size=40)),
        amount_minor=sum(a.amount_minor for a in allocations) + draw(st.integers(1, 5_000)),
        currency="USD", payment_method=draw(st.sampled_from(METHODS)), allocations=allocations,
        initiator=draw(st.sampled_from(Initiator)), schedule=draw(st.sampled_from(RetrySchedule)),
    )  # fmt: skip
    return sim, command


AFTERWARDS = st.sampled_from([None, OutcomeKind.succeeded, OutcomeKind.declined])


@FAST
@given(request=payment_requests(), new_ids=st.booleans(), afterwards=AFTERWARDS)
def test_the_same_create_payment_twice_returns_the_original_payment(
    request: tuple[Simulation, CreatePayment], new_ids: bool, afterwards: OutcomeKind | None
) -> None:
    sim, command = request
    assert sim.run(command) is Result.ok
    if afterwards is not None:
        assert sim.run(RecordOutcome(
            account_id="acct_sim", payment_id="pay_first", attempt_id="att_first",
            outcome=afterwards, decline_code="insufficient_funds"
            if afterwards is OutcomeKind.declined else None,
        )) is Result.ok  # fmt: skip
    again = msgspec.structs.replace(command, payment_id="pay_again", attempt_id="att_again")
    before = msgspec.msgpack.encode(sim.state)
    state, decision, posted = execute(sim.state, again if new_ids else command, sim.now_ms,
                                      sim.rng)  # fmt: skip
    assert decision.outcome.result is Result.exists
    assert decision.outcome.rejection is None
    assert decision.outcome.payment_id == "pay_first"
    assert decision.events == ()
    assert posted == []
    assert msgspec.msgpack.encode(state) == before


CHANGED_FIELD_REJECTION: dict[str, Rejection] = {
    "amount_minor": Rejection.exists_with_different_amount,
    "currency": Rejection.exists_with_different_currency,
    "payment_method": Rejection.exists_with_different_payment_method,
    "allocations": Rejection.exists_with_different_allocations,
    # Both change how the payment is retried (Visa's per-initiator counters, policy caps).
    "initiator": Rejection.exists_with_different_initiator,
    "schedule": Rejection.exists_with_different_schedule,
    "description": Rejection.exists_with_different_description,
}


@FAST
@given(request=payment_requests(), field=st.sampled_from(sorted(CHANGED_FIELD_REJECTION)),
       data=st.data())  # fmt: skip
def test_the_same_key_with_one_field_changed_is_rejected_naming_that_field(
    request: tuple[Simulation, CreatePayment], field: str, data: st.DataObject
) -> None:
    sim, command = request
    assert sim.run(command) is Result.ok
    changed: object
    if field == "amount_minor":
        changed = command.amount_minor + data.draw(st.integers(1, 1_000))
    elif field == "currency":
        changed = data.draw(st.sampled_from(["EUR", "GBP", "JPY"]))
    elif field == "payment_method":
        changed = data.draw(st.sampled_from([m for m in METHODS if m != command.payment_method]))
    elif field == "initiator":
        changed = next(i for i in Initiator if i is not command.initiator)
    elif field == "schedule":
        changed = next(s for s in RetrySchedule if s is not command.schedule)
    elif field == "description":
        changed = (command.description or "") + data.draw(st.text("ab ", min_size=1, max_size=5))
    else:
        changed = command.allocations[:-1] if command.allocations else (
            Allocation(invoice_id="inv_other", amount_minor=1),
        )  # fmt: skip
    again = msgspec.structs.replace(command, payment_id="pay_again", **{field: changed})
    before = msgspec.msgpack.encode(sim.state)
    state, decision, _ = execute(sim.state, again, sim.now_ms, sim.rng)
    assert decision.outcome.result is Result.rejected
    assert decision.outcome.rejection is CHANGED_FIELD_REJECTION[field]
    assert decision.outcome.payment_id == "pay_first"
    assert decision.events == ()
    assert msgspec.msgpack.encode(state) == before


# -- captures are never lost ----------------------------------------------------------------


@FAST
@given(errors=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_a_capture_reported_for_an_errored_attempt_is_always_recorded(
    errors: int, seed: int
) -> None:
    # An errored attempt is sent again under its processor idempotency key and may yet
    # capture (the attempt table allows errored -> succeeded). Whenever its success is
    # reported, the money was taken, so the engine must record it: refusing it leaves a
    # charge without a payment.
    sim = Simulation(seed)
    payment_id = sim.create(VISA)
    attempt_id = sim.account.payments[payment_id].current_attempt.attempt_id
    for _ in range(errors):
        assert sim.run(RecordOutcome(
            account_id="acct_sim", payment_id=payment_id, attempt_id=attempt_id,
            outcome=OutcomeKind.errored, decline_code="processing_error",
        )) is Result.ok  # fmt: skip
        due = sim.retry_due()
        if due is None:
            break
        sim.now_ms = due[0]
        assert sim.start_retry(payment_id) is Result.ok
    sim.now_ms += MINUTE_MS
    late = sim.run(RecordOutcome(
        account_id="acct_sim", payment_id=payment_id, attempt_id=attempt_id,
        outcome=OutcomeKind.succeeded, charge_id="ch_late",
    ))  # fmt: skip
    assert late is Result.ok
    assert sim.account.payments[payment_id].status is S.succeeded
    assert sim.account.ledger[LedgerAccount.processor_clearing] == 1_000
