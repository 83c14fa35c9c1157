"""The sandbox's settlement reports: what it paid out for which captured charges.

The model: every succeeded charge is settled in the payout of its currency and of the UTC
day it was created; the payout is paid ``payout_delay_days`` later (its ``date``). A
settlement line gives the charge's amount, fee (2.9 % + 30 minor units, rounded half up:
``sandbox.fee_minor``), net (amount less fee) and payout id; a payout gives its date,
currency, line count and total (the sum of its lines' nets). Payout ids are derived from
currency and day (``po_20250114_usd``), so every report names the same payouts.

Refunds and disputes are withheld, as a real processor nets them: each is a line of its
own (``type`` ``refund`` or ``dispute``, ``source`` the refund's or dispute's id, ``charge``
the charge it takes back from) in the payout of the UTC day it happened, whether or not
the charge itself was paid out yet. Its ``amount`` is negative (what is taken back), its
``fee`` the dispute fee (``DISPUTE_FEE_MINOR`` in the sandbox; none for a refund) and its
``net`` both taken together, so the payout's total nets them. A payout may be negative.

Discrepancies, for tests of reconciliation (``POST /v1/_settlements/discrepancies``, each
one changes the reports until ``DELETE`` clears them all):

| kind | the reports then… |
|---|---|
| ``drop_charge`` | leave the charge out (a charge our books have and the processor lacks) |
| ``unknown_charge`` | carry a line for a charge that never happened (``amount``, ``currency``) |
| ``amount`` | report the charge's amount changed by ``amount`` (fee and net follow) |
| ``currency`` | report the charge in ``currency`` |
| ``duplicate`` | list the charge twice |
| ``payout_total`` | report the charge's payout total off by ``amount`` |

The sandbox keeps charges in memory only, so ``GET /v1/settlements`` also says from when
it knows them (``covers_from``, unix seconds): a reconciliation expects no older charge.

Pure: the lines and payouts are built from the charges, the knobs and the day given.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Iterable
from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "Discrepancy",
    "Payout",
    "SettledCharge",
    "SettledReversal",
    "SettlementKnobs",
    "SettlementLine",
    "SettlementReport",
    "build_settlement",
    "payouts_csv",
    "settlements_csv",
]

_DAY_S: Final = 86_400

DiscrepancyKind = Literal[
    "drop_charge", "unknown_charge", "amount", "currency", "duplicate", "payout_total"
]


class Discrepancy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: DiscrepancyKind
    charge: str | None = None  # every kind but unknown_charge names a charge
    amount: int = 0
    # ``(?!\n)``: Python's ``$`` also matches before a final newline.
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$(?!\n)")] | None = None


class SettlementKnobs(msgspec.Struct, kw_only=True):
    payout_delay_days: int = 1
    discrepancies: list[Discrepancy] = msgspec.field(default_factory=list)
    # The sandbox forgets everything when it stops: its reports cover charges from here on.
    covers_from: int = 0


class SettledCharge(msgspec.Struct, frozen=True, kw_only=True):
    """What settlement needs of a charge."""

    id: str
    amount: int
    currency: str
    created: int  # unix seconds


class SettledReversal(msgspec.Struct, frozen=True, kw_only=True):
    """A refund or dispute the processor takes back out of a payout."""

    type: Literal["refund", "dispute"]
    id: str
    charge: str
    amount: int  # positive: what is taken back
    fee: int
    currency: str
    created: int  # unix seconds


class SettlementLine(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "settlement_line"
    charge: str
    payout: str
    amount: int
    currency: str
    fee: int
    net: int
    created: int
    type: str = "charge"  # charge | refund | dispute
    source: str | None = None  # the refund's or dispute's id


class SettlementReport(msgspec.Struct, frozen=True, kw_only=True):
    lines: list[SettlementLine]
    payouts: list[Payout]
    # Unix seconds: charges captured before this are not in the report, whatever they were.
    covers_from: int = 0
    # Unix seconds: charges captured after this are not expected in the report yet (a
    # processor that pays out days after capture); None: every capture is.
    covers_until: int | None = None


class Payout(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "payout"
    id: str
    date: dt.date
    currency: str
    amount: int  # the total paid, the sum of its lines' nets (as the processor reports it)
    charges: int
    status: str  # pending | paid


def _day(created_s: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=created_s // _DAY_S)


def _payout_id(day: dt.date, currency: str) -> str:
    return f"po_{day:%Y%m%d}_{currency.lower()}"


def build_settlement(
    charges: Iterable[SettledCharge],
    knobs: SettlementKnobs,
    *,
    today: dt.date,
    fee_of: Callable[[int], int],
    reversals: Iterable[SettledReversal] = (),
) -> tuple[list[SettlementLine], list[Payout]]:
    """The settlement lines (charges in order, then refunds and disputes) and payouts (by
    date, then currency)."""
    dropped = {d.charge for d in knobs.discrepancies if d.kind == "drop_charge"}
    duplicated = [d.charge for d in knobs.discrepancies if d.kind == "duplicate"]
    amount_delta: dict[str | None, int] = {}
    for d in knobs.discrepancies:
        if d.kind == "amount":
            amount_delta[d.charge] = amount_delta.get(d.charge, 0) + d.amount
    currency_of = {d.charge: d.currency for d in knobs.discrepancies if d.kind == "currency"}
    lines: list[SettlementLine] = []

    def add(charge_id: str, amount: int, currency: str, created: int) -> None:
        fee = fee_of(amount) if amount > 0 else 0
        payout = _payout_id(_day(created), currency)
        lines.append(SettlementLine(charge=charge_id, payout=payout, amount=amount,
                                    currency=currency, fee=fee, net=amount - fee,
                                    created=created))  # fmt: skip

    settled: dict[str, SettledCharge] = {}
    for charge in charges:
        settled[charge.id] = charge
        if charge.id in dropped:
            continue
        amount = charge.amount + amount_delta.get(charge.id, 0)
        add(charge.id, amount, currency_of.get(charge.id) or charge.currency, charge.created)
    for charge_id in duplicated:
        original = next((x for x in lines if x.charge == charge_id and x.type == "charge"), None)
        if original is not None:
            lines.append(original)
    for n, d in enumerate(knobs.discrepancies):
        if d.kind == "unknown_charge":
            created = (today - dt.date(1970, 1, 1)).days * _DAY_S
            add(d.charge or f"ch_unknown_{n}", d.amount, d.currency or "USD", created)
    for reversal in reversals:
        taken_minor = reversal.amount + reversal.fee
        lines.append(SettlementLine(
            charge=reversal.charge, payout=_payout_id(_day(reversal.created), reversal.currency),
            amount=-reversal.amount, currency=reversal.currency, fee=reversal.fee,
            net=-taken_minor, created=reversal.created, type=reversal.type, source=reversal.id,
        ))  # fmt: skip
    totals: dict[str, tuple[dt.date, str, int, int]] = {}
    for line in lines:
        day, currency, net, count = totals.get(line.payout, (_day(line.created), line.currency,
                                                             0, 0))  # fmt: skip
        totals[line.payout] = (day, currency, net + line.net, count + 1)
    for d in knobs.discrepancies:
        if d.kind == "payout_total":
            line = next((x for x in lines if x.charge == d.charge and x.type == "charge"), None)
            if line is not None:
                day, currency, net, count = totals[line.payout]
                totals[line.payout] = (day, currency, net + d.amount, count)
    delay = dt.timedelta(days=knobs.payout_delay_days)
    payouts = [
        Payout(id=payout_id, date=day + delay, currency=currency, amount=net, charges=count,
               status="paid" if day + delay <= today else "pending")
        for payout_id, (day, currency, net, count) in totals.items()
    ]  # fmt: skip
    payouts.sort(key=lambda p: (p.date, p.currency, p.id))
    return lines, payouts


def settlements_csv(lines: Iterable[SettlementLine]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("charge", "payout", "amount", "currency", "fee", "net", "created", "type",
                     "source"))  # fmt: skip
    for x in lines:
        writer.writerow((x.charge, x.payout, x.amount, x.currency, x.fee, x.net, x.created,
                         x.type, x.source or ""))  # fmt: skip
    return buffer.getvalue()


def payouts_csv(payouts: Iterable[Payout]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("payout", "date", "currency", "amount", "charges", "status"))
    for p in payouts:
        writer.writerow((p.id, p.date.isoformat(), p.currency, p.amount, p.charges, p.status))
    return buffer.getvalue()
