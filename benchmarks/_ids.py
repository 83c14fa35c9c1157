"""The ids the end-to-end benchmark seeds and sends, the same on every server under test:
account ``i`` is ``acct_bench000042`` and its saved card ``pm_bench000042``, so the load
generator addresses any account by its index, with no list to ship between processes."""

from __future__ import annotations

__all__ = ["ACCOUNT_PREFIX", "METHOD_PREFIX", "WIDTH", "account_id", "payment_method_id"]

# "acct_" is payportal's account prefix; no underscore follows it, so ids of an account's
# payments ("pay_bench000042_…") split back into the account unambiguously.
ACCOUNT_PREFIX = "acct_bench"
METHOD_PREFIX = "pm_bench"
WIDTH = 6  # up to 1,000,000 accounts


def account_id(index: int) -> str:
    return f"{ACCOUNT_PREFIX}{index:0{WIDTH}d}"


def payment_method_id(index: int) -> str:
    return f"{METHOD_PREFIX}{index:0{WIDTH}d}"
