"""The system simulation's auditor: what must hold across shards, database, processor and
API, checked from the outside after every step and once everything has settled.

It reads only what an operator could: the durable journal and checkpoints, the
processor's own records, and the answers the API gave. Per account, a
``JournalAuditor`` recomputes the money from the journal by the contract's rules, and the
state a restarted shard would load (checkpoint and journal, the real loading path) must
equal both that model and a plain replay of the journal. Across the system:

- every payment the API acknowledged exists, once, under its idempotency key, and is
  at least as far along as the answer said (a success answered is a capture journaled);
- a payment is captured at the processor under one attempt key at most, and journaled as
  captured at most once; every journaled capture is one the processor made, with its
  charge and amount;
- money is conserved: what the journal captured equals what invoices were paid plus the
  account credit plus what refunds took back from credit; refunds journaled never exceed
  refunds made at the processor (once settled they are equal, but for one known gap:
  a refund made at the processor whose payment was disputed before the refund reached
  the account is refused by the engine, and is counted instead);
- the processor never saw an idempotency key reused for another request, nor a card
  charged again after its network said never (or sooner than it said);
- nothing failed that no injected fault explains.

Once faults stop and the world has been driven until quiet: every capture the processor
made is journaled, every refund and dispute too, and no payment is left processing or
overdue.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec

from payportal.engine import AccountState, AttemptStatus, InvoiceStatus, check_invariants, evolve

from .auditor import AuditError, JournalAuditor
from .system_world import World

__all__ = ["SystemAuditor"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AuditError(message)


def _canonical(state: AccountState | None) -> bytes:
    # Sorted maps: a state put back together from a checkpoint holds its payments in
    # another order than the live one, which means nothing.
    return msgspec.msgpack.encode(state, order="deterministic")


class SystemAuditor:
    def __init__(self, world: World) -> None:
        self._world = world
        self.accounts = {a: JournalAuditor(a) for a in world.account_ids}
        # (account id, scoped idempotency key) -> payment ids the API answered with, and
        # the furthest status an answer reported.
        self._acked: dict[tuple[str, str], set[str]] = {}
        self._acked_succeeded: set[str] = set()
        # Per account: the journal replayed (alone, event by event) and the database
        # revision last checked; an account nothing was written to since is not checked
        # again.
        self._replayed: dict[str, AccountState | None] = dict.fromkeys(world.account_ids)
        self._checked: dict[str, int] = {}
        self.checks = 0

    # -- what the API said --------------------------------------------------------------

    def acknowledged(self, account_id: str, key: str, payment: dict[str, Any]) -> None:
        self._acked.setdefault((account_id, key), set()).add(payment["id"])
        if payment["status"] in ("succeeded", "partially_refunded", "refunded", "disputed"):
            self._acked_succeeded.add(payment["id"])

    @property
    def acknowledged_payments(self) -> int:
        return len(self._acked)

    # -- after every step ---------------------------------------------------------------

    def check(self) -> None:
        world = self._world
        _check(not world.errors, f"unexplained failures: {world.errors}")
        _check(not world.processor.findings, f"the processor saw: {world.processor.findings}")
        self.checks += 1
        for account_id, auditor in self.accounts.items():
            self._check_account(account_id, auditor)
        self._check_acknowledged()
        self._check_against_processor()

    def _check_account(self, account_id: str, auditor: JournalAuditor) -> None:
        db = self._world.db
        revision = db.revisions[account_id]
        if self._checked.get(account_id) == revision:
            return
        self._checked[account_id] = revision
        replayed = self._replayed[account_id]
        for version, event in db.events(account_id, after_version=auditor.version):
            auditor.follow(version, event)
            replayed, _ = evolve(replayed, event)
        self._replayed[account_id] = replayed
        try:
            loaded, _ = db.load(account_id)
        except AssertionError as error:
            raise AuditError(f"{account_id} does not load: {error!r}") from error
        _check(
            _canonical(loaded) == _canonical(replayed),
            f"{account_id}: loading from its checkpoint does not give the journal's state",
        )
        try:
            auditor.compare(loaded)
        except AuditError as error:
            raise AuditError(f"{account_id}: {error}") from None
        if loaded is None:
            return
        check_invariants(loaded)
        # A dispute takes back what it reopened and its own credit; the rest of it was
        # spent on invoices that stay paid (written off to ``disputes``).
        captured_minor = sum(
            p.amount_minor - p.disputed_from_credit_minor
            - sum(r.amount_minor for r in p.reopened)
            for p in loaded.payments.values()
            if any(a.status is AttemptStatus.succeeded for a in p.attempts)
        )  # fmt: skip
        paid_minor = sum(i.amount_paid_minor for i in loaded.invoices.values()
                         if i.status is not InvoiceStatus.void)  # fmt: skip
        from_credit_minor = sum(p.refunded_from_credit_minor for p in loaded.payments.values())
        _check(
            captured_minor == paid_minor + loaded.credit_minor + from_credit_minor,
            f"{account_id}: captured {captured_minor} != invoices paid {paid_minor} + credit "
            f"{loaded.credit_minor} + refunded from credit {from_credit_minor}",
        )

    def _check_acknowledged(self) -> None:
        for (account_id, key), payment_ids in self._acked.items():
            _check(len(payment_ids) == 1, f"key {key} was answered with {sorted(payment_ids)}")
            (payment_id,) = payment_ids
            durable = self.accounts[account_id].payment_by_key.get(key)
            _check(
                durable == payment_id,
                f"the API answered {payment_id} for key {key}; the journal holds {durable}",
            )
            if payment_id in self._acked_succeeded:
                _check(
                    self.accounts[account_id].payments[payment_id].captures == 1,
                    f"the API answered {payment_id} as captured; the journal has no capture",
                )

    def _check_against_processor(self) -> None:
        charges = self._world.processor.charges
        captured_keys: dict[str, list[str]] = {}
        refunded_at_processor: Counter[str] = Counter()
        for charge in charges.values():
            if charge.status == "succeeded":
                captured_keys.setdefault(charge.payment_id, []).append(charge.key)
                refunded_at_processor[charge.charge_id] += charge.refunded_minor
        for payment_id, keys in captured_keys.items():
            _check(len(keys) == 1, f"payment {payment_id} captured at the processor by {keys}")
        for auditor in self.accounts.values():
            for payment_id, (attempt_id, charge_id) in auditor.captured.items():
                charge = charges.get(attempt_id)
                _check(
                    charge is not None and charge.status == "succeeded",
                    f"{payment_id}'s capture by {attempt_id} was never made at the processor",
                )
                assert charge is not None
                payment = auditor.payments[payment_id]
                seen = (charge.payment_id, charge.charge_id, charge.amount_minor)
                _check(
                    seen == (payment_id, charge_id, payment.amount_minor),
                    f"{payment_id}'s capture {(charge_id, payment.amount_minor)} is "
                    f"{seen} at the processor",
                )
                _check(
                    payment.refunded_minor <= charge.refunded_minor,
                    f"{payment_id}: {payment.refunded_minor} refunded in the journal, "
                    f"{charge.refunded_minor} at the processor",
                )

    # -- once everything settled --------------------------------------------------------

    def check_settled(self) -> None:
        self.check()
        world = self._world
        now_ms = world.now_ms()
        journaled = {
            attempt_id
            for auditor in self.accounts.values()
            for attempt_id, _ in auditor.captured.values()
        }
        status_of = {p.payment_id: p.status for a in self.accounts.values()
                     for p in a.payments.values()}  # fmt: skip
        for charge in world.processor.charges.values():
            _check(charge.status != "processing", f"the processor never decided {charge.key}")
            if charge.status == "succeeded":
                _check(
                    charge.key in journaled,
                    f"the processor captured {charge.key} for {charge.payment_id}; "
                    "the journal never recorded it",
                )
            if charge.disputed:
                # A payment refunded in full can no longer be disputed in the journal.
                _check(
                    status_of[charge.payment_id] in ("disputed", "refunded"),
                    f"{charge.payment_id} was disputed at the processor; the journal has it "
                    f"{status_of[charge.payment_id]}",
                )
        for auditor in self.accounts.values():
            for payment in auditor.payments.values():
                where = f"payment {payment.payment_id} ({payment.current.attempt_id})"
                _check(payment.status != "processing", f"{where} is stuck processing")
                if payment.status == "retry_scheduled":
                    assert payment.next_retry_at_ms is not None
                    _check(payment.next_retry_at_ms > now_ms, f"{where}: its retry is overdue")
                if payment.captures:
                    attempt_id, _ = auditor.captured[payment.payment_id]
                    refunded_minor = world.processor.charges[attempt_id].refunded_minor
                    if payment.status == "disputed" and payment.refunded_minor < refunded_minor:
                        # A known gap: the refund reached the processor, then the dispute
                        # reached the account before the refund did, and the engine
                        # refuses to refund a disputed payment. Counted, not failed,
                        # until the refunds path records what the processor did.
                        world.counts["refunds_unrecorded_after_dispute"] += 1
                        continue
                    _check(
                        payment.refunded_minor == refunded_minor,
                        f"{where}: refunded {refunded_minor} at the processor, "
                        f"{payment.refunded_minor} in the journal",
                    )
