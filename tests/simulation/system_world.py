"""The world the system simulation runs the real shards, router, gateway and janitor in.

Everything here stands in for something outside the process under test, at the
narrowest seam that keeps the real code paths:

- ``SimDb`` is the database: the journal with the same unique constraints as
  ``persistence.tables.journal``, checkpoints upserted forward only, the payments and
  attempts read models and ``attempt_inquiries``. Rows come from the real
  ``persistence._rows.build_commit``, and an account is loaded back through the real
  ``_assemble`` and the engine's ``evolve``, as ``persistence.Store`` does.
- ``StoreView`` is one shard process's ``Store``: ``prepare`` / ``write`` / ``commit`` /
  ``load_account_tracked`` / ``start_projection`` as the shard core calls them. A write
  may fail before it became durable or after (the data is there, the caller never heard
  back); a view whose process was killed writes nothing more.
- ``ShardHost`` is a Ray actor handle with Ray's supervision: a crashed shard (killed by
  the simulation, or gone because a commit failed) is rebuilt from the database, and the
  calls it had in flight are sent again (``max_task_retries=-1``): at-least-once. A call
  may also be delivered twice, or its reply lost on the way back.
- ``SimProcessor`` is a ``ProcessorAdapter``: one outcome per idempotency key, declines by
  token, ``inquire``, 5xx before doing anything, timeouts after capture, slow decisions,
  and callbacks duplicated, delayed and reordered, delivered through the real callback
  receiver's ``_apply`` (the step after signature verification).
- ``SimJanitor`` is the real ``RetryJanitor`` with its database queries answered from
  ``SimDb``'s read models; everything else (who retries, what is charged, inquiries and
  their claims) is the real code.
- ``FrontDoor`` is one front-door process: its router, its gateway, the app state the
  real payment handler (``create_and_charge``) reads, and its callback receiver; the
  work it does for requests dies with it when it crashes.

Time is the event loop's (``virtual_loop.VirtualTimeLoop``); every random choice comes
from a ``random.Random`` seeded from the run's seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final, NamedTuple

import msgspec
import sqlalchemy as sa

from payportal.actors import AccountShardCore, ShardOptions, ShardRouter
from payportal.actors.janitor import RetryJanitor, _DueInquiry, _DueRetry
from payportal.engine import AccountState, Event, OutcomeKind, check_invariants, evolve
from payportal.engine.retry_policy import inquiry_delay_ms
from payportal.http.auth import MERCHANT
from payportal.http.cached import ImmutableRows
from payportal.http.callbacks import CallbackBody, CallbackData, _Receiver, _Refused
from payportal.http.gateway import Gateway
from payportal.http.typedefs import CLOCK_MS, GATEWAY, IN_FLIGHT, METHODS, ROUTER, TASKS
from payportal.persistence._rows import (
    COLUMNS,
    CommitRows,
    Projection,
    build_commit,
    project_state,
)
from payportal.persistence._store import _assemble
from payportal.persistence.directory import PaymentMethodRow
from payportal.processors import (
    ChargeResult,
    InquiryStatus,
    ProcessorRequestError,
    RefundResult,
)
from payportal.processors.charging import METADATA_PAYMENT

__all__ = [
    "ATTEMPT_CREATED_AT",
    "FAULT_KINDS",
    "START_MS",
    "TOTALS",
    "Card",
    "Faults",
    "FrontDoor",
    "ReplyLost",
    "ShardHost",
    "SimDb",
    "SimProcessor",
    "World",
    "summary_line",
]

# 2026-01-01T00:00:00Z: any fixed instant keeps a run reproducible from its seed alone.
START_MS: Final = 1_767_225_600_000
PROCESSOR: Final = "sim"
# The gateway's and the janitor's processor timeout (their defaults).
CALL_TIMEOUT_S: Final = 15.0

# Every fault the world injects, counted per kind for the run's summary.
FAULT_KINDS: Final = (
    "shard_crash", "front_door_crash", "commit_failed_before_durable",
    "commit_failed_after_durable", "reply_dropped", "command_duplicated",
    "processor_5xx", "timeout_after_capture", "slow_decision", "inquiry_unanswered",
    "callback_duplicated", "callback_delayed",
)  # fmt: skip

# Figures summed over every seed of the session (read by conftest's terminal summary).
TOTALS: Counter[str] = Counter()

_event_decoder: Final = msgspec.msgpack.Decoder(Event)
_PAYMENT_COLUMNS: Final = {name: i for i, name in enumerate(COLUMNS["payments"])}
_ATTEMPT_COLUMNS: Final = {name: i for i, name in enumerate(COLUMNS["attempts"])}
_ACCOUNT_VERSION: Final = COLUMNS["accounts"].index("version")
ATTEMPT_CREATED_AT: Final = _ATTEMPT_COLUMNS["created_at_ms"]


class ReplyLost(ConnectionError):
    """The shard applied the call, but its answer never reached the caller."""


class ShardKilled(ConnectionError):
    """The shard's process is gone (raised inside a killed incarnation only)."""


class Faults:
    """Which faults happen, drawn from the run's own random stream; ``on = False``
    stops them all (the run's end, when everything must settle)."""

    def __init__(self, rng: random.Random, rates: dict[str, float], counts: Counter[str]) -> None:
        self._rng = rng
        self.rates = rates
        self.counts = counts
        self.on = True

    def roll(self, kind: str) -> bool:
        if not self.on:
            return False
        hit = self._rng.random() < self.rates[kind]
        if hit:
            self.counts[kind] += 1
        return hit


class _CheckpointRow(NamedTuple):
    payment_id: str | None
    version: int
    state: bytes


class _Inquiry(msgspec.Struct, kw_only=True):
    account_id: str
    payment_id: str
    inquiries_made: int
    next_inquiry_at_ms: int


class SimDb:
    """The durable store: what survives every crash."""

    def __init__(self, world: World) -> None:
        self._world = world
        # account -> version -> journal row (``_rows.COLUMNS["journal"]`` order)
        self.journal: dict[str, dict[int, tuple[Any, ...]]] = {}
        self._created_keys: set[tuple[str, str]] = set()
        self._captured_charges: set[tuple[str, str]] = set()
        self._succeeded_payments: set[str] = set()
        self.checkpoints: dict[str, tuple[int, bytes]] = {}
        self.payment_checkpoints: dict[str, dict[str, tuple[int, bytes]]] = {}
        # Read models (only what the janitor reads) and the janitor's inquiry schedule.
        self.accounts_rm: dict[str, tuple[Any, ...]] = {}
        self.payments_rm: dict[str, tuple[Any, ...]] = {}
        self.attempts_rm: dict[str, tuple[Any, ...]] = {}
        self.inquiries: dict[str, _Inquiry] = {}
        # Journal ids: the last one, each account's last (with its shard), and how far
        # each shard's read models reflect the journal (``projection_cursors``).
        self._last_id = 0
        self._last_id_of: dict[str, tuple[int, int]] = {}
        self._cursors: dict[int, int] = {}
        # Bumped for an account by every write that touches it (journal or checkpoint).
        self.revisions: Counter[str] = Counter()
        self.commits = 0

    # -- write side ---------------------------------------------------------------------

    def apply(self, rows: CommitRows) -> None:
        """One transaction: every journal row and checkpoint, or nothing (IntegrityError)."""
        versions: set[tuple[str, int]] = set()
        keys: set[tuple[str, str]] = set()
        charges: set[tuple[str, str]] = set()
        successes: set[str] = set()
        for row in rows.journal:
            _, account_id, version, event_type, _, _, payment_id, key, processor, charge = row
            if version in self.journal.get(account_id, {}) or (account_id, version) in versions:
                raise _refused(f"journal ({account_id}, {version}) exists")
            versions.add((account_id, version))
            if event_type == "payment_created":
                if (account_id, key) in self._created_keys or (account_id, key) in keys:
                    raise _refused(f"a second payment for key {key}")
                keys.add((account_id, key))
            elif event_type == "attempt_succeeded":
                if charge is not None:
                    captured = (processor, charge)
                    if captured in self._captured_charges or captured in charges:
                        raise _refused(f"charge {charge} captured twice")
                    charges.add(captured)
                if payment_id in self._succeeded_payments or payment_id in successes:
                    raise _refused(f"payment {payment_id} succeeded twice")
                successes.add(payment_id)
        for row in rows.journal:
            self.journal.setdefault(row[1], {})[row[2]] = row
            self._last_id += 1
            self._last_id_of[row[1]] = (row[0], self._last_id)
        if rows.journal:
            # As the store does after its write: the read models to project reflect the
            # journal up to here.
            rows.projection.through_id = self._last_id
        self._created_keys |= keys
        self._captured_charges |= charges
        self._succeeded_payments |= successes
        for account_id, version, state in rows.checkpoints.values():
            current = self.checkpoints.get(account_id)
            if current is None or current[0] <= version:
                self.checkpoints[account_id] = (version, state)
        for account_id, payment_id, version, state in rows.payment_checkpoints.values():
            payments = self.payment_checkpoints.setdefault(account_id, {})
            current = payments.get(payment_id)
            if current is None or current[0] <= version:
                payments[payment_id] = (version, state)
        for account_id in {row[1] for row in rows.journal} | set(rows.checkpoints):
            self.revisions[account_id] += 1
        self.commits += 1

    def project(self, projection: Projection) -> None:
        """Upsert read-model rows, each only over an older version (as the store does)."""
        for table, rows, version_at in (
            (self.accounts_rm, projection.accounts, _ACCOUNT_VERSION),
            (self.payments_rm, projection.payments, _PAYMENT_COLUMNS["version"]),
            (self.attempts_rm, projection.attempts, _ATTEMPT_COLUMNS["version"]),
        ):
            for key, row in rows.items():
                current = table.get(key)
                if current is None or current[version_at] <= row[version_at]:
                    table[key] = row

    def project_through(self, shard_id: int, projection: Projection) -> None:
        """One projection transaction of a shard: its rows, and its cursor moved on."""
        self.project(projection)
        cursor = self._cursors.get(shard_id, 0)
        self._cursors[shard_id] = max(cursor, projection.through_id)

    def catch_up(self, shard_id: int) -> None:
        """``Store._catch_up``: every account of the shard with journal rows past its
        cursor is projected whole from its durable state (what a crashed process had not
        projected yet), before anything newer is."""
        cursor = self._cursors.get(shard_id, 0)
        projection = Projection(through_id=cursor)
        for account_id, (row_shard_id, last_id) in self._last_id_of.items():
            if row_shard_id == shard_id and last_id > cursor:
                state, _ = self.load(account_id)
                assert state is not None, account_id
                project_state(projection, state)
                projection.through_id = max(projection.through_id, last_id)
        self.project_through(shard_id, projection)

    # -- read side ----------------------------------------------------------------------

    def load(self, account_id: str) -> tuple[AccountState | None, set[str] | None]:
        """``Store.load_account_tracked``: the checkpoint put back together, then the
        journal past it replayed; the payments whose checkpoint rows the replay left
        behind (None: all of them)."""
        state: AccountState | None = None
        version = 0
        unsaved: set[str] | None = None
        core = self.checkpoints.get(account_id)
        if core is not None:
            rows = [_CheckpointRow(None, core[0], core[1])]
            rows += [_CheckpointRow(payment_id, v, s) for payment_id, (v, s)
                     in self.payment_checkpoints.get(account_id, {}).items()]  # fmt: skip
            state, split = _assemble(account_id, rows)
            version = state.version
            if split:
                unsaved = set()
        journal = self.journal.get(account_id, {})
        for row_version in sorted(v for v in journal if v > version):
            assert row_version == version + 1, (account_id, version, row_version)
            event = _event_decoder.decode(journal[row_version][5])
            state, _ = evolve(state, event)
            version = row_version
            assert state.version == version, (account_id, state.version, version)
            if unsaved is not None:
                payment_id = getattr(event, "payment_id", None)
                if payment_id is not None:
                    unsaved.add(payment_id)
        if state is not None:
            check_invariants(state)
        return state, unsaved

    def events(self, account_id: str, after_version: int = 0) -> list[tuple[int, Event]]:
        journal = self.journal.get(account_id, {})
        return [(v, _event_decoder.decode(journal[v][5]))
                for v in sorted(journal) if v > after_version]  # fmt: skip


def _refused(message: str) -> sa.exc.IntegrityError:
    return sa.exc.IntegrityError("journal", None, Exception(message))


class _NoEngine:
    """What the janitor and the callback receiver take from a store at construction; the
    queries they would run on it are answered from ``SimDb`` instead."""

    def execution_options(self, **_: Any) -> _NoEngine:
        return self


class _DbStore:
    engine: Final = _NoEngine()


class StoreView:
    """One shard process's store: the shard core's whole view of the database."""

    def __init__(self, world: World, incarnation: Incarnation) -> None:
        self._world = world
        self._incarnation = incarnation
        self.engine = _NoEngine()
        self._in_flight: dict[asyncio.Future[None], CommitRows] = {}
        self._pending = Projection()
        self._projecting: asyncio.TimerHandle | None = None
        self._caught_up = False

    # -- as the shard core calls it -----------------------------------------------------

    def prepare(self, shard_id: int, changes: list[Any]) -> CommitRows:
        return build_commit(shard_id, changes)

    async def commit(self, shard_id: int, changes: list[Any]) -> None:
        if changes:
            await self.write(self.prepare(shard_id, changes))

    async def write(self, rows: CommitRows) -> None:
        if not rows.journal and not rows.checkpoints:
            return
        self._alive()
        world = self._world
        waiter: asyncio.Future[None] = world.loop.create_future()
        self._in_flight[waiter] = rows
        world.loop.call_later(world.latency(), self._land, waiter)
        try:
            await waiter
        finally:
            self._in_flight.pop(waiter, None)

    async def load_account(self, account_id: str) -> AccountState | None:
        return (await self.load_account_tracked(account_id))[0]

    async def load_account_tracked(
        self, account_id: str
    ) -> tuple[AccountState | None, set[str] | None]:
        self._alive()
        # No random choice here: the core loads accounts in a set's order, which differs
        # between processes, and a run must not depend on it.
        await asyncio.sleep(0)
        self._alive()
        return self._world.db.load(account_id)

    def start_projection(self, shard_id: int) -> None:
        # The store's projection task starts with a flush, which catches up first.
        if self._projecting is None:
            self._projecting = self._world.loop.call_later(self._world.latency(), self._flush)

    # -- the database's side ------------------------------------------------------------

    def _alive(self) -> None:
        if self._incarnation.dead:
            raise ShardKilled(f"shard {self._incarnation.shard_id} was killed")

    def _land(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return  # the process died first; its fate was settled then
        rows = self._in_flight[waiter]
        faults = self._world.faults
        if faults.roll("commit_failed_before_durable"):
            waiter.set_exception(ConnectionError("the database went away before COMMIT"))
            return
        try:
            self._durable(rows)
        except sa.exc.IntegrityError as error:
            waiter.set_exception(error)
            return
        if faults.roll("commit_failed_after_durable"):
            waiter.set_exception(ConnectionError("the connection broke after COMMIT"))
            return
        waiter.set_result(None)

    def _durable(self, rows: CommitRows) -> None:
        world = self._world
        try:
            world.db.apply(rows)
        except sa.exc.IntegrityError as error:
            world.unexpected(f"the database refused a shard's commit: {error.orig}")
            raise
        events = [row[3] for row in rows.journal]
        world.trace(f"commit shard {rows.shard_id}: {events}, "
                    f"{len(rows.checkpoints)} checkpoints")  # fmt: skip
        self._pending.merge(rows.projection)
        if self._projecting is None and rows.journal:
            self._projecting = world.loop.call_later(world.projection_lag(), self._flush)

    def _flush(self) -> None:
        self._projecting = None
        if self._incarnation.dead:
            return
        db, shard_id = self._world.db, self._incarnation.shard_id
        if not self._caught_up:
            db.catch_up(shard_id)
            self._caught_up = True
        pending, self._pending = self._pending, Projection()
        db.project_through(shard_id, pending)

    def kill(self) -> None:
        """The process is gone: each commit in flight either reached the database or not,
        and nothing is written after."""
        for waiter, rows in list(self._in_flight.items()):
            if waiter.done():
                continue
            if self._world.rng.random() < 0.5:
                with contextlib.suppress(sa.exc.IntegrityError):
                    self._durable(rows)
                self._world.trace(f"shard {rows.shard_id} died; its commit in flight is durable")
            else:
                self._world.trace(f"shard {rows.shard_id} died; its commit in flight is lost")
            waiter.set_exception(ShardKilled("killed during COMMIT"))
        if self._projecting is not None:
            self._projecting.cancel()
            self._projecting = None


class Incarnation:
    """One life of a shard's process: its core, its store, its janitor."""

    def __init__(self, world: World, host: ShardHost, number: int) -> None:
        self.shard_id = host.shard_id
        self.number = number
        self.dead = False
        self.store = StoreView(world, self)
        self.core = AccountShardCore(
            host.shard_id, self.store, options=world.shard_options, clock_ms=world.now_ms,
            rng=random.Random(f"{world.seed}/engine/{host.shard_id}/{number}"),
            on_commit_failure=lambda error: host.crash(self, f"commit failed: {error!r}"),
        )  # fmt: skip
        # The janitor runs inside the shard's process and dies with it.
        self.janitor = SimJanitor(
            world, ShardRouter(world.hosts, **world.router_options), world.db,
            world.processor, clock_ms=world.now_ms, shard_ids=[host.shard_id],
            token_for=world.token_for, attempt_ids=world.ids("att_j"),
        )  # fmt: skip
        self.tasks: set[asyncio.Task[Any]] = set()


class _Remote:
    """``handle.apply.remote(batch)``, as Ray spells a call."""

    def __init__(self, call: Callable[[bytes], Coroutine[Any, Any, bytes]]) -> None:
        self._call = call

    def remote(self, batch: bytes) -> Awaitable[bytes]:
        return self._call(batch)


class ShardHost:
    """A shard's Ray actor handle, with Ray's restarts and retries."""

    def __init__(self, world: World, shard_id: int) -> None:
        self._world = world
        self.shard_id = shard_id
        self.apply = _Remote(self._apply)
        self.incarnation: Incarnation | None = None
        self._incarnations = 0

    def current(self) -> Incarnation:
        """The live incarnation; Ray starts a new one when the last died."""
        if self.incarnation is None or self.incarnation.dead:
            self._incarnations += 1
            self.incarnation = Incarnation(self._world, self, self._incarnations)
        return self.incarnation

    def crash(self, incarnation: Incarnation, why: str) -> None:
        if incarnation.dead:
            return
        incarnation.dead = True
        self._world.trace(f"shard {self.shard_id} #{incarnation.number} crashed: {why}")
        incarnation.store.kill()
        for task in in_creation_order(incarnation.tasks):
            task.cancel()

    async def _apply(self, batch: bytes) -> bytes:
        world = self._world
        await asyncio.sleep(world.latency())
        duplicate = world.faults.roll("command_duplicated")
        while True:
            incarnation = self.current()
            try:
                replies = await incarnation.core.apply(batch)
            except Exception as error:
                if not incarnation.dead:
                    if not isinstance(error, ConnectionError):
                        world.unexpected(f"shard {self.shard_id} raised {error!r}")
                    raise  # a live shard's own failure (an eviction's checkpoint)
                replies = None
            if incarnation.dead:
                # The process died before its answer left it: Ray sends the call again to
                # the restarted actor.
                world.counts["ray_retries"] += 1
                await asyncio.sleep(world.restart_delay())
                continue
            assert replies is not None
            if duplicate:
                # Delivered again (at-least-once): the first answer is lost.
                duplicate = False
                world.trace(f"shard {self.shard_id}: a batch delivered twice")
                await asyncio.sleep(world.latency())
                continue
            break
        if world.faults.roll("reply_dropped"):
            world.trace(f"shard {self.shard_id}: a batch's reply lost")
            raise ReplyLost(f"shard {self.shard_id}'s reply was lost")
        await asyncio.sleep(world.latency())
        return replies


class SimJanitor(RetryJanitor):
    """The real janitor; only its SQL is answered from the simulated read models."""

    def __init__(self, world: World, router: ShardRouter, db: SimDb, processor: Any,
                 **options: Any) -> None:  # fmt: skip
        super().__init__(router, _DbStore(), processor, **options)
        self._world = world
        self._db = db

    async def _due_retries(self, now_ms: int) -> list[_DueRetry]:
        c = _PAYMENT_COLUMNS
        status, next_at, payment_id = c["status"], c["next_retry_at_ms"], c["payment_id"]
        rows = [
            row for row in self._db.payments_rm.values()
            if row[status] == "retry_scheduled" and row[next_at] is not None
            and row[next_at] <= now_ms
        ]  # fmt: skip
        rows.sort(key=lambda row: (row[next_at], row[payment_id]))
        return [
            _DueRetry(account_id=row[c["account_id"]], payment_id=row[payment_id])
            for row in rows[: self._batch_max]
            if self._mine(row[c["account_id"]])
        ]

    async def _due_inquiries(self, now_ms: int) -> list[_DueInquiry]:
        a, p = _ATTEMPT_COLUMNS, _PAYMENT_COLUMNS
        stale_ms = now_ms - self._processing_stale_ms
        found = []
        for attempt in self._db.attempts_rm.values():
            payment = self._db.payments_rm.get(attempt[a["payment_id"]])
            if payment is None:
                continue
            status = attempt[a["status"]]
            unresolved = status == "unknown" or (
                status == "processing" and payment[p["status"]] == "processing"
                and attempt[a["created_at_ms"]] <= stale_ms
            )  # fmt: skip
            if not unresolved:
                continue
            inquiry = self._db.inquiries.get(attempt[a["attempt_id"]])
            if inquiry is not None and inquiry.next_inquiry_at_ms > now_ms:
                continue
            found.append((attempt[a["attempt_id"]], payment[p["payment_id"]],
                          payment[p["account_id"]], inquiry))  # fmt: skip
        found.sort(key=lambda f: (f[3] is not None, f[3].next_inquiry_at_ms if f[3] else 0, f[0]))
        found = [f for f in found[: self._batch_max] if self._mine(f[2])]
        for attempt_id, payment_id, account_id, inquiry in found:
            if inquiry is None and attempt_id not in self._db.inquiries:
                self._db.inquiries[attempt_id] = _Inquiry(
                    account_id=account_id, payment_id=payment_id, inquiries_made=0,
                    next_inquiry_at_ms=now_ms + inquiry_delay_ms(0),
                )  # fmt: skip
        return [
            _DueInquiry(account_id=account_id, payment_id=payment_id, attempt_id=attempt_id,
                        inquiries_made=inquiry.inquiries_made)
            for attempt_id, payment_id, account_id, inquiry in found
            if inquiry is not None
        ]  # fmt: skip

    async def _claim_inquiry(self, due: _DueInquiry, now_ms: int) -> bool:
        inquiry = self._db.inquiries.get(due.attempt_id)
        if inquiry is None or inquiry.inquiries_made != due.inquiries_made:
            return False
        inquiry.inquiries_made += 1
        inquiry.next_inquiry_at_ms = now_ms + inquiry_delay_ms(inquiry.inquiries_made)
        return True

    async def _forget_inquiries(self, attempt_id: str) -> None:
        self._db.inquiries.pop(attempt_id, None)

    async def _guarded(
        self, semaphore: asyncio.Semaphore, work: Awaitable[None], report: Any
    ) -> None:
        # As the real one (the item stays due), but a failure the world did not cause is
        # a finding, not a log line.
        async with semaphore:
            try:
                await work
            except ConnectionError:
                report.errors += 1
            except Exception as error:
                report.errors += 1
                self._world.unexpected(f"janitor item failed: {error!r}")


class Card(NamedTuple):
    """A test card: how its issuer answers, by chance, per charge."""

    brand: str
    succeed: float
    soft: float  # the rest is hard


# Declines as (code, Visa category, Mastercard advice code); the category goes with
# Visa's codes and the advice code with Mastercard's (as the sandbox gives them), and an
# advice code can forbid a retry whatever the code says (21 with insufficient funds).
_SOFT_DECLINES: Final = (
    ("insufficient_funds", 2, None), ("try_again_later", None, None),
    ("issuer_unavailable", 2, None), ("insufficient_funds", None, "24"),
)  # fmt: skip
_HARD_DECLINES: Final = (
    ("do_not_honor", 1, None), ("expired_card", None, None),
    ("insufficient_funds", None, "21"), ("try_again_later", None, "03"),
)  # fmt: skip
_STOP: Final = frozenset({"21", "03"})
_WAIT_MS: Final = {"24": 3_600_000}


class _Charge(msgspec.Struct, kw_only=True):
    key: str
    token: str
    amount_minor: int
    currency: str
    payment_id: str
    charge_id: str
    charged_at_ms: int
    status: str = "processing"  # processing | succeeded | failed
    decline_code: str | None = None
    visa_category: int | None = None
    advice_code: str | None = None
    refunded_minor: int = 0
    disputed: bool = False


class SimProcessor:
    """A card processor (``ProcessorAdapter``) with the faults real ones have."""

    def __init__(self, world: World, cards: dict[str, Card]) -> None:
        self._world = world
        self._cards = cards
        self._rng = random.Random(f"{world.seed}/processor")
        self.charges: dict[str, _Charge] = {}
        self.refunds: dict[str, tuple[str, int]] = {}
        # Findings the processor can see: a key sent again with another request, a card
        # charged again after its network said never, or before its wait.
        self.findings: list[str] = []
        self._callbacks = 0
        self.deliveries: set[asyncio.Task[None]] = set()

    # -- the adapter --------------------------------------------------------------------

    async def charge(
        self, token: str, amount_minor: int, currency: str, idempotency_key: str,
        metadata: Any = None, **options: Any,
    ) -> ChargeResult:  # fmt: skip
        world = self._world
        await asyncio.sleep(world.latency())
        if world.faults.roll("processor_5xx"):
            world.trace(f"processor: 5xx for {idempotency_key}")
            return ChargeResult(outcome=OutcomeKind.errored, decline_code="api_error")
        charge = self.charges.get(idempotency_key)
        payment_id = (metadata or {}).get(METADATA_PAYMENT, "")
        if charge is None:
            self._check_retry_allowed(token, payment_id, world.now_ms())
            charge = self.charges[idempotency_key] = _Charge(
                key=idempotency_key, token=token, amount_minor=amount_minor, currency=currency,
                payment_id=payment_id, charge_id=f"ch_{len(self.charges) + 1}",
                charged_at_ms=world.now_ms(),
            )  # fmt: skip
            if world.faults.roll("slow_decision"):
                world.loop.call_later(self._rng.uniform(1, 120), self._decide, charge)
            else:
                self._decide(charge)
        elif (charge.token, charge.amount_minor, charge.currency, charge.payment_id) != (
            token, amount_minor, currency, payment_id
        ):  # fmt: skip
            self.findings.append(f"key {idempotency_key} sent again with another request")
            raise ProcessorRequestError(422, "idempotency_key_reused", "another request")
        if charge.status == "processing":
            return ChargeResult(outcome=OutcomeKind.unknown)  # 409: still being decided
        if world.faults.roll("timeout_after_capture"):
            world.trace(f"processor: {charge.status} {idempotency_key}, the answer is late")
            await asyncio.sleep(CALL_TIMEOUT_S + self._rng.uniform(1, 30))
        return self._result(charge)

    async def inquire(self, idempotency_key: str) -> ChargeResult:
        world = self._world
        await asyncio.sleep(world.latency())
        if world.faults.roll("inquiry_unanswered"):
            return ChargeResult(outcome=OutcomeKind.unknown)
        charge = self.charges.get(idempotency_key)
        if charge is None:
            return ChargeResult(outcome=OutcomeKind.errored, inquiry=InquiryStatus.not_found)
        if charge.status == "processing":
            return ChargeResult(outcome=OutcomeKind.unknown, inquiry=InquiryStatus.processing)
        result = self._result(charge)
        succeeded = charge.status == "succeeded"
        inquiry = InquiryStatus.succeeded if succeeded else InquiryStatus.declined
        return msgspec.structs.replace(result, inquiry=inquiry)

    async def refund(self, charge_id: str, amount_minor: int, idempotency_key: str) -> RefundResult:
        world = self._world
        await asyncio.sleep(world.latency())
        if world.faults.roll("processor_5xx"):
            return RefundResult(outcome=OutcomeKind.errored, charge_id=charge_id)
        done = self.refunds.get(idempotency_key)
        if done is None:
            charge = next((c for c in self.charges.values() if c.charge_id == charge_id), None)
            if charge is None or charge.status != "succeeded":
                return RefundResult(outcome=OutcomeKind.declined, failure_code="charge_invalid")
            if charge.disputed:
                return RefundResult(outcome=OutcomeKind.declined, failure_code="charge_disputed")
            if amount_minor > charge.amount_minor - charge.refunded_minor:
                return RefundResult(outcome=OutcomeKind.declined,
                                    failure_code="amount_too_large")  # fmt: skip
            charge.refunded_minor += amount_minor
            done = self.refunds[idempotency_key] = (charge_id, amount_minor)
        elif done != (charge_id, amount_minor):
            self.findings.append(f"refund key {idempotency_key} sent again with another request")
        return RefundResult(outcome=OutcomeKind.succeeded, refund_id=idempotency_key,
                            charge_id=charge_id, amount_minor=amount_minor)  # fmt: skip

    # -- deciding and telling -----------------------------------------------------------

    def _decide(self, charge: _Charge) -> None:
        if charge.status != "processing":
            return
        card = self._cards[charge.token]
        roll = self._rng.random()
        if roll < card.succeed:
            charge.status = "succeeded"
        else:
            charge.status = "failed"
            declines = _SOFT_DECLINES if roll < card.succeed + card.soft else _HARD_DECLINES
            code, visa_category, advice_code = self._rng.choice(declines)
            charge.decline_code = code
            charge.visa_category = visa_category if card.brand == "visa" else None
            charge.advice_code = advice_code if card.brand == "mastercard" else None
        self._world.trace(f"processor: {charge.key} of {charge.payment_id} {charge.status} "
                          f"{charge.decline_code or ''}")  # fmt: skip
        # What the sandbox sends: the charge, the attempt, the amount, the currency, a
        # decline's code and network signals, and our metadata.
        data = CallbackData(
            charge=charge.charge_id, attempt=charge.key, amount=charge.amount_minor,
            currency=charge.currency, decline_code=charge.decline_code,
            visa_category=charge.visa_category, advice_code=charge.advice_code,
            metadata={METADATA_PAYMENT: charge.payment_id},
        )  # fmt: skip
        event_type = "charge.succeeded" if charge.status == "succeeded" else "charge.failed"
        self._emit(CallbackBody(type=event_type, data=data))

    def dispute(self, charge: _Charge) -> None:
        """The cardholder disputes a captured charge (the sandbox's control endpoint)."""
        if charge.status != "succeeded" or charge.disputed:
            return
        charge.disputed = True
        data = CallbackData(
            charge=charge.charge_id, attempt=charge.key, amount=charge.amount_minor,
            currency=charge.currency, metadata={METADATA_PAYMENT: charge.payment_id},
        )  # fmt: skip
        self._emit(CallbackBody(type="charge.disputed", data=data))

    def _result(self, charge: _Charge) -> ChargeResult:
        if charge.status == "succeeded":
            return ChargeResult(
                outcome=OutcomeKind.succeeded, charge_id=charge.charge_id,
                amount_minor=charge.amount_minor, currency=charge.currency,
            )  # fmt: skip
        return ChargeResult(
            outcome=OutcomeKind.declined, charge_id=charge.charge_id,
            decline_code=charge.decline_code, visa_category=charge.visa_category,
            advice_code=charge.advice_code, amount_minor=charge.amount_minor,
            currency=charge.currency,
        )  # fmt: skip

    def _check_retry_allowed(self, token: str, payment_id: str, now_ms: int) -> None:
        """A network's stop signal forbids charging that card again for the payment; a
        wait advice code forbids it before the wait is over."""
        for earlier in self.charges.values():
            if earlier.payment_id != payment_id or earlier.token != token:
                continue
            if earlier.visa_category == 1 or earlier.advice_code in _STOP:
                self.findings.append(
                    f"payment {payment_id} charged again (at {now_ms - START_MS} ms) on a card "
                    f"whose decline of attempt {earlier.key} said never to retry "
                    f"({earlier.decline_code}, Visa category {earlier.visa_category}, "
                    f"advice code {earlier.advice_code})"
                )  # fmt: skip
            wait_ms = _WAIT_MS.get(earlier.advice_code or "")
            if wait_ms is not None and now_ms < earlier.charged_at_ms + wait_ms:
                self.findings.append(
                    f"payment {payment_id} charged again {now_ms - earlier.charged_at_ms} ms "
                    f"after a decline whose advice code {earlier.advice_code} asks for "
                    f"{wait_ms} ms"
                )  # fmt: skip

    def _emit(self, body: CallbackBody) -> None:
        world = self._world
        self._callbacks += 1
        event_id = f"evt_{self._callbacks}"
        copies = 2 if world.faults.roll("callback_duplicated") else 1
        for _ in range(copies):
            delay = self._rng.uniform(0.001, 2.0)
            if world.faults.roll("callback_delayed"):
                delay += self._rng.choice((self._rng.uniform(5, 120), self._rng.uniform(600, 7200)))
            self._deliver_later(event_id, body, delay)

    def _deliver_later(self, event_id: str, body: CallbackBody, delay_s: float) -> None:
        task = self._world.loop.create_task(self._deliver(event_id, body, delay_s))
        self.deliveries.add(task)
        task.add_done_callback(self.deliveries.discard)

    async def _deliver(self, event_id: str, body: CallbackBody, delay_s: float) -> None:
        """Until the receiver answers 200 (the Standard Webhooks retries, shortened)."""
        world = self._world
        await asyncio.sleep(delay_s)
        for retry in range(1_000):
            front_door = world.front_door
            try:
                task = front_door.spawn(front_door.receiver._apply(PROCESSOR, event_id, body))
                await asyncio.wait([task])
                if task.cancelled():
                    raise ConnectionError("the front door went away")
                duplicate = task.result()
            except (_Refused, ConnectionError) as refused:
                world.trace(f"callback {event_id} {body.type} {body.data.attempt}: "
                            f"not taken ({refused}), sent again later")  # fmt: skip
                await asyncio.sleep(min(5 * 2**retry, 3_600) * self._rng.uniform(0.5, 1.5))
                continue
            except Exception as error:
                world.unexpected(f"callback {event_id} failed in the receiver: {error!r}")
                return
            world.counts["callbacks_delivered"] += 1
            world.trace(f"callback {event_id} {body.type} {body.data.attempt}: 200"
                        f"{' (duplicate)' if duplicate else ''}")  # fmt: skip
            return
        world.unexpected(f"callback {event_id} never taken")

    @property
    def quiet(self) -> bool:
        return not self.deliveries and all(c.status != "processing" for c in self.charges.values())


class FrontDoor:
    """One front-door process: its router, its gateway (with the outcomes it recorded)
    and its callback receiver. ``create_and_charge`` runs in it as the API handler does."""

    def __init__(self, world: World, number: int) -> None:
        self.number = number
        self.router = ShardRouter(world.hosts, **world.router_options)
        self.gateway = Gateway(self.router, world.processor, world.token_for,
                               charge_timeout_ms=int(CALL_TIMEOUT_S * 1000))  # fmt: skip

        async def method(payment_method_id: str) -> PaymentMethodRow | None:
            return world.methods.get(payment_method_id)

        self.app: dict[Any, Any] = {
            ROUTER: self.router, GATEWAY: self.gateway, IN_FLIGHT: set(), TASKS: set(),
            CLOCK_MS: world.now_ms, METHODS: ImmutableRows(method),
        }  # fmt: skip
        self.request = _Request(self.app)
        self.principal = MERCHANT
        self.receiver = _Receiver(
            store=_DbStore(), router=self.router, secrets={PROCESSOR: [_WEBHOOK_SECRET]},
            clock_s=lambda: world.now_ms() / 1000, tolerance_s=300, lookup_attempts=1,
            lookup_wait_ms=50, recent=self.gateway.recent,
        )  # fmt: skip
        self.tasks: set[asyncio.Task[Any]] = set()
        self.dead = False

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Work this process does for a request; it dies with the process."""
        if self.dead:
            coroutine.close()
            raise ConnectionError("the front door is gone")
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def crash(self) -> None:
        self.dead = True
        for task in in_creation_order({*self.tasks, *self.app[TASKS]}):
            task.cancel()


def in_creation_order(tasks: Iterable[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Tasks by when they were made (asyncio numbers their names): a set of tasks is
    ordered by their addresses, and what they do once cancelled must not be."""
    return sorted(tasks, key=lambda task: int(task.get_name().rpartition("-")[2]))


class _Request:
    """What ``create_and_charge`` reads of an aiohttp request: its application."""

    def __init__(self, app: dict[Any, Any]) -> None:
        self.app = app


_WEBHOOK_SECRET: Final = "whsec_c2ltdWxhdGlvbi1zZWNyZXQtb2YtdGhpcnR5LXR3bw=="


class World:
    """Everything one seed's run shares: clock, random streams, faults, the database,
    the processor, the shards and the front door, and what happened (trace, counts)."""

    def __init__(
        self, seed: int, loop: asyncio.AbstractEventLoop, *, shards: int, account_ids: list[str],
        cards: dict[str, Card], methods: dict[str, PaymentMethodRow], fault_rates: dict[str, float],
        shard_options: ShardOptions, router_options: dict[str, Any],
    ) -> None:  # fmt: skip
        self.seed = seed
        self.loop = loop
        self.rng = random.Random(f"{seed}/world")
        self.counts: Counter[str] = Counter()
        self.faults = Faults(random.Random(f"{seed}/faults"), fault_rates, self.counts)
        self.shards = shards
        self.account_ids = account_ids
        self.methods = methods
        self.shard_options = shard_options
        self.router_options = router_options
        self._traced: deque[str] = deque(maxlen=4_000)
        self.errors: list[str] = []
        self._id_counters: Counter[str] = Counter()
        self.db = SimDb(self)
        self.processor = SimProcessor(self, cards)
        self.hosts = [ShardHost(self, shard_id) for shard_id in range(shards)]
        self._front_doors = 1
        self.front_door = FrontDoor(self, 1)

    # -- time and chance ----------------------------------------------------------------

    def now_ms(self) -> int:
        return START_MS + round(self.loop.time() * 1000)

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.now_ms() / 1000, dt.UTC).date()

    def latency(self) -> float:
        """A hop: mostly a millisecond or two, now and then much longer."""
        if self.rng.random() < 0.05:
            return self.rng.uniform(0.01, 0.5)
        return self.rng.uniform(0.0002, 0.003)

    def projection_lag(self) -> float:
        return self.rng.choice((0.05, 0.05, self.rng.uniform(0.05, 5)))

    def restart_delay(self) -> float:
        return self.rng.uniform(0.01, 1.0)

    def ids(self, prefix: str) -> Callable[[], str]:
        def next_id() -> str:
            self._id_counters[prefix] += 1
            return f"{prefix}{self._id_counters[prefix]:04x}"

        return next_id

    # -- wiring ---------------------------------------------------------------------------

    async def token_for(self, payment_method_id: str) -> str | None:
        row = self.methods.get(payment_method_id)
        return None if row is None else row.token

    def restart_front_door(self) -> None:
        self.front_door.crash()
        self.trace(f"front door #{self.front_door.number} crashed")
        self._front_doors += 1
        self.front_door = FrontDoor(self, self._front_doors)

    # -- what happened ------------------------------------------------------------------

    def trace(self, line: str) -> None:
        self._traced.append(f"{(self.now_ms() - START_MS) / 1000:12.3f}s {line}")

    def recent_trace(self, lines: int) -> list[str]:
        return list(self._traced)[-lines:]

    def unexpected(self, message: str) -> None:
        """Something failed that no injected fault explains: the run fails at its next audit."""
        self.trace(f"UNEXPECTED: {message}")
        self.errors.append(message)


def summary_line(totals: Counter[str]) -> str:
    """The run's figures in one line: how much was simulated, and how hard."""
    faults = ", ".join(f"{kind} {totals[kind]:,}" for kind in FAULT_KINDS)
    days = totals["simulated_ms"] / 86_400_000
    return (
        f"system simulation: {totals['seeds']:,} seeds, {totals['steps']:,} steps, "
        f"{days:,.0f} days simulated, {totals['audits']:,} audits; "
        f"payments {totals['payments']:,} (acknowledged {totals['payments_acknowledged']:,}, "
        f"given up by the payer {totals['payers_gave_up']:,}), "
        f"charges {totals['charges']:,}, captures {totals['captures']:,}, "
        f"retries {totals['retries_started']:,}, inquiries {totals['inquiries_made']:,}, "
        f"commits {totals['commits']:,}, callbacks {totals['callbacks_delivered']:,}; "
        f"faults: {faults}; Ray re-sends {totals['ray_retries']:,}; refunds left "
        f"unrecorded after a dispute {totals['refunds_unrecorded_after_dispute']:,}"
    )
