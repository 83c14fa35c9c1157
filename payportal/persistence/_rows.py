"""Rows from account changes: the journal and checkpoints (the group commit) and the read
models (the projection), as tuples in each table's column order.

Pure and synchronous, so a shard builds every row of a commit — and the snapshot of the
read models it will project — from the live account state before its first ``await``;
the state may move on while the commit is in flight. Read models are rebuilt for the ids
the events touched (an event names its ``invoice_id``, ``payment_id`` and the invoices
it allocates to); the account row is rewritten on every change. A ``Projection`` keeps
only the newest row per key, so many commits' worth of changes to one hot account
becomes one upsert.

A checkpoint is split in two, so its cost follows what changed rather than everything
the account ever had: the account's core (its state without ``payments`` and the two
maps rebuilt from them, ``idempotency`` and ``refunds``) and one row per payment that
changed since the account's previous checkpoint. The caller says which payments those
are (``AccountChange.checkpoint_payments``); the loader puts the pieces back together.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from payportal.engine import (
    AccountState,
    AttemptDeclined,
    AttemptErrored,
    AttemptRequiresAction,
    AttemptStatus,
    AttemptSucceeded,
    ChargeSettled,
    CreditApplied,
    Entry,
    Event,
    InvoiceIssued,
    InvoiceVoided,
    PaymentCreated,
    PaymentDisputed,
    PaymentRefunded,
    PaymentStatus,
    RetriesExhausted,
    RevenueRecognized,
    ReversalSettled,
)

from .tables import PROCESSOR_DEFAULT

__all__ = [
    "COLUMNS",
    "NOTIFIED",
    "AccountChange",
    "CommitRows",
    "Projection",
    "Row",
    "build_commit",
    "checkpoint_core",
    "event_tag",
    "project_change",
    "project_entries",
    "project_outbox",
    "project_state",
]

Row = tuple[Any, ...]

# Column order of the tuples built here, per table (the store writes them in this order).
COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "journal": (
        "shard_id", "account_id", "version", "event_type", "at_ms", "payload",
        "payment_id", "idempotency_key", "processor", "charge_id",
    ),
    "checkpoints": ("account_id", "version", "state"),
    "payment_checkpoints": ("account_id", "payment_id", "version", "state"),
    "accounts": ("account_id", "currency", "outstanding_minor", "credit_minor", "version"),
    "invoices": (
        "invoice_id", "account_id", "number", "amount_due_minor", "amount_paid_minor",
        "status", "due_date", "service_start", "service_end", "version", "description",
    ),
    "payments": (
        "payment_id", "account_id", "amount_minor", "currency", "status",
        "payment_method_id", "amount_applied_minor", "amount_unapplied_minor",
        "amount_refunded_minor", "created_at_ms", "finished_at_ms", "next_retry_at_ms",
        "idempotency_key", "version", "description",
    ),
    "attempts": (
        "attempt_id", "payment_id", "status", "decline_code", "decline_class", "charge_id",
        "created_at_ms", "version",
    ),
    "allocations": ("payment_id", "invoice_id", "amount_minor", "version"),
    "ledger_entries": (
        "account_id", "version", "line", "memo", "ledger_account", "side", "amount_minor",
    ),
    "outbox": ("kind", "dedupe_key", "payload", "due_at_ms"),
}  # fmt: skip

# The events whose ``evolve`` posts a ledger entry — always, as each moves a positive
# amount, but a dispute journaled before disputes posted (amount 0). Without exact
# versions from the caller, entries are matched to them in order.
_POSTING: Final = (InvoiceIssued, CreditApplied, InvoiceVoided, AttemptSucceeded, PaymentRefunded,
                   RevenueRecognized, ChargeSettled, PaymentDisputed, ReversalSettled)  # fmt: skip


def _posts(event: Event) -> bool:
    if isinstance(event, PaymentDisputed):
        return event.amount_minor > 0
    return isinstance(event, _POSTING)

_encoder: Final = msgspec.msgpack.Encoder()
_tags: dict[type, str] = {}


class AccountChange(msgspec.Struct, kw_only=True):
    """One account's events from one batch, with the state they led to."""

    account_id: str
    version_before: int  # state.version before these events (0 for a new account)
    events: list[Event]  # in order; event i gets version version_before + i + 1
    entries: list[Entry]  # ledger entries posted by these events, in order
    state: AccountState  # the state after the events (for read models / checkpoint)
    checkpoint: bool = False  # write state as the account's checkpoint in this commit
    # With ``checkpoint``: the payments changed since the account's previous checkpoint,
    # the only ones whose rows are written. None writes every payment's row, which is
    # right for a caller that does not track changes and needed after loading a
    # checkpoint that still carried its payments inline (they are in no row yet).
    checkpoint_payments: set[str] | None = None
    # The version of the event that posted each entry, when the caller knows it exactly
    # (a shard applying events one by one does); else inferred from ``_POSTING``.
    entry_versions: list[int] | None = None


class Projection(msgspec.Struct, kw_only=True):
    """Read-model rows waiting to be written; keyed, so the newest row per key wins."""

    accounts: dict[str, Row] = msgspec.field(default_factory=dict)
    invoices: dict[str, Row] = msgspec.field(default_factory=dict)
    payments: dict[str, Row] = msgspec.field(default_factory=dict)
    attempts: dict[str, Row] = msgspec.field(default_factory=dict)
    allocations: dict[tuple[str, str], Row] = msgspec.field(default_factory=dict)
    ledger_entries: list[Row] = msgspec.field(default_factory=list)
    # Payment emails for the events these rows reflect (see ``project_outbox``).
    outbox: list[Row] = msgspec.field(default_factory=list)
    # The last journal id these rows reflect (0 when unknown).
    through_id: int = 0

    def __bool__(self) -> bool:
        return bool(self.accounts or self.ledger_entries)

    def merge(self, newer: Projection) -> None:
        """Take ``newer``'s rows over this one's (it was built from later commits)."""
        self.accounts.update(newer.accounts)
        self.invoices.update(newer.invoices)
        self.payments.update(newer.payments)
        self.attempts.update(newer.attempts)
        self.allocations.update(newer.allocations)
        self.ledger_entries.extend(newer.ledger_entries)
        self.outbox.extend(newer.outbox)
        self.through_id = max(self.through_id, newer.through_id)


class CommitRows(msgspec.Struct, kw_only=True):
    """What one group commit writes, and the read models it leaves to the projection."""

    shard_id: int
    journal: list[Row] = msgspec.field(default_factory=list)
    checkpoints: dict[str, Row] = msgspec.field(default_factory=dict)
    # The payments' rows of those checkpoints, by (account_id, payment_id).
    payment_checkpoints: dict[tuple[str, str], Row] = msgspec.field(default_factory=dict)
    projection: Projection = msgspec.field(default_factory=Projection)


def event_tag(event: Event) -> str:
    kind = type(event)
    tag = _tags.get(kind)
    if tag is None:
        found = kind.__struct_config__.tag
        assert isinstance(found, str), event
        tag = _tags[kind] = found
    return tag


def build_commit(shard_id: int, changes: Iterable[AccountChange]) -> CommitRows:
    rows = CommitRows(shard_id=shard_id)
    for change in changes:
        _add_change(rows, shard_id, change)
    return rows


def _journal_row(shard_id: int, account_id: str, version: int, event: Event) -> Row:
    payload = _encoder.encode(event)
    if isinstance(event, PaymentCreated):
        return (shard_id, account_id, version, "payment_created", event.at_ms, payload,
                event.payment_id, event.idempotency_key, None, None)  # fmt: skip
    if isinstance(event, AttemptSucceeded):
        return (shard_id, account_id, version, "attempt_succeeded", event.at_ms, payload,
                event.payment_id, None, PROCESSOR_DEFAULT, event.charge_id)  # fmt: skip
    return (shard_id, account_id, version, event_tag(event), event.at_ms, payload,
            None, None, None, None)  # fmt: skip


def _add_change(rows: CommitRows, shard_id: int, change: AccountChange) -> None:
    state = change.state
    assert change.account_id == state.account_id, (change.account_id, state.account_id)
    assert change.version_before >= 0, change.version_before
    assert change.version_before + len(change.events) == state.version, (
        change.account_id, change.version_before, len(change.events), state.version,
    )  # fmt: skip
    version = change.version_before
    for event in change.events:
        version += 1
        rows.journal.append(_journal_row(shard_id, change.account_id, version, event))
        if isinstance(event, NOTIFIED):
            project_outbox(rows.projection.outbox, state, version, event)
    if change.events:
        project_change(rows.projection, change)
    if change.checkpoint:
        _add_checkpoint(rows, state, change.checkpoint_payments)


def checkpoint_core(state: AccountState) -> AccountState:
    """The account's state without its payments and what is rebuilt from them (a shallow
    copy: the live state is left as it is)."""
    return msgspec.structs.replace(state, payments={}, idempotency={}, refunds={})


def _add_checkpoint(rows: CommitRows, state: AccountState, changed: set[str] | None) -> None:
    # Each row keeps its newest version, as the upserts do in the database: two changes
    # of one account in one commit leave what the later one says.
    account_id = state.account_id
    version = state.version
    previous = rows.checkpoints.get(account_id)
    if previous is None or previous[1] <= version:
        rows.checkpoints[account_id] = (
            account_id, version, _encoder.encode(checkpoint_core(state)),
        )  # fmt: skip
    payments = state.payments
    written = rows.payment_checkpoints
    for payment_id in payments if changed is None else changed:
        payment = payments.get(payment_id)
        if payment is None:  # every event's payment exists; still, build the commit
            continue
        key = (account_id, payment_id)
        previous = written.get(key)
        if previous is None or previous[2] <= version:
            written[key] = (account_id, payment_id, version, _encoder.encode(payment))


def project_change(projection: Projection, change: AccountChange) -> None:
    """The read-model rows ``change`` touched, from its state as it is now."""
    state = change.state
    invoice_ids: set[str] = set()
    payment_ids: set[str] = set()
    for event in change.events:
        invoice_id = getattr(event, "invoice_id", None)
        if invoice_id is not None:
            invoice_ids.add(invoice_id)
        payment_id = getattr(event, "payment_id", None)
        if payment_id is not None:
            payment_ids.add(payment_id)
        for allocation in getattr(event, "allocations", ()):
            invoice_ids.add(allocation.invoice_id)
    versions = change.entry_versions
    if versions is None:
        versions = _entry_versions(change)
    assert len(versions) == len(change.entries), (len(versions), len(change.entries))
    project_entries(projection, state.account_id, versions, change.entries)
    _add_account(projection, state)
    for invoice_id in invoice_ids:
        _add_invoice(projection, state, invoice_id)
    for payment_id in payment_ids:
        _add_payment(projection, state, payment_id)


def project_state(projection: Projection, state: AccountState) -> None:
    """Every read-model row of the account (catch-up after a crash)."""
    _add_account(projection, state)
    for invoice_id in state.invoices:
        _add_invoice(projection, state, invoice_id)
    for payment_id in state.payments:
        _add_payment(projection, state, payment_id)


def project_entries(
    projection: Projection, account_id: str, versions: list[int], entries: list[Entry]
) -> None:
    ledger = projection.ledger_entries
    for version, posted in zip(versions, entries, strict=True):
        memo = posted.memo
        for line, item in enumerate(posted.lines):
            ledger.append((account_id, version, line, memo, item.account.value,
                           item.side.value, item.amount_minor))  # fmt: skip


def _add_account(projection: Projection, state: AccountState) -> None:
    projection.accounts[state.account_id] = (
        state.account_id, state.currency, state.outstanding_minor, state.credit_minor,
        state.version,
    )  # fmt: skip


def _entry_versions(change: AccountChange) -> list[int]:
    """The version of the event that posted each entry, in order."""
    posting = [
        change.version_before + index + 1
        for index, event in enumerate(change.events)
        if _posts(event)
    ]
    if len(posting) == len(change.entries):
        return posting
    # The engine posted entries for other events than ``_POSTING`` lists: still record
    # them, against the change's last version, rather than fail a durable commit.
    return [change.version_before + len(change.events)] * len(change.entries)


def _add_invoice(projection: Projection, state: AccountState, invoice_id: str) -> None:
    invoice = state.invoices.get(invoice_id)
    if invoice is None:
        return
    period = invoice.service_period
    projection.invoices[invoice_id] = (
        invoice_id, state.account_id, invoice.number, invoice.amount_due_minor,
        invoice.amount_paid_minor, invoice.status.value, invoice.due_date,
        period.start if period is not None else None,
        period.end if period is not None else None,
        state.version, invoice.description,
    )  # fmt: skip


def _add_payment(projection: Projection, state: AccountState, payment_id: str) -> None:
    payment = state.payments.get(payment_id)
    if payment is None:
        return
    version = state.version
    projection.payments[payment_id] = (
        payment_id, state.account_id, payment.amount_minor, payment.currency,
        payment.status.value, payment.payment_method.id, payment.amount_applied_minor,
        payment.amount_unapplied_minor, payment.amount_refunded_minor, payment.created_at_ms,
        payment.finished_at_ms, payment.next_retry_at_ms, payment.idempotency_key, version,
        payment.description,
    )  # fmt: skip
    for attempt in payment.attempts:
        decline_class = attempt.decline_class
        projection.attempts[attempt.attempt_id] = (
            attempt.attempt_id, payment_id, attempt.status.value, attempt.decline_code,
            decline_class.value if decline_class is not None else None, attempt.charge_id,
            attempt.created_at_ms, version,
        )  # fmt: skip
    for allocation in payment.allocations:
        projection.allocations[(payment_id, allocation.invoice_id)] = (
            payment_id,
            allocation.invoice_id,
            allocation.amount_minor,
            version,
        )


# -- payment emails (rendered and sent by payportal.mail) ------------------------------------
#
# A payer hears of a payment's success once, and of each terminal decline: the payment
# failed, or waits for another payment method. A soft decline that will be retried is not
# announced; its retry's outcome is. The rows ride with the projection, not the group
# commit: an outbox insert in every capture's commit measurably slowed the commit (see
# benchmarks/mail_outbox.py), while the projection is coalesced and off the reply path.
# The payload holds the facts as of the state given (after the change's events, or after
# the event itself when a catch-up replays the journal).

NOTIFIED: Final = (
    AttemptSucceeded, AttemptDeclined, AttemptErrored, RetriesExhausted, AttemptRequiresAction,
)  # fmt: skip
_DECLINE_TERMINAL: Final = frozenset({PaymentStatus.failed, PaymentStatus.requires_payment_method})


def project_outbox(outbox: list[Row], state: AccountState, version: int, event: Event) -> None:
    """Append the email row, if any, that ``event`` (at ``version``) gives the payer."""
    assert isinstance(event, NOTIFIED), event
    payment = state.payments.get(event.payment_id)
    if payment is None:
        return
    # A msgpack array in ``payportal.mail.payments.PaymentNotice``'s field order: no key
    # names, so the row the commit writes stays small.
    notice: list[Any] = [
        state.account_id, event.payment_id, version, event.at_ms, payment.amount_minor,
        payment.currency, payment.payment_method.id, payment.payment_method.brand,
        state.outstanding_minor, state.credit_minor,
    ]  # fmt: skip
    if isinstance(event, AttemptSucceeded):
        kind = "payment_succeeded"
        dedupe_key = f"payment_succeeded:{event.payment_id}"
        invoices = state.invoices
        allocations = [
            (a.invoice_id, invoices[a.invoice_id].number if a.invoice_id in invoices else "",
             a.amount_minor)
            for a in event.allocations
        ]  # fmt: skip
        notice += [allocations, event.unapplied_minor]
        if payment.description is not None:
            # After the decline fields, which a success leaves at their defaults.
            notice += [None, False, None, None, None, payment.description]
    else:
        status = getattr(event, "status", PaymentStatus.failed)
        if isinstance(event, AttemptRequiresAction):
            status = PaymentStatus.requires_action
        if status is PaymentStatus.requires_action:
            # 3-D Secure: a payer who is on the page sees the challenge there; one who is
            # not (a retry, autopay) is asked by email to come back and confirm.
            asking = next((a for a in payment.attempts if a.attempt_id == event.attempt_id),
                          None)  # fmt: skip
            if asking is None or not asking.off_session:
                return
            assert asking.status in (AttemptStatus.requires_action, AttemptStatus.declined)
        elif status not in _DECLINE_TERMINAL:
            return
        kind = "payment_declined"
        # A payment may be declined for good more than once (a new method, declined again).
        dedupe_key = f"payment_declined:{event.payment_id}:{version}"
        attempt_id = getattr(event, "attempt_id", None)
        attempt = next(
            (a for a in payment.attempts if a.attempt_id == attempt_id),
            payment.attempts[-1] if payment.attempts else None,
        )
        decline_class = attempt.decline_class if attempt is not None else None
        notice += [
            [], 0, status.value, isinstance(event, RetriesExhausted),
            attempt.decline_code if attempt is not None else None,
            decline_class.value if decline_class is not None else None,
            attempt.advice_code if attempt is not None else None,
        ]  # fmt: skip
        if payment.description is not None:
            notice.append(payment.description)
    outbox.append((kind, dedupe_key, _encoder.encode(notice), event.at_ms))
