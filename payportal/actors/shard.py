"""Account shards: many accounts per Ray actor, each account's commands applied in order.

The model (docs/design.md decisions 1-3): a shard owns the accounts that hash to it. It takes
a batch of commands, loads any account it does not hold from its checkpoint and journal,
then applies every command synchronously through the engine: there is no ``await``
between reading an account's state and writing it back, so one account's commands run
one at a time, exactly as if it had an actor of its own. The whole batch's events are
committed in one transaction (group commit), and only then is the batch answered.
Commits are pipelined: batch N+1 is applied in memory while batch N commits, and its
commit starts once N's has finished, so commits land strictly in batch order.

Rules:
- Nothing is answered before it is durable: a batch's reply waits for its own commit,
  which waits for every commit before it. If a commit fails the in-memory state is
  ahead of the database, so the process exits and Ray restarts it from what is durable;
  commits queued behind the failed one are aborted unwritten and never answered. The
  caller's call is retried by Ray and the engine's idempotency makes that safe.
- Checkpoints are coalesced: an account is checkpointed after many events or a little
  time, not after every command, and recovery replays the journal past the checkpoint.
  A checkpoint writes the account's core and only the payments its events touched since
  the previous one (or that the journal replayed at its load touched), so a hot
  account's checkpoint costs what changed, not everything it ever had.
- Idle accounts are checkpointed and evicted, so memory follows active accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from payportal.engine import (
    AccountState,
    AttemptOutcomeUnknown,
    Command,
    CreatePayment,
    Decision,
    Entry,
    Event,
    IssueInvoice,
    VoidInvoice,
    decide,
    evolve,
)
from payportal.metrics._shard import ShardMetrics

from .feed import BalanceFeed, FeedChange
from .protocol import BATCH_DECODER, REPLIES_ENCODER, Balance, Reply

__all__ = ["AccountShardCore", "CommitAborted", "ShardOptions"]

log = logging.getLogger(__name__)

# Exit status of a shard that stopped because a commit failed (EX_SOFTWARE).
EXIT_COMMIT_FAILED = 70


class ShardOptions(msgspec.Struct, frozen=True, kw_only=True):
    # Replay after a crash reads at most this many events per account past its checkpoint.
    # A checkpoint now writes the payments changed since the previous one, not the whole
    # history, so this no longer trades replay against re-writing everything. It trades
    # replay (~5 µs of CPU per event decoded and applied: ~1 ms per account at 256)
    # against writing a payment again each time it changes across a checkpoint; with 40 %
    # of payments on one account (benchmarks/checkpoints.py) checkpoints wrote 860 B per
    # payment at 64 events, 500 at 256 and 420 at 1024. 256 takes most of that saving and
    # keeps a restarted shard's replay short across all of its busy accounts.
    checkpoint_every_events: int = 256
    # ...and a hot account's checkpoint is never older than this. The event count is what
    # bounds replay; this only catches an account that changes a little, often. When a
    # checkpoint was the whole account state, checkpointing every hot account every 2 s
    # (the old value) cost ~70 µs of CPU per payment in the shard benchmark, mostly
    # PostgreSQL's.
    checkpoint_interval_ms: int = 60_000
    # Accounts untouched this long leave memory (after a checkpoint).
    idle_evict_ms: int = 10 * 60_000
    # How often the shard looks for idle accounts, in batches.
    evict_scan_every_batches: int = 1_000


class _Pending(msgspec.Struct, kw_only=True):
    version_before: int
    events: list[Event]
    entries: list[Entry]
    entry_versions: list[int]


class _Tracked(msgspec.Struct, kw_only=True):
    events_since_checkpoint: int = 0
    checkpoint_at_ms: int = 0
    used_at_ms: int = 0
    # Payments whose checkpoint rows are behind memory: the next checkpoint writes these.
    # None: every payment (loaded from a checkpoint that carried them inline, or from a
    # store that does not say), which that checkpoint then gives rows of their own.
    payments_changed: set[str] | None = msgspec.field(default_factory=set)


class CommitAborted(RuntimeError):
    """An earlier commit failed, and this batch was applied on top of what it lost."""


class AccountShardCore:
    """The shard's logic, free of Ray so it can be driven directly in tests."""

    def __init__(
        self,
        shard_id: int,
        store: Any,
        *,
        options: ShardOptions | None = None,
        clock_ms: Callable[[], int] | None = None,
        rng: random.Random | None = None,
        on_commit_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.shard_id = shard_id
        self._store = store
        self._options = options or ShardOptions()
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        # Jitter only spreads retries in time; it needs no cryptographic strength.
        self._rng = rng or random.Random()  # noqa: S311
        self._on_commit_failure = on_commit_failure or _exit_for_restart
        self._accounts: dict[str, AccountState] = {}
        self._tracked: dict[str, _Tracked] = {}
        # Held while a batch is applied in memory (and its commit queued), not while it
        # commits: batch N+1 is applied while batch N's commit is in flight.
        self._lock = asyncio.Lock()
        # The newest queued commit; each commit waits for the one before it.
        self._last_commit: asyncio.Future[None] | None = None
        # Bumped by a failed commit: commits queued before it then abort unwritten.
        self._generation = 0
        self._started = False
        self._batches = 0
        self.stats: dict[str, int] = {"batches": 0, "commands": 0, "events": 0, "loads": 0}
        self.metrics = ShardMetrics()
        # Committed balance changes, for the front doors' in-memory balances.
        self.feed = BalanceFeed()
        # Told, after a commit that scheduled a retry or left an outcome unknown, when the
        # retry janitor next has work (unix ms), so it need not look often to be on time.
        self.on_janitor_work: Callable[[int], None] | None = None

    @property
    def store(self) -> Any:
        return self._store

    @property
    def accounts_in_memory(self) -> int:
        return len(self._accounts)

    async def apply(self, batch: bytes) -> bytes:
        commands = BATCH_DECODER.decode(batch)
        async with self._lock:
            if not self._started:
                self._started = True
                # A store that projects read models does so in the background, catching
                # up first with whatever a previous incarnation left unprojected.
                start_projection = getattr(self._store, "start_projection", None)
                if start_projection is not None:
                    start_projection(self.shard_id)
            replies, commit = await self._apply_locked(commands)
            self._batches += 1
            if self._batches % self._options.evict_scan_every_batches == 0:
                await self._evict_idle()
        # Answered only once this batch (and so every batch before it) is durable. Shielded:
        # a caller that gives up does not cancel a commit others are queued behind.
        await asyncio.shield(commit)
        return replies

    async def _apply_locked(
        self, commands: list[Command]
    ) -> tuple[bytes, asyncio.Future[None]]:
        # Taken before any await: a commit that fails meanwhile clears the memory this
        # batch reads, and the batch must then abort rather than answer from it.
        generation = self._generation
        await self._activate({c.account_id for c in commands})
        now_ms = self._clock_ms()
        pending: dict[str, _Pending] = {}
        replies: list[msgspec.Raw] = []
        rng = self._rng
        accounts = self._accounts
        metrics = self.metrics
        metrics.batch_commands.observe(len(commands))
        # From here to queuing the commit nothing awaits: each account's commands apply in
        # order, and the commit's rows are built from the states as this batch left them.
        for command in commands:
            account_id = command.account_id
            before = accounts.get(account_id)
            version_before = before.version if before is not None else 0
            decision = decide(before, command, now_ms, rng)
            after = before
            if decision.events:
                change = pending.get(account_id)
                if change is None:
                    change = pending[account_id] = _Pending(
                        version_before=version_before, events=[], entries=[], entry_versions=[]
                    )
                # The engine's ``execute``, unrolled to learn which event posted each entry.
                for event in decision.events:
                    watched = metrics.unfinished_payment(after, event)
                    after, posted = evolve(after, event)
                    if watched is not None:
                        metrics.after_event(after, watched)
                    if posted is not None:
                        change.entries.append(posted)
                        change.entry_versions.append(after.version)
                change.events.extend(decision.events)
                assert after is not None
                accounts[account_id] = after
            # Encoded now: later commands in the batch may change the same payment.
            replies.append(msgspec.Raw(REPLIES_ENCODER.encode(_reply(after, command, decision))))
        for account_id in {c.account_id for c in commands}:
            self._tracked.setdefault(
                account_id, _Tracked(checkpoint_at_ms=now_ms)
            ).used_at_ms = now_ms
        self.stats["batches"] += 1
        self.stats["commands"] += len(commands)
        # Queued even with nothing to write: a reply read from memory (``exists``, a
        # rejection) may rest on an earlier batch's events, so it too waits for them.
        changes = self._changes(pending, now_ms)
        # The balances as this batch leaves them, published once its commit is durable
        # (later batches may change the live states before then).
        changed = [
            (c.account_id, c.state.version, c.state.outstanding_minor, c.state.credit_minor,
             c.state.currency)
            for c in changes
        ]  # fmt: skip
        commit = self._queue_commit(changes, generation, changed, _janitor_due_ms(changes, now_ms))
        return REPLIES_ENCODER.encode(replies), commit

    async def _activate(self, account_ids: set[str]) -> None:
        missing = [a for a in account_ids if a not in self._accounts]
        if not missing:
            return
        load_tracked = getattr(self._store, "load_account_tracked", None)
        if load_tracked is not None:
            loaded = await asyncio.gather(*(load_tracked(a) for a in missing))
        else:
            states = await asyncio.gather(*(self._store.load_account(a) for a in missing))
            loaded = [(state, None) for state in states]
        self.stats["loads"] += len(missing)
        now_ms = self._clock_ms()
        for account_id, (state, unsaved) in zip(missing, loaded, strict=True):
            if state is not None:
                self._accounts[account_id] = state
                tracked = self._tracked.get(account_id)
                if tracked is None:
                    tracked = self._tracked[account_id] = _Tracked(checkpoint_at_ms=now_ms)
                tracked.payments_changed = unsaved

    def _changes(self, pending: dict[str, _Pending], now_ms: int) -> list[Any]:
        from payportal.persistence import AccountChange

        changes = []
        for account_id, change in pending.items():
            tracked = self._tracked.setdefault(account_id, _Tracked(checkpoint_at_ms=now_ms))
            tracked.events_since_checkpoint += len(change.events)
            changed = tracked.payments_changed
            if changed is not None:
                for event in change.events:
                    payment_id = getattr(event, "payment_id", None)
                    if payment_id is not None:
                        changed.add(payment_id)
            checkpoint = (
                tracked.events_since_checkpoint >= self._options.checkpoint_every_events
                or now_ms - tracked.checkpoint_at_ms >= self._options.checkpoint_interval_ms
            )
            if checkpoint:
                # Counted from now: if the commit fails, memory (and this) is forgotten.
                tracked.events_since_checkpoint = 0
                tracked.checkpoint_at_ms = now_ms
                tracked.payments_changed = set()
            changes.append(
                AccountChange(
                    account_id=account_id,
                    version_before=change.version_before,
                    events=change.events,
                    entries=change.entries,
                    state=self._accounts[account_id],
                    checkpoint=checkpoint,
                    checkpoint_payments=changed if checkpoint else None,
                    entry_versions=change.entry_versions,
                )
            )
        return changes

    def _queue_commit(
        self, changes: list[Any], generation: int, changed: list[FeedChange] | None = None,
        janitor_due_ms: int | None = None,
    ) -> asyncio.Future[None]:
        """Queue ``changes`` to commit after every commit queued before them."""
        write: Callable[[], Awaitable[None]] | None = None
        prepare = getattr(self._store, "prepare", None)
        if not changes:
            pass
        elif prepare is not None:
            # Rows (checkpoint states, read-model snapshots) built now, before later
            # batches change the same accounts in memory.
            rows = prepare(self.shard_id, changes)
            write = lambda: self._store.write(rows)  # noqa: E731
        else:
            write = lambda: self._store.commit(self.shard_id, changes)  # noqa: E731
        events = sum(len(c.events) for c in changes)
        commit = asyncio.ensure_future(
            self._commit_in_order(
                self._last_commit, write, generation, events, changed or [], janitor_due_ms
            )
        )
        self._last_commit = commit
        return commit

    async def _commit_in_order(
        self,
        previous: asyncio.Future[None] | None,
        write: Callable[[], Awaitable[None]] | None,
        generation: int,
        events: int,
        changed: list[FeedChange],
        janitor_due_ms: int | None = None,
    ) -> None:
        if previous is not None:
            # Its failure is its own batch's to report; this one only needs it finished.
            with contextlib.suppress(BaseException):
                await previous
        if generation != self._generation:
            raise CommitAborted(f"shard {self.shard_id}: an earlier commit failed")
        if write is None:
            return
        started = time.perf_counter()
        try:
            await write()
        except BaseException as error:
            log.exception("shard %s: commit failed; stopping to recover from disk", self.shard_id)
            # The memory is ahead of the disk now: forget it before anything else reads it,
            # and abort every commit queued behind this one, unwritten.
            self._generation += 1
            self._accounts.clear()
            self._tracked.clear()
            self._on_commit_failure(error)
            raise
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.stats["events"] += events
        if changed:
            self.feed.publish(changed)
        if janitor_due_ms is not None and self.on_janitor_work is not None:
            self.on_janitor_work(janitor_due_ms)

    async def _drain(self) -> None:
        """Wait until every queued commit has finished (whatever its result)."""
        if self._last_commit is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._last_commit)

    async def _evict_idle(self) -> None:
        from payportal.persistence import AccountChange

        now_ms = self._clock_ms()
        idle = [
            account_id
            for account_id, tracked in self._tracked.items()
            if now_ms - tracked.used_at_ms >= self._options.idle_evict_ms
        ]
        if not idle:
            return
        # An account leaves memory only once its last events are durable.
        await self._drain()
        # Checkpoint before leaving memory, so the next activation replays nothing.
        dirty = [
            AccountChange(
                account_id=a, version_before=self._accounts[a].version, events=[], entries=[],
                state=self._accounts[a], checkpoint=True,
                checkpoint_payments=self._tracked[a].payments_changed,
            )
            for a in idle
            if a in self._accounts and self._tracked[a].events_since_checkpoint > 0
        ]  # fmt: skip
        if dirty:
            await self._store.commit(self.shard_id, dirty)
        for account_id in idle:
            self._accounts.pop(account_id, None)
            self._tracked.pop(account_id, None)

    async def flush_checkpoints(self) -> int:
        """Checkpoint every account with events past its checkpoint (on shutdown)."""
        from payportal.persistence import AccountChange

        async with self._lock:
            await self._drain()
            dirty = [
                AccountChange(
                    account_id=a, version_before=s.version, events=[], entries=[], state=s,
                    checkpoint=True, checkpoint_payments=self._tracked[a].payments_changed,
                )
                for a, s in self._accounts.items()
                if self._tracked.get(a, _Tracked()).events_since_checkpoint > 0
            ]  # fmt: skip
            if dirty:
                await self._store.commit(self.shard_id, dirty)
                for change in dirty:
                    tracked = self._tracked[change.account_id]
                    tracked.events_since_checkpoint = 0
                    tracked.payments_changed = set()
            return len(dirty)

    def account(self, account_id: str) -> AccountState | None:
        return self._accounts.get(account_id)

    def metrics_snapshot(self) -> dict[str, Any]:
        """Counters and histograms for the front door's ``/metrics`` (plain data)."""
        return self.metrics.snapshot(
            shard_id=self.shard_id, accounts_in_memory=len(self._accounts), **self.stats
        )


def _reply(state: AccountState | None, command: Command, decision: Decision) -> Reply:
    if state is None:
        return Reply(outcome=decision.outcome)
    outcome = decision.outcome
    payment = state.payments.get(outcome.payment_id) if outcome.payment_id else None
    invoice_id = outcome.invoice_id
    if invoice_id is None and isinstance(command, IssueInvoice | VoidInvoice):
        invoice_id = command.invoice_id
    invoice = state.invoices.get(invoice_id) if invoice_id else None
    if payment is None and isinstance(command, CreatePayment):
        payment = state.payments.get(command.payment_id)
    balance = Balance(
        outstanding_minor=state.outstanding_minor,
        credit_minor=state.credit_minor,
        currency=state.currency,
    )
    return Reply(
        outcome=outcome, payment=payment, invoice=invoice, balance=balance, version=state.version
    )


def _janitor_due_ms(changes: list[Any], now_ms: int) -> int | None:
    """The earliest time the retry janitor has work from these changes: a retry they
    scheduled, or now for an outcome they left unknown; None when they gave it none."""
    due: int | None = None
    for change in changes:
        for event in change.events:
            if isinstance(event, AttemptOutcomeUnknown):
                at_ms: int | None = now_ms
            else:
                at_ms = getattr(event, "next_retry_at_ms", None)
            if at_ms is not None and (due is None or at_ms < due):
                due = at_ms
    return due


def _exit_for_restart(error: BaseException) -> None:
    # A crash, not a clean exit: Ray restarts crashed actors (max_restarts=-1) but not
    # ones that exit on purpose, and the restart is what brings back durable state.
    logging.shutdown()
    os._exit(EXIT_COMMIT_FAILED)
