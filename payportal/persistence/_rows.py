"""Rows from account changes: the journal, the ledger and the read models, as plain dicts.

Pure and synchronous, so a commit builds every row from the live account state before
its first ``await`` — the shard may not change the state while the commit is in flight,
but nothing here relies on that. Read models are rebuilt for the ids the events touched
(an event names its ``invoice_id``, ``payment_id`` and the invoices it allocates to);
the account row is rewritten on every change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from payportal.engine import (
    AccountState,
    AttemptSucceeded,
    CreditApplied,
    Entry,
    Event,
    InvoiceIssued,
    InvoiceVoided,
    PaymentRefunded,
)

__all__ = ["AccountChange", "Rows", "build_rows", "event_tag"]

Row = dict[str, Any]

# The events whose ``evolve`` posts a ledger entry — always, as each moves a positive
# amount. Entries are matched to them in order to record the posting event's version.
_POSTING: Final = (InvoiceIssued, CreditApplied, InvoiceVoided, AttemptSucceeded, PaymentRefunded)

_encoder: Final = msgspec.msgpack.Encoder()


class AccountChange(msgspec.Struct, kw_only=True):
    """One account's events from one batch, with the state they led to."""

    account_id: str
    version_before: int  # state.version before these events (0 for a new account)
    events: list[Event]  # in order; event i gets version version_before + i + 1
    entries: list[Entry]  # ledger entries posted by these events, in order
    state: AccountState  # the state after the events (for read models / checkpoint)
    checkpoint: bool = False  # write state as the account's checkpoint in this commit


class Rows(msgspec.Struct, kw_only=True):
    """Every row one commit writes, per table; read models keyed so the last write wins."""

    journal: list[Row] = msgspec.field(default_factory=list)
    ledger_entries: list[Row] = msgspec.field(default_factory=list)
    accounts: dict[str, Row] = msgspec.field(default_factory=dict)
    invoices: dict[str, Row] = msgspec.field(default_factory=dict)
    payments: dict[str, Row] = msgspec.field(default_factory=dict)
    attempts: dict[str, Row] = msgspec.field(default_factory=dict)
    allocations: dict[tuple[str, str], Row] = msgspec.field(default_factory=dict)
    checkpoints: dict[str, Row] = msgspec.field(default_factory=dict)


def event_tag(event: Event) -> str:
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str), event
    return tag


def build_rows(shard_id: int, changes: Iterable[AccountChange]) -> Rows:
    rows = Rows()
    for change in changes:
        _add_change(rows, shard_id, change)
    return rows


def _add_change(rows: Rows, shard_id: int, change: AccountChange) -> None:
    state = change.state
    assert change.account_id == state.account_id, (change.account_id, state.account_id)
    assert change.version_before >= 0, change.version_before
    assert change.version_before + len(change.events) == state.version, (
        change.account_id, change.version_before, len(change.events), state.version,
    )  # fmt: skip
    invoice_ids: set[str] = set()
    payment_ids: set[str] = set()
    for index, event in enumerate(change.events):
        rows.journal.append({
            "shard_id": shard_id,
            "account_id": change.account_id,
            "version": change.version_before + index + 1,
            "event_type": event_tag(event),
            "at_ms": event.at_ms,
            "payload": _encoder.encode(event),
        })  # fmt: skip
        invoice_id = getattr(event, "invoice_id", None)
        if invoice_id is not None:
            invoice_ids.add(invoice_id)
        payment_id = getattr(event, "payment_id", None)
        if payment_id is not None:
            payment_ids.add(payment_id)
        invoice_ids.update(a.invoice_id for a in getattr(event, "allocations", ()))
    for version, posted in zip(_entry_versions(change), change.entries, strict=True):
        rows.ledger_entries.extend(
            {
                "account_id": change.account_id,
                "version": version,
                "memo": posted.memo,
                "ledger_account": line.account.value,
                "side": line.side.value,
                "amount_minor": line.amount_minor,
            }
            for line in posted.lines
        )
    rows.accounts[state.account_id] = {
        "account_id": state.account_id,
        "currency": state.currency,
        "outstanding_minor": state.outstanding_minor,
        "credit_minor": state.credit_minor,
        "version": state.version,
    }
    for invoice_id in invoice_ids:
        _add_invoice(rows, state, invoice_id)
    for payment_id in payment_ids:
        _add_payment(rows, state, payment_id)
    if change.checkpoint:
        previous = rows.checkpoints.get(state.account_id)
        if previous is None or previous["version"] <= state.version:
            rows.checkpoints[state.account_id] = {
                "account_id": state.account_id,
                "version": state.version,
                "state": _encoder.encode(state),
            }


def _entry_versions(change: AccountChange) -> list[int]:
    """The version of the event that posted each entry, in order."""
    posting = [
        change.version_before + index + 1
        for index, event in enumerate(change.events)
        if isinstance(event, _POSTING)
    ]
    if len(posting) == len(change.entries):
        return posting
    # The engine posted entries for other events than ``_POSTING`` lists: still record
    # them, against the change's last version, rather than fail a durable commit.
    return [change.version_before + len(change.events)] * len(change.entries)


def _add_invoice(rows: Rows, state: AccountState, invoice_id: str) -> None:
    invoice = state.invoices.get(invoice_id)
    if invoice is None:
        return
    period = invoice.service_period
    rows.invoices[invoice_id] = {
        "invoice_id": invoice_id,
        "account_id": state.account_id,
        "number": invoice.number,
        "amount_due_minor": invoice.amount_due_minor,
        "amount_paid_minor": invoice.amount_paid_minor,
        "status": invoice.status.value,
        "due_date": invoice.due_date,
        "service_start": period.start if period is not None else None,
        "service_end": period.end if period is not None else None,
    }


def _add_payment(rows: Rows, state: AccountState, payment_id: str) -> None:
    payment = state.payments.get(payment_id)
    if payment is None:
        return
    rows.payments[payment_id] = {
        "payment_id": payment_id,
        "account_id": state.account_id,
        "amount_minor": payment.amount_minor,
        "currency": payment.currency,
        "status": payment.status.value,
        "payment_method_id": payment.payment_method.id,
        "amount_applied_minor": payment.amount_applied_minor,
        "amount_unapplied_minor": payment.amount_unapplied_minor,
        "amount_refunded_minor": payment.amount_refunded_minor,
        "created_at_ms": payment.created_at_ms,
        "finished_at_ms": payment.finished_at_ms,
        "next_retry_at_ms": payment.next_retry_at_ms,
        "idempotency_key": payment.idempotency_key,
    }
    for attempt in payment.attempts:
        rows.attempts[attempt.attempt_id] = {
            "attempt_id": attempt.attempt_id,
            "payment_id": payment_id,
            "status": attempt.status.value,
            "decline_code": attempt.decline_code,
            "decline_class": (
                attempt.decline_class.value if attempt.decline_class is not None else None
            ),
            "charge_id": attempt.charge_id,
            "created_at_ms": attempt.created_at_ms,
        }
    for allocation in payment.allocations:
        rows.allocations[(payment_id, allocation.invoice_id)] = {
            "payment_id": payment_id,
            "invoice_id": allocation.invoice_id,
            "amount_minor": allocation.amount_minor,
        }
