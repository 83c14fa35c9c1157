"""Payment emails: the confirmation of a succeeded payment and the notice of a decline.

The model: the store writes one outbox row per succeeded payment
(``payment_succeeded:{payment_id}``) and one per terminal decline
(``payment_declined:{payment_id}:{version}``) in the transaction that projects the
journaled event into the read models and advances the projection cursor
(``payportal.persistence._rows.project_outbox``); after a crash the catch-up replays the
journal and writes them then, and the dedupe key keeps a twice-projected event to one
row. So a row exists exactly when its event is committed, and by the time it exists the
read models (and the receipt page its link opens) show the payment. The row holds the
facts as of its event: amount, what went to which invoice, the balance after it, the
decline code and class. The sender renders it here, when it sends, adding what the front
door's own tables say: the account name, the recipients and the card's brand and last 4 —
read for a whole batch of rows in one statement (``load_contacts``), then rendered row by
row (``render_payment_notice``).

Who receives it: the account's contact address (``account_profiles.email``, set by the
merchant) in To, and every payer who signs in for the account (``payer_accounts`` →
``payers.email``) in Cc, each address once. An account with neither gets no email (the
row is given up with the reason recorded).

Rules: no card number or secret reaches a template — only brand and last 4, which the
front door stores for display anyway. Intermediate soft declines that will be retried are
not announced: the payer hears the retry's outcome instead (its success, or the notice
when the retries run out).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from payportal.persistence.sealing import keyring_of
from payportal.persistence.tables_payers import (
    account_profiles,
    payer_accounts,
    payers,
    payment_methods,
)

from ._outbox import OutboxEmail
from ._render import render_email

__all__ = [
    "KIND_PAYMENT_DECLINED",
    "KIND_PAYMENT_SUCCEEDED",
    "PAYMENT_KINDS",
    "PaymentContacts",
    "PaymentNotice",
    "decline_wording",
    "decode_notice",
    "load_contacts",
    "render_payment_email",
    "render_payment_notice",
]

KIND_PAYMENT_SUCCEEDED: Final = "payment_succeeded"
KIND_PAYMENT_DECLINED: Final = "payment_declined"
PAYMENT_KINDS: Final = frozenset({KIND_PAYMENT_SUCCEEDED, KIND_PAYMENT_DECLINED})


class PaymentNotice(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """The outbox payload the group commit writes: a msgpack array in this field order
    (``payportal.persistence._rows._add_outbox`` builds it)."""

    account_id: str
    payment_id: str
    version: int
    at_ms: int
    amount_minor: int
    currency: str
    method_id: str
    method_brand: str = ""
    outstanding_minor: int = 0
    credit_minor: int = 0
    # Succeeded: (invoice_id, invoice number, amount applied) and what was left as credit.
    allocations: list[tuple[str, str, int]] = msgspec.field(default_factory=list)
    unapplied_minor: int = 0
    # Declined.
    status: str | None = None
    exhausted: bool = False
    decline_code: str | None = None
    decline_class: str | None = None
    advice_code: str | None = None
    # The payment's description; rows written before it existed end before it.
    description: str | None = None


_decoder: Final = msgspec.msgpack.Decoder(PaymentNotice)

_BRANDS: Final = {
    "visa": "Visa", "mastercard": "Mastercard", "amex": "American Express",
    "discover": "Discover", "jcb": "JCB", "diners": "Diners Club", "unionpay": "UnionPay",
}  # fmt: skip
_WALLETS: Final = {"apple_pay": "Apple Pay", "google_pay": "Google Pay"}

# Plain words for the decline codes a payer can act on; the rest fall back to the class.
_REASONS: Final = {
    "insufficient_funds": "your bank declined it because there were not enough funds "
    "available on the card.",
    "expired_card": "the card has expired.",
    "incorrect_cvc": "the card's security code did not match.",
    "invalid_cvc": "the card's security code did not match.",
    "incorrect_number": "the card number was not accepted.",
    "invalid_number": "the card number was not accepted.",
    "invalid_account": "the card's account is no longer valid.",
    "account_closed": "the card's account is closed.",
    "authentication_required": "your bank asked for extra verification that could not be "
    "completed.",
    "card_velocity_exceeded": "the card has reached its spending or transaction limit.",
    "withdrawal_count_limit_exceeded": "the card has reached its spending or transaction limit.",
    "transaction_not_allowed": "your bank does not allow this kind of payment on the card.",
}
# Codes whose real meaning (lost, stolen, suspected fraud) a notice should not spell out.
_REASON_BANK_REFUSED: Final = "your bank declined the card and did not give a reason."


def decline_wording(notice: PaymentNotice) -> tuple[bool, str, str]:
    """(hard, why, what to do) for a decline, in plain words."""
    hard = notice.status == "requires_payment_method" or notice.decline_class == "hard"
    code = notice.decline_code or ""
    if code in _REASONS:
        reason = _REASONS[code]
    elif notice.decline_class == "technical":
        reason = "we could not reach the card network to complete the payment."
    elif notice.decline_class == "soft":
        reason = "your bank could not approve the payment at this time."
    else:
        reason = _REASON_BANK_REFUSED
    if notice.exhausted:
        reason = f"we tried the payment several times, and each time {reason}"
    reason = reason[0].upper() + reason[1:]
    if notice.decline_class == "technical":
        advice = "Nothing is wrong with your card: please try the payment again."
    elif code == "insufficient_funds":
        advice = "Please make sure funds are available, or use another card."
    else:
        advice = "Please contact your bank, or use another card."
    return hard, reason, advice


def _brand(brand: str) -> str:
    if brand.lower() in ("", "unknown"):
        return "card"
    return _BRANDS.get(brand.lower(), brand.replace("_", " ").title())


def _date(at_ms: int) -> str:
    day = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).date()
    return f"{day.day} {day:%B %Y}"


class PaymentContacts:
    """What the front door's tables say about the accounts of a batch of notices: names,
    addresses and the payment methods' display details. ``load_contacts`` reads them for a
    whole batch in one query, so sending N emails costs one read, not 3 × N."""

    def __init__(self) -> None:
        self.profiles: dict[str, tuple[str, str]] = {}  # account id -> (name, email)
        self.payer_emails: dict[str, list[str]] = {}  # account id -> payers' addresses
        # (account id, method id) -> (brand, last4, wallet)
        self.methods: dict[tuple[str, str], tuple[str, str | None, str | None]] = {}

    def recipients(self, account_id: str) -> tuple[str, list[str], list[str]]:
        """(account name, To, Cc): the contact address in To, every payer once in Cc (or
        the first payer in To when the account has no contact address)."""
        profile = self.profiles.get(account_id)
        seen: set[str] = set()
        to: list[str] = []
        cc: list[str] = []
        if profile is not None and profile[1]:
            to.append(profile[1])
            seen.add(profile[1].lower())
        for email in sorted(self.payer_emails.get(account_id, ())):
            if email.lower() not in seen:
                seen.add(email.lower())
                (cc if to else to).append(email)
        name = profile[0] if profile is not None else "customer"
        return name, to, cc

    def method(self, notice: PaymentNotice) -> dict[str, str] | None:
        found = self.methods.get((notice.account_id, notice.method_id))
        if found is None:
            known = notice.method_brand.lower() not in ("", "unknown")
            return {"brand": _brand(notice.method_brand), "last4": ""} if known else None
        brand_name, last4, wallet = found
        brand = _brand(brand_name)
        if wallet:
            brand = f"{_WALLETS.get(wallet, wallet)} ({brand})"
        # Only ever the last four digits: a longer value here would be a bug upstream.
        return {"brand": brand, "last4": last4 if last4 and len(last4) == 4 else ""}


def decode_notice(payload: bytes) -> PaymentNotice:
    """A payment outbox row's payload; raises ``msgspec.DecodeError`` if it is not one."""
    return _decoder.decode(payload)


async def load_contacts(
    connection: AsyncConnection, notices: Iterable[PaymentNotice]
) -> PaymentContacts:
    """Profiles, payers and payment methods of ``notices``' accounts, in ONE statement (a
    UNION ALL of the three lookups, told apart by their first column)."""
    contacts = PaymentContacts()
    notices = list(notices)
    if not notices:
        return contacts
    account_ids = sorted({n.account_id for n in notices})
    method_ids = sorted({n.method_id for n in notices})
    text = sa.String()
    none = sa.cast(sa.null(), text)
    ap, pa, p, m = account_profiles.c, payer_accounts.c, payers.c, payment_methods.c

    def raw(column: Any) -> Any:
        # The union's column types come from its first part; sealed values are read as
        # stored and opened below, part by part.
        return sa.type_coerce(column, sa.Text)

    statement = sa.union_all(
        sa.select(sa.literal("profile", text), ap.account_id, none, raw(ap.name),
                  raw(ap.email), none)
        .where(ap.account_id.in_(account_ids)),
        sa.select(sa.literal("payer", text), pa.account_id, none, raw(p.email), none, none)
        .select_from(payer_accounts.join(payers, p.id == pa.payer_id))
        .where(pa.account_id.in_(account_ids)),
        sa.select(sa.literal("method", text), m.account_id, m.id, m.brand, m.last4, m.wallet)
        .where(m.id.in_(method_ids)),
    )  # fmt: skip
    keyring = keyring_of(connection)
    for part, account_id, key, first, second, third in await connection.execute(statement):
        if part == "profile":
            contacts.profiles[account_id] = (
                keyring.open_text("account_profiles.name", first),
                keyring.open_text("account_profiles.email", second),
            )
        elif part == "payer":
            contacts.payer_emails.setdefault(account_id, []).append(
                keyring.open_text("payers.email", first)
            )
        else:
            contacts.methods[(account_id, key)] = (first, second, third)
    return contacts


def render_payment_notice(
    kind: str, notice: PaymentNotice, contacts: PaymentContacts, *, public_url: str
) -> OutboxEmail:
    """The email for one payment notice, from contacts loaded for its batch. Raises
    ``LookupError`` when the account has nobody to write to."""
    assert kind in PAYMENT_KINDS, kind
    name, to, cc = contacts.recipients(notice.account_id)
    if not to:
        raise LookupError(f"account {notice.account_id} has no contact email and no payers")
    context: dict[str, object] = {
        "account_name": name, "payment_id": notice.payment_id,
        "amount_minor": notice.amount_minor, "currency": notice.currency,
        "method": contacts.method(notice),
        "outstanding_minor": notice.outstanding_minor, "credit_minor": notice.credit_minor,
        "description": notice.description,
    }  # fmt: skip
    if kind == KIND_PAYMENT_SUCCEEDED:
        context["paid_on"] = _date(notice.at_ms)
        context["allocations"] = [
            {"invoice_id": invoice_id, "invoice_number": number or invoice_id,
             "amount_minor": amount_minor}
            for invoice_id, number, amount_minor in notice.allocations
        ]  # fmt: skip
        context["unapplied_minor"] = notice.unapplied_minor
        template = "payment_succeeded"
    else:
        hard, reason, advice = decline_wording(notice)
        context.update(hard=hard, reason=reason, advice=advice,
                       action_required=notice.status == "requires_action")  # fmt: skip
        template = "payment_declined"
    rendered = render_email(template, context, public_url=public_url)
    return OutboxEmail(
        to=tuple(to), cc=tuple(cc), subject=rendered.subject, text=rendered.text,
        html=rendered.html,
    )  # fmt: skip


async def render_payment_email(
    connection: AsyncConnection, *, kind: str, payload: bytes, public_url: str
) -> OutboxEmail:
    """The email for one payment outbox row (a batch of one; the sender batches). Raises
    ``LookupError`` when the account has nobody to write to."""
    notice = decode_notice(payload)
    contacts = await load_contacts(connection, [notice])
    return render_payment_notice(kind, notice, contacts, public_url=public_url)
