"""Allocation: how a payment's amount is split over an account's open invoices.

The rule (docs/api.md): explicit allocations first, each capped at what the invoice still
owes; then the open invoices oldest due date first (then invoice number, then id, so
the order is total and deterministic); whatever is left becomes account credit. The
same function answers the preview and applies the payment, so a preview on an
unchanged account is exactly the split the payment gets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import msgspec

__all__ = ["Allocation", "AllocationResult", "OpenInvoice", "allocate", "allocate_oldest_first"]


class OpenInvoice(msgspec.Struct, frozen=True, kw_only=True):
    invoice_id: str
    number: str
    due_date: dt.date
    amount_remaining_minor: int


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    invoice_id: str
    amount_minor: int


class AllocationResult(msgspec.Struct, frozen=True, kw_only=True):
    allocations: tuple[Allocation, ...]
    unapplied_minor: int

    @property
    def applied_minor(self) -> int:
        return sum(a.amount_minor for a in self.allocations)


def _oldest_first_key(invoice: OpenInvoice) -> tuple[dt.date, str, str]:
    return (invoice.due_date, invoice.number, invoice.invoice_id)


def allocate(
    invoices: Iterable[OpenInvoice],
    amount_minor: int,
    explicit: Sequence[Allocation] = (),
) -> AllocationResult:
    """Split ``amount_minor`` over ``invoices``: ``explicit`` first, then oldest first."""
    assert amount_minor >= 0
    open_invoices = [i for i in invoices if i.amount_remaining_minor > 0]
    remaining_by_id = {i.invoice_id: i.amount_remaining_minor for i in open_invoices}
    order = sorted(open_invoices, key=_oldest_first_key)
    left_minor = amount_minor
    applied: dict[str, int] = {}
    for request in explicit:
        assert request.amount_minor > 0
        take = min(request.amount_minor, remaining_by_id.get(request.invoice_id, 0), left_minor)
        if take > 0:
            applied[request.invoice_id] = applied.get(request.invoice_id, 0) + take
            remaining_by_id[request.invoice_id] -= take
            left_minor -= take
    for invoice in order:
        if left_minor == 0:
            break
        take = min(remaining_by_id[invoice.invoice_id], left_minor)
        if take > 0:
            applied[invoice.invoice_id] = applied.get(invoice.invoice_id, 0) + take
            remaining_by_id[invoice.invoice_id] -= take
            left_minor -= take
    result = AllocationResult(
        allocations=tuple(Allocation(invoice_id=k, amount_minor=v) for k, v in applied.items()),
        unapplied_minor=left_minor,
    )
    assert result.applied_minor + result.unapplied_minor == amount_minor
    assert all(v >= 0 for v in remaining_by_id.values())
    return result


def allocate_oldest_first(invoices: Iterable[OpenInvoice], amount_minor: int) -> AllocationResult:
    """Credit and undirected payments: no explicit part."""
    return allocate(invoices, amount_minor)
