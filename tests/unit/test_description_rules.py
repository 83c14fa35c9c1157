"""The engine keeps an invoice's and a payment's description through its events and state,
refuses one that is too long or holds a control character, and treats the same id or key
with another description as a different request."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from payportal.engine import (
    DESCRIPTION_CHARS_MAX,
    AccountState,
    InvoiceIssued,
    IssueInvoice,
    PaymentCreated,
    Rejection,
    Result,
)

from .engine_builders import Ledgerbook

BAD = ["x" * (DESCRIPTION_CHARS_MAX + 1), "two\nlines", "tab\there", "nul\x00", "del\x7f",
       "c1\x85", "carriage\r"]  # fmt: skip


def test_descriptions_ride_on_the_events_into_the_state() -> None:
    book = Ledgerbook()
    invoice_id = book.invoice(10_000, description="Consulting, January")
    decision = book.create_payment(4_000, description="Deposit")
    assert decision.outcome.result is Result.ok
    [created] = decision.events
    assert isinstance(created, PaymentCreated)
    assert created.description == "Deposit"
    assert book.account.invoices[invoice_id].description == "Consulting, January"
    assert book.account.payments[created.payment_id].description == "Deposit"
    # A checkpoint round trip keeps them.
    restored = msgspec.msgpack.decode(msgspec.msgpack.encode(book.account), type=AccountState)
    assert restored.invoices[invoice_id].description == "Consulting, January"


def test_events_and_checkpoints_written_before_descriptions_still_decode() -> None:
    old = msgspec.msgpack.encode({"at_ms": 1, "invoice_id": "inv_1", "number": "1",
                                  "amount_minor": 5, "due_date": "2026-01-31"})  # fmt: skip
    event = msgspec.msgpack.decode(old, type=InvoiceIssued)
    assert event.description is None


@pytest.mark.parametrize("bad", BAD)
def test_a_description_too_long_or_with_a_control_character_is_refused(bad: str) -> None:
    book = Ledgerbook()
    invoice = book.run(IssueInvoice(
        account_id=book.account_id, invoice_id="inv_x", number="X", amount_minor=1_000,
        currency="USD", due_date=dt.date(2026, 1, 31), description=bad,
    ))  # fmt: skip
    assert invoice.outcome.rejection is Rejection.description_must_be_valid
    payment = book.create_payment(1_000, description=bad)
    assert payment.outcome.rejection is Rejection.description_must_be_valid
    assert Rejection.description_must_be_valid.param == "description"


def test_the_longest_description_in_any_script_is_kept() -> None:
    book = Ledgerbook()
    longest = "é" * (DESCRIPTION_CHARS_MAX // 2) + "日" * (DESCRIPTION_CHARS_MAX // 2)
    invoice_id = book.invoice(1_000, description=longest)
    assert book.account.invoices[invoice_id].description == longest


def test_the_same_invoice_or_key_with_another_description_is_another_request() -> None:
    book = Ledgerbook()
    command = IssueInvoice(
        account_id=book.account_id, invoice_id="inv_same", number="S", amount_minor=1_000,
        currency="USD", due_date=dt.date(2026, 1, 31), description="first",
    )  # fmt: skip
    assert book.run(command).outcome.result is Result.ok
    assert book.run(command).outcome.result is Result.exists
    changed = msgspec.structs.replace(command, description="second")
    assert book.run(changed).outcome.rejection is Rejection.exists_with_different_description
    assert book.run(msgspec.structs.replace(command, description=None)).outcome.rejection is (
        Rejection.exists_with_different_description
    )

    assert book.create_payment(500, key="key-1", description="a").outcome.result is Result.ok
    assert book.create_payment(500, key="key-1", description="a").outcome.result is Result.exists
    again = book.create_payment(500, key="key-1", description="b")
    assert again.outcome.rejection is Rejection.exists_with_different_description
