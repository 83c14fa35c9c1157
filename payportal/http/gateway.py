"""The processor gateway: one attempt's charge, outside the account's critical section.

The model (docs/design.md decisions 5 and 6): the shard has already journaled the payment as
``processing`` and the account is free again. The gateway calls the processor with the
attempt id as the processor's idempotency key, under a timeout, and feeds the answer
back to the shard as a ``RecordOutcome`` — a new command in the account's serial order.
A timeout, a dropped connection or an answer we cannot trust is ``unknown``: the
payment stays ``processing`` and is resolved by status inquiry, never by a new charge.

Seams for what comes next: the retry timer calls ``charge_attempt`` for a due retry
(same method, the engine's new or re-sent attempt), the inquiry janitor calls
``inquire_attempt``, and processor callbacks submit ``RecordOutcome`` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from payportal.actors import Reply, ShardRouter
from payportal.engine import Attempt, AttemptStatus, OutcomeKind, Payment, RecordOutcome, Result
from payportal.processors import ChargeResult, ProcessorAdapter
from payportal.processors.adapter import NextAction
from payportal.processors.charging import charge_attempt

__all__ = ["CHARGE_TIMEOUT_MS_DEFAULT", "Gateway", "RecentOutcomes", "TokenLookup"]

log = structlog.get_logger("payportal.http.gateway")

# Longer than the adapter's own timeout would be pointless; shorter keeps a payer's
# request from hanging on a stuck processor. The outcome is then unknown, not failed.
CHARGE_TIMEOUT_MS_DEFAULT: Final = 15_000

# The processor token of a payment method id, or None when there is none.
TokenLookup = Callable[[str], Awaitable[str | None]]


class RecentOutcomes:
    """Outcomes this process recorded from the processor's own replies, remembered for a
    while: the callback that reports the same outcome moments later is then answered as
    the duplicate it is without a hop to the shard (which would answer ``exists``). Only
    an outcome identical in kind, charge and decline code matches; anything else goes to
    the engine, which decides."""

    ENTRIES_MAX: Final = 100_000
    # How long a callback waits for this process's own charge of its attempt to be
    # recorded: the processor sends it as it decides, often before its reply arrives.
    CHARGE_WAIT_S: Final = 2.0

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, OutcomeKind, str | None, str | None], None] = (
            OrderedDict()
        )
        # Attempts this process is charging now: set when their outcome is recorded.
        self._charging: dict[str, asyncio.Event] = {}

    def charging(self, attempt_id: str) -> None:
        self._charging.setdefault(attempt_id, asyncio.Event())

    def charged(self, attempt_id: str) -> None:
        event = self._charging.pop(attempt_id, None)
        if event is not None:
            event.set()

    async def settled(self, attempt_id: str) -> None:
        """Return once this process is not charging ``attempt_id`` (at most
        ``CHARGE_WAIT_S``): then its outcome, if it recorded one, is in ``recorded``."""
        event = self._charging.get(attempt_id)
        if event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.CHARGE_WAIT_S)

    def add(
        self, attempt_id: str, outcome: OutcomeKind, charge_id: str | None,
        decline_code: str | None,
    ) -> None:  # fmt: skip
        self._seen[(attempt_id, outcome, charge_id, decline_code)] = None
        if len(self._seen) > self.ENTRIES_MAX:
            self._seen.popitem(last=False)

    def recorded(
        self, attempt_id: str, outcome: OutcomeKind, charge_id: str | None,
        decline_code: str | None,
    ) -> bool:  # fmt: skip
        return (attempt_id, outcome, charge_id, decline_code) in self._seen


# Outcomes final for their attempt: a callback can only repeat them.
_REMEMBERED: Final = frozenset({OutcomeKind.succeeded, OutcomeKind.declined})


class RecentActions:
    """The ``next_action`` of attempts this process charged lately, in memory only (the
    URL may carry a secret: never journaled, never stored), so the answer to the payer's
    own request needs no second trip to the processor. A miss asks the processor."""

    ENTRIES_MAX: Final = 10_000

    def __init__(self) -> None:
        self._actions: OrderedDict[str, NextAction] = OrderedDict()

    def add(self, attempt_id: str, action: NextAction) -> None:
        self._actions[attempt_id] = action
        if len(self._actions) > self.ENTRIES_MAX:
            self._actions.popitem(last=False)

    def get(self, attempt_id: str) -> NextAction | None:
        return self._actions.get(attempt_id)

    def forget(self, attempt_id: str) -> None:
        self._actions.pop(attempt_id, None)


class Gateway:
    def __init__(
        self,
        router: ShardRouter,
        processor: ProcessorAdapter | None,
        token_for: TokenLookup,
        *,
        charge_timeout_ms: int = CHARGE_TIMEOUT_MS_DEFAULT,
        recent: RecentOutcomes | None = None,
    ) -> None:
        assert charge_timeout_ms > 0
        self._router = router
        self._processor = processor
        self._token_for = token_for
        self._timeout_s = charge_timeout_ms / 1000
        self.recent = recent or RecentOutcomes()
        self.actions = RecentActions()

    @staticmethod
    def needs_charge(payment: Payment) -> bool:
        """The current attempt was journaled but not yet answered by the processor."""
        return payment.current_attempt.status is AttemptStatus.processing

    async def charge_attempt(
        self, reply: Reply, account_id: str, *, answers_request: bool = False
    ) -> Reply:
        """Charge the payment's current attempt and record the outcome; the shard's reply
        to that ``RecordOutcome`` (with the payment after it) is returned. With
        ``answers_request`` the engine also keeps the payment as it leaves it as the answer
        to the request that created it."""
        payment = reply.payment
        assert payment is not None
        attempt = payment.current_attempt
        assert attempt.status is AttemptStatus.processing, attempt
        self.recent.charging(attempt.attempt_id)
        try:
            return await self._charge_and_record(payment, attempt, account_id, answers_request)
        finally:
            self.recent.charged(attempt.attempt_id)

    async def _charge_and_record(
        self, payment: Payment, attempt: Attempt, account_id: str, answers_request: bool
    ) -> Reply:
        result = await self._charge(payment, attempt.attempt_id)
        if result.next_action is not None:
            self.actions.add(attempt.attempt_id, result.next_action)
        command = RecordOutcome(
            account_id=account_id, payment_id=payment.payment_id,
            attempt_id=attempt.attempt_id, outcome=result.outcome, charge_id=result.charge_id,
            decline_code=result.decline_code, visa_category=result.visa_category,
            advice_code=result.advice_code, amount_minor=result.amount_minor,
            currency=result.currency.upper() if result.currency else None,
            answers_request=answers_request,
        )  # fmt: skip
        # A success is the common case and in the journal; the rest is worth a line.
        (log.debug if result.outcome is OutcomeKind.succeeded else log.info)(
            "attempt_outcome", payment_id=payment.payment_id, attempt_id=attempt.attempt_id,
            outcome=result.outcome.value, decline_code=result.decline_code,
        )  # fmt: skip
        recorded = await self._router.submit(command)
        if recorded.outcome.result is not Result.rejected and result.outcome in _REMEMBERED:
            self.recent.add(attempt.attempt_id, result.outcome, result.charge_id,
                            result.decline_code)  # fmt: skip
        return recorded

    async def _charge(self, payment: Payment, attempt_id: str) -> ChargeResult:
        if self._processor is None:
            # No processor configured: nothing was sent, so sending later is safe.
            return ChargeResult(outcome=OutcomeKind.errored, decline_code="processor_unavailable")
        token = await self._token_for(payment.payment_method.id)
        return await charge_attempt(
            self._processor, token, payment, attempt_id, timeout_s=self._timeout_s
        )

    async def next_action(self, payment: Payment) -> NextAction | None:
        """What the payer's client must do for ``payment`` now: the processor's challenge
        while its current attempt waits for one; None otherwise, or when the processor
        cannot say (the client asks again; the status stays ``requires_action``)."""
        attempt = payment.current_attempt
        if attempt.status is not AttemptStatus.requires_action or self._processor is None:
            return None
        action = self.actions.get(attempt.attempt_id)
        if action is not None:
            return action
        try:
            result = await self._processor.inquire(attempt.attempt_id)
        except Exception:
            log.warning("next_action_unavailable", payment_id=payment.payment_id,
                        attempt_id=attempt.attempt_id)  # fmt: skip
            return None
        if result.outcome is OutcomeKind.requires_action and result.next_action is not None:
            self.actions.add(attempt.attempt_id, result.next_action)
            return result.next_action
        return None

    async def inquire_attempt(self, account_id: str, payment_id: str, attempt_id: str) -> Reply:
        """Ask the processor what became of an attempt and record it (the janitor's seam)."""
        assert self._processor is not None
        result = await self._processor.inquire(attempt_id)
        return await self._router.submit(
            RecordOutcome(
                account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                outcome=result.outcome, charge_id=result.charge_id,
                decline_code=result.decline_code, visa_category=result.visa_category,
                advice_code=result.advice_code,
            )
        )  # fmt: skip
