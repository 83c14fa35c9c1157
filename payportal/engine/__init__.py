"""The engine of money: pure, synchronous and deterministic.

Everything that decides what happens to an account's money lives here and nowhere else:
money, invoices, payments and their attempts, allocation, the ledger, the retry policy,
revenue recognition and settlement.
No I/O, no clock, no random source of its own: time and randomness are arguments, so
the same inputs always give the same outputs, in a test, a simulation or a shard.
"""

from .account import (
    AccountState,
    Attempt,
    Decision,
    Invoice,
    InvoiceStatus,
    Payment,
    check_invariants,
    decide,
    evolve,
    execute,
    preview_allocation,
    utc_date,
)
from .allocation import Allocation, AllocationResult, OpenInvoice, allocate
from .ledger import Entry, LedgerAccount, Line, Side
from .messages import *  # noqa: F403 - the vocabulary is the package's public face
from .messages import __all__ as _messages_all
from .money import CURRENCY_EXPONENTS, Money, currency_is_valid, format_minor
from .payment_state import PAYMENT_TRANSITIONS, AttemptStatus, PaymentEvent, PaymentStatus
from .rejections import Rejection
from .retry_policy import (
    DeclineClass,
    Initiator,
    Network,
    RetryPolicy,
    RetrySchedule,
    classify,
    next_delay_ms,
)

__all__ = [
    "CURRENCY_EXPONENTS",
    "PAYMENT_TRANSITIONS",
    "AccountState",
    "Allocation",
    "AllocationResult",
    "Attempt",
    "AttemptStatus",
    "DeclineClass",
    "Decision",
    "Entry",
    "Initiator",
    "Invoice",
    "InvoiceStatus",
    "LedgerAccount",
    "Line",
    "Money",
    "Network",
    "OpenInvoice",
    "Payment",
    "PaymentEvent",
    "PaymentStatus",
    "Rejection",
    "RetryPolicy",
    "RetrySchedule",
    "Side",
    "allocate",
    "check_invariants",
    "classify",
    "currency_is_valid",
    "decide",
    "evolve",
    "execute",
    "format_minor",
    "next_delay_ms",
    "preview_allocation",
    "utc_date",
    *_messages_all,
]
