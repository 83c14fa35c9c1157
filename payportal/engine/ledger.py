"""The double-entry ledger: every movement of money as balanced postings.

The model: an ``Entry`` is a set of lines, each a debit or a credit of a positive
amount to one ``LedgerAccount``. An entry whose debits and credits differ cannot be
constructed, so every posting balances by construction. Balances are kept signed,
debit-positive: receivables and clearing are positive, customer credit and revenue
negative. The sum of all balances is therefore always zero.

What each event posts (debit → credit):

- invoice issued: accounts_receivable → deferred_revenue
- payment captured: processor_clearing → accounts_receivable, customer_credit
- refund: customer_credit (the payment's own credit still held), refunds
  → processor_clearing
- charge paid out: cash (net), fees → processor_clearing
- dispute: accounts_receivable (invoices reopened), customer_credit (the payment's own
  credit still held), disputes (the rest), fees (the dispute fee) → processor_clearing
- refund or dispute withheld from a payout: processor_clearing (and fees, for a dispute
  fee first reported then) → cash

A refund and a dispute leave through ``processor_clearing`` as a capture entered it, since
the processor takes them out of our balance with it; the payout that withholds them
brings clearing back to zero (docs/design.md "Disputes and refunds in the ledger").
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

__all__ = ["Entry", "LedgerAccount", "Line", "Side", "apply_entry", "entry"]


class LedgerAccount(StrEnum):
    accounts_receivable = "accounts_receivable"
    processor_clearing = "processor_clearing"
    cash = "cash"
    customer_credit = "customer_credit"
    revenue = "revenue"
    deferred_revenue = "deferred_revenue"
    fees = "fees"
    refunds = "refunds"
    # Disputed amounts nobody owes again: the loss a lost chargeback leaves.
    disputes = "disputes"


class Side(StrEnum):
    debit = "debit"
    credit = "credit"


class Line(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    account: LedgerAccount
    side: Side
    amount_minor: int


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """A balanced posting. Build it with ``entry``; the constructor checks the balance."""

    memo: str
    lines: tuple[Line, ...]

    def __post_init__(self) -> None:
        assert len(self.lines) >= 2, self
        for line in self.lines:
            assert line.amount_minor > 0, self
        debits = sum(x.amount_minor for x in self.lines if x.side is Side.debit)
        credits = sum(x.amount_minor for x in self.lines if x.side is Side.credit)
        assert debits == credits, self


def entry(
    memo: str,
    debits: dict[LedgerAccount, int],
    credits: dict[LedgerAccount, int],
) -> Entry | None:
    """A balanced entry from amounts per account; zero amounts are dropped.

    Returns None when nothing moves (every amount zero), so callers need not special-case
    a zero-value event.
    """
    lines = tuple(
        [Line(account=a, side=Side.debit, amount_minor=m) for a, m in debits.items() if m]
        + [Line(account=a, side=Side.credit, amount_minor=m) for a, m in credits.items() if m]
    )
    if not lines:
        return None
    return Entry(memo=memo, lines=lines)


def apply_entry(balances: dict[LedgerAccount, int], posted: Entry) -> None:
    """Add an entry to signed, debit-positive balances."""
    for line in posted.lines:
        signed = line.amount_minor if line.side is Side.debit else -line.amount_minor
        balances[line.account] = balances.get(line.account, 0) + signed
    assert sum(balances.values()) == 0, balances
