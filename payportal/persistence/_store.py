"""The store under the account shards: group commit, projection, recovery and the journal.

The model (docs/design.md decisions 3 and 4): a shard hands over a batch of account changes
and ``commit`` writes its journal rows (and any coalesced checkpoints) in ONE statement
or transaction, or raises and writes nothing. The database arbitrates exactly-once on
the journal itself: UNIQUE (account_id, version) refuses any event applied twice, and
partial unique indexes refuse a second payment with one idempotency key, a second
capture of one charge and a second success of one payment — in the commit, before the
batch is answered.

A checkpoint is the account's core plus one row per payment changed since the account's
previous checkpoint (see ``_rows``), written in that same statement, so a core is never
durable without the payment rows it relies on. Loading puts back together the core,
every payment row of the account (read in the same statement as the core, so from one
snapshot) and the journal past the core's version, and asserts the engine's invariants
on the result. A checkpoint written before the split, payments inline, loads as it is.

The read models (accounts, invoices, payments, attempts, allocations, ledger entries)
are a projection: the rows a commit touched are kept in memory, coalesced per key, and
written shortly afterwards in their own transaction with the shard's projection cursor
(the last journal id they reflect). Every projected row carries the account version it
came from and upserts only move forward, so projecting twice, late or concurrently is
harmless. Payment emails (the outbox rows of ``payportal.mail``) travel with the read
models: written in the transaction that projects their event and advances the cursor,
deduplicated by their key. After a crash the rows in memory are gone;
``project_pending`` (and a shard's first projection) catches up by replaying the journal
past the cursor, so nothing acknowledged stays missing from the read models or the
outbox. ``accounts.version`` tells a reader how
far an account has been projected.

Rules: no ORM and no SQLAlchemy statement compilation on the hot path — PostgreSQL gets
one prepared statement per commit over a plain asyncpg pool (journal ``unnest`` insert
and checkpoint upserts in one statement, one round trip), SQLite one executemany per
table in one transaction; every row is built before the first ``await``; checkpoints
(core and payment rows alike) and read-model rows never move to an older version.
"""

# SQL here is assembled from the table metadata's own names, never from input: S608 off.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, Self

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.engine import AccountState, Entry, Event, Payment, check_invariants, evolve

from . import tables
from ._engine import READ, asyncpg_connect_args, create_engine_for, is_sqlite
from ._rows import (
    COLUMNS,
    NOTIFIED,
    AccountChange,
    CommitRows,
    Projection,
    Row,
    build_commit,
    project_entries,
    project_outbox,
    project_state,
)
from .sealing import keep_fresh, open_keyring

__all__ = ["Store"]

log = logging.getLogger(__name__)

_event_decoder: Final = msgspec.msgpack.Decoder(Event)
_state_decoder: Final = msgspec.msgpack.Decoder(AccountState)
_payment_decoder: Final = msgspec.msgpack.Decoder(Payment)

# How often a shard's projection writes what its commits touched. Coalescing a hot
# account's rows over this window is what makes the projection cheaper than the commits.
PROJECTION_INTERVAL_MS: Final = 50
# Accounts replayed per catch-up round, so a long catch-up holds no huge transaction.
CATCH_UP_ACCOUNTS_MAX: Final = 500

# PostgreSQL array types for ``unnest`` parameters, by column type; BigInteger before the
# Integer it subclasses.
_PG_TYPES: Final = {sa.BigInteger: "int8", sa.Integer: "int4", sa.String: "text",
                    sa.LargeBinary: "bytea", sa.Date: "date"}  # fmt: skip

# Read models in write order, with their conflict keys; sorted keys give two writers one
# lock order on PostgreSQL.
_PROJECTED: Final = (
    ("accounts", tables.accounts, ("account_id",)),
    ("invoices", tables.invoices, ("invoice_id",)),
    ("payments", tables.payments, ("payment_id",)),
    ("attempts", tables.attempts, ("attempt_id",)),
    ("allocations", tables.allocations, ("payment_id", "invoice_id")),
)


def _pg_array(table: sa.Table, name: str) -> str:
    column_type = table.c[name].type
    for kind, array in _PG_TYPES.items():
        if isinstance(column_type, kind):
            return f"{array}[]"
    raise AssertionError((table.name, name, column_type))


def _insert_sql(
    dialect: str,
    table: sa.Table,
    columns: Sequence[str],
    conflict: str = "",
    *,
    first_param: int = 1,
    ordered: bool = False,
) -> str:
    """``INSERT`` of many rows: PostgreSQL from ``unnest`` of one array per column (one
    statement for the whole batch), SQLite as VALUES for an executemany."""
    names = ", ".join(columns)
    if dialect == "sqlite":
        values = ", ".join("?" for _ in columns)
        return f"INSERT INTO {table.name} ({names}) VALUES ({values}) {conflict}"
    arrays = ", ".join(
        f"${first_param + i}::{_pg_array(table, name)}" for i, name in enumerate(columns)
    )
    if ordered:  # rows inserted, and ids drawn, in list order
        source = (f"SELECT {names} FROM unnest({arrays}) WITH ORDINALITY "
                  f"AS r({names}, ordinal) ORDER BY ordinal")  # fmt: skip
    else:
        source = f"SELECT * FROM unnest({arrays})"
    return f"INSERT INTO {table.name} ({names}) {source} {conflict}"


def _upsert_clause(table: sa.Table, columns: Sequence[str], keys: Sequence[str]) -> str:
    """Replace every other column, only when the incoming row is not older."""
    update = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return (f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {update} "
            f"WHERE {table.name}.version <= excluded.version")  # fmt: skip


def _columns(rows: dict[Any, Row], width: int) -> list[list[Any]]:
    """Keyed rows as one list per column (``unnest``'s arrays), in key order: two writers
    then take their row locks in one order."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*(rows[k] for k in sorted(rows)), strict=True)]


def _integrity_error(error: Exception) -> sa.exc.IntegrityError:
    """asyncpg's constraint errors as SQLAlchemy's, so callers see one type per backend."""
    return sa.exc.IntegrityError(None, None, error)


class _Loaded(msgspec.Struct, kw_only=True):
    state: AccountState | None = None
    # Ledger entries posted past ``ledger_after``, and the versions that posted them.
    versions: list[int] = msgspec.field(default_factory=list)
    entries: list[Entry] = msgspec.field(default_factory=list)
    # See ``Store.load_account_tracked``.
    unsaved_payments: set[str] | None = None


def _checkpoint_query(account_id: str, version_max: int | None) -> sa.CompoundSelect[Any]:
    """The account's checkpoint core (``payment_id`` NULL) and its payment rows; none
    of them when the core is newer than ``version_max``."""
    cp = tables.account_checkpoints
    pc = tables.account_payment_checkpoints
    core = sa.select(sa.null().label("payment_id"), cp.c.version, cp.c.state).where(
        cp.c.account_id == account_id
    )
    payments = sa.select(pc.c.payment_id, pc.c.version, pc.c.state).where(
        pc.c.account_id == account_id
    )
    if version_max is not None:
        core = core.where(cp.c.version <= version_max)
        core_version = sa.select(cp.c.version).where(cp.c.account_id == account_id)
        payments = payments.where(core_version.scalar_subquery() <= version_max)
    return sa.union_all(core, payments)


def _assemble(account_id: str, rows: Sequence[Any]) -> tuple[AccountState, bool]:
    """The state a checkpoint's rows hold, and whether it was split (core + payment rows)
    rather than one whole state from before the split, whose rows, if any, are ignored."""
    cores = [row for row in rows if row.payment_id is None]
    assert len(cores) == 1, (account_id, len(cores))
    state = _state_decoder.decode(cores[0].state)
    assert state.account_id == account_id, (state.account_id, account_id)
    assert state.version == cores[0].version, (state.version, cores[0].version)
    if state.payments:
        return state, False
    assert not state.idempotency, account_id
    assert not state.refunds, account_id
    payments: list[Payment] = []
    for row in rows:
        if row.payment_id is None:
            continue
        # Written with a core at their version, and both only move forward.
        assert row.version <= state.version, (account_id, row.payment_id, row.version)
        payment = _payment_decoder.decode(row.state)
        assert payment.payment_id == row.payment_id, (payment.payment_id, row.payment_id)
        payments.append(payment)
    # About the order the live state holds them in (creation); nothing depends on it.
    payments.sort(key=lambda p: (p.created_at_ms, p.payment_id))
    for payment in payments:
        state.payments[payment.payment_id] = payment
        state.idempotency[payment.idempotency_key] = payment.payment_id
        for refund_id in payment.refunds:
            state.refunds[refund_id] = payment.payment_id
    return state, True


class _ShardProjection:
    def __init__(self) -> None:
        self.pending = Projection()
        self.caught_up = False
        self.lock = asyncio.Lock()
        self.write_lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        # Set when a commit queues rows: the projection sleeps until then, not in a loop.
        self.news = asyncio.Event()


async def _session_unchanged(connection: Any) -> None:
    """The pool's reset on release. asyncpg's default sends ``pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL`` every time a connection goes back: a round trip per
    commit that was ~8 % of a shard's CPU in the shard benchmark. The store never sets,
    listens, locks or opens a cursor on its connections, so there is nothing to reset;
    an open transaction is still rolled back by asyncpg before this is called."""


class Store:
    """Durable storage for the shards. Create it with ``await Store.connect(url)``."""

    def __init__(self, engine: AsyncEngine, pool: Any = None) -> None:
        self.engine = engine
        self._pool = pool  # asyncpg pool, PostgreSQL only
        self._key_refresh: asyncio.Task[None] | None = None
        self._reader = engine.execution_options(**READ)
        self.dialect = dialect = engine.dialect.name
        assert dialect in ("sqlite", "postgresql"), dialect
        assert (pool is not None) == (dialect == "postgresql"), dialect
        self._shards: dict[int, _ShardProjection] = {}
        self.projection_interval_s = PROJECTION_INTERVAL_MS / 1000
        journal = COLUMNS["journal"]
        checkpoints = COLUMNS["checkpoints"]
        payment_checkpoints = COLUMNS["payment_checkpoints"]
        checkpoint_upsert = (
            "ON CONFLICT (account_id) DO UPDATE SET version = excluded.version, "
            "state = excluded.state, updated_at = CURRENT_TIMESTAMP "
            "WHERE account_checkpoints.version <= excluded.version"
        )
        payment_checkpoint_upsert = _upsert_clause(
            tables.account_payment_checkpoints, payment_checkpoints, ("account_id", "payment_id")
        )
        if dialect == "postgresql":
            insert_journal = _insert_sql(dialect, tables.journal, journal, "RETURNING id",
                                         ordered=True)  # fmt: skip

            def upserts(first_param: int) -> tuple[str, str]:
                core = _insert_sql(dialect, tables.account_checkpoints, checkpoints,
                                   checkpoint_upsert, first_param=first_param)  # fmt: skip
                payments = _insert_sql(
                    dialect, tables.account_payment_checkpoints, payment_checkpoints,
                    payment_checkpoint_upsert, first_param=first_param + len(checkpoints),
                )  # fmt: skip
                return core, payments

            # One statement, so one round trip and atomic without BEGIN/COMMIT.
            self._sql_journal = f"WITH j AS ({insert_journal}) SELECT max(id) FROM j"
            core, payments = upserts(len(journal) + 1)
            self._sql_both = (f"WITH j AS ({insert_journal}), c AS ({core}), "
                              f"p AS ({payments}) SELECT max(id) FROM j")  # fmt: skip
            core, payments = upserts(1)
            self._sql_checkpoints = f"WITH c AS ({core}) {payments}"
        else:
            self._sql_journal = _insert_sql(dialect, tables.journal, journal)
            self._sql_checkpoints = _insert_sql(
                dialect, tables.account_checkpoints, checkpoints, checkpoint_upsert
            )
            self._sql_payment_checkpoints = _insert_sql(
                dialect, tables.account_payment_checkpoints, payment_checkpoints,
                payment_checkpoint_upsert,
            )  # fmt: skip
        self._sql_projected = {
            name: _insert_sql(
                dialect, table, COLUMNS[name], _upsert_clause(table, COLUMNS[name], keys)
            )
            for name, table, keys in _PROJECTED
        }
        self._sql_projected["ledger_entries"] = _insert_sql(
            dialect, tables.ledger_entries, COLUMNS["ledger_entries"],
            "ON CONFLICT (account_id, version, line) DO NOTHING",
        )  # fmt: skip
        # Payment emails (payportal/mail): written with the read models that show their
        # event, once per dedupe key however often an event is projected.
        insert_outbox = _insert_sql(
            dialect, tables.outbox, COLUMNS["outbox"], "ON CONFLICT (dedupe_key) DO NOTHING"
        )
        if dialect == "postgresql":
            # The idle mail sender LISTENs: NOTIFY it when a row is new, in the same
            # statement (no extra round trip), delivered at commit. Notifying transactions
            # queue at commit for a global lock; a shard projects at most every 50 ms, so
            # these are few.
            insert_outbox = (
                f"WITH inserted AS ({insert_outbox} RETURNING 1) "
                f"SELECT pg_notify('{tables.OUTBOX_CHANNEL}', '') "
                "WHERE EXISTS (SELECT 1 FROM inserted)"
            )
        self._sql_projected["outbox"] = insert_outbox
        cursor_params = "($1, $2)" if dialect == "postgresql" else "(?, ?)"
        self._sql_cursor = (
            f"INSERT INTO projection_cursors (shard_id, journal_id) VALUES {cursor_params} "
            "ON CONFLICT (shard_id) DO UPDATE SET journal_id = excluded.journal_id, "
            "updated_at = CURRENT_TIMESTAMP "
            "WHERE projection_cursors.journal_id < excluded.journal_id"
        )

    @classmethod
    async def connect(cls, url: str, *, pool_size: int = 5,
                      data_keys: Mapping[int, bytes] | None = None) -> Self:  # fmt: skip
        """Open a pool to ``url``, check that the database answers, and load its data keys
        with the key encryption keys ``data_keys`` (default: ``PAYPORTAL_DATA_KEYS``)."""
        engine = create_engine_for(url, pool_size=pool_size)
        pool = None
        try:
            async with engine.connect() as connection:
                await connection.execution_options(**READ)
                await connection.execute(sa.text("SELECT 1"))
            keyring = await open_keyring(engine, data_keys)
            if engine.dialect.name == "postgresql":
                import asyncpg  # type: ignore[import-untyped]

                dsn, tls = asyncpg_connect_args(engine.url)
                pool = await asyncpg.create_pool(
                    dsn, min_size=1, max_size=pool_size, reset=_session_unchanged, **tls
                )
        except BaseException:
            await engine.dispose()
            raise
        store = cls(engine, pool)
        if keyring is not None:
            store._key_refresh = asyncio.get_running_loop().create_task(
                keep_fresh(keyring, engine), name="data-keys-refresh"
            )
        return store

    async def close(self) -> None:
        """Stop background projection, write what it still holds (best effort), close."""
        if self._key_refresh is not None:
            self._key_refresh.cancel()
        for projection in self._shards.values():
            if projection.task is not None:
                projection.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await projection.task
                projection.task = None
        for shard_id in list(self._shards):
            try:
                await self._flush(shard_id)
            except Exception:
                log.exception("shard %s: projection not written on close", shard_id)
        if self._pool is not None:
            await self._pool.close()
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine.url)

    # -- write side ---------------------------------------------------------------------

    def prepare(self, shard_id: int, changes: list[AccountChange]) -> CommitRows:
        """Every row of a commit, built now (synchronously) from the states as they are."""
        return build_commit(shard_id, changes)

    async def commit(self, shard_id: int, changes: list[AccountChange]) -> None:
        """Journal rows and checkpoints in ONE transaction (group commit); the read models
        follow in the projection. Raises on failure (and leaves nothing)."""
        if not changes:
            return
        await self.write(self.prepare(shard_id, changes))

    async def write(self, rows: CommitRows) -> None:
        """Write a prepared commit; on success queue its read models for projection."""
        if not rows.journal and not rows.checkpoints:
            return
        shard = self._shard(rows.shard_id)
        # One commit at a time per shard: journal ids then grow with commit order, which
        # is what lets the projection cursor stand for "everything up to here".
        async with shard.write_lock:
            if self._pool is not None:
                last_id = await self._write_postgres(rows)
            else:
                last_id = await self._write_sqlite(rows)
            if rows.journal:
                assert last_id is not None, rows.shard_id
                rows.projection.through_id = last_id
                shard.pending.merge(rows.projection)
                shard.news.set()

    async def _write_postgres(self, rows: CommitRows) -> int | None:
        import asyncpg  # type: ignore[import-untyped]

        journal = [list(column) for column in zip(*rows.journal, strict=True)]
        checkpoints: list[list[Any]] = []
        if rows.checkpoints:
            checkpoints = _columns(rows.checkpoints, len(COLUMNS["checkpoints"]))
            # Always with the core's upsert (no payment changed: empty arrays), so one
            # statement shape covers every checkpoint.
            checkpoints += _columns(rows.payment_checkpoints, len(COLUMNS["payment_checkpoints"]))
        async with self._pool.acquire() as connection:
            try:
                if journal and checkpoints:
                    return int(await connection.fetchval(self._sql_both, *journal, *checkpoints))
                if journal:
                    return int(await connection.fetchval(self._sql_journal, *journal))
                await connection.execute(self._sql_checkpoints, *checkpoints)
                return None
            except asyncpg.IntegrityConstraintViolationError as error:
                raise _integrity_error(error) from error

    async def _write_sqlite(self, rows: CommitRows) -> int | None:
        async with self.engine.begin() as connection:
            last_id = None
            if rows.journal:
                # The journal first: a second application of any event fails here.
                await connection.exec_driver_sql(self._sql_journal, rows.journal)
                last_id = (
                    await connection.exec_driver_sql(
                        "SELECT max(id) FROM journal WHERE shard_id = ?", (rows.shard_id,)
                    )
                ).scalar_one()
            if rows.checkpoints:
                await connection.exec_driver_sql(
                    self._sql_checkpoints, [rows.checkpoints[k] for k in sorted(rows.checkpoints)]
                )
            if rows.payment_checkpoints:
                written = rows.payment_checkpoints
                await connection.exec_driver_sql(
                    self._sql_payment_checkpoints, [written[k] for k in sorted(written)]
                )
            return last_id

    # -- projection ---------------------------------------------------------------------

    def _shard(self, shard_id: int) -> _ShardProjection:
        shard = self._shards.get(shard_id)
        if shard is None:
            shard = self._shards[shard_id] = _ShardProjection()
        return shard

    def start_projection(self, shard_id: int) -> None:
        """Project ``shard_id``'s commits in the background: catch up from the journal
        first, then, ``PROJECTION_INTERVAL_MS`` after a commit queues rows, write what the
        commits touched (nothing runs while no commit comes)."""
        shard = self._shard(shard_id)
        if shard.task is None or shard.task.done():
            shard.task = asyncio.get_running_loop().create_task(self._project_forever(shard_id))

    async def _project_forever(self, shard_id: int) -> None:
        shard = self._shard(shard_id)
        while True:
            try:
                await self._flush(shard_id)
            except Exception:
                # The rows stay queued (and the journal has them): the next round retries.
                log.exception("shard %s: projection failed; retrying", shard_id)
                shard.news.set()
            # Idle until a commit queues rows; then a short wait lets a hot account's
            # commits coalesce into one upsert.
            await shard.news.wait()
            shard.news.clear()
            await asyncio.sleep(self.projection_interval_s)

    async def project_pending(self, shard_id: int) -> int:
        """Bring ``shard_id``'s read models up to its journal: write what recent commits
        touched, then replay anything past the cursor (a crash's leftovers). Returns the
        journal id the read models now reflect."""
        await self._flush(shard_id)
        shard = self._shard(shard_id)
        async with shard.lock:
            await self._catch_up(shard_id)
            return await self.projection_cursor(shard_id)

    def projection_backlog(self, shard_id: int) -> int:
        """Read-model rows (accounts + ledger lines) queued in memory for ``shard_id``."""
        pending = self._shard(shard_id).pending
        return len(pending.accounts) + len(pending.ledger_entries)

    async def projection_cursor(self, shard_id: int) -> int:
        c = tables.projection_cursors
        async with self._reader.connect() as connection, connection.begin():
            found = (
                await connection.execute(sa.select(c.c.journal_id).where(c.c.shard_id == shard_id))
            ).scalar()
        return int(found or 0)

    async def _flush(self, shard_id: int) -> None:
        shard = self._shard(shard_id)
        async with shard.lock:
            if not shard.caught_up:
                # Before the first write moves the cursor past what a crash left behind.
                await self._catch_up(shard_id)
                shard.caught_up = True
            taken, shard.pending = shard.pending, Projection()
            if not taken:
                return
            try:
                await self._write_projection(shard_id, taken)
            except BaseException:
                taken.merge(shard.pending)
                shard.pending = taken
                raise

    async def _write_projection(self, shard_id: int, projection: Projection) -> None:
        batches: list[tuple[str, list[tuple[Any, ...]]]] = [
            (name, [rows[k] for k in sorted(rows)])
            for name, rows in (
                ("accounts", projection.accounts), ("invoices", projection.invoices),
                ("payments", projection.payments), ("attempts", projection.attempts),
            )
        ]  # fmt: skip
        batches.append(
            ("allocations", [projection.allocations[k] for k in sorted(projection.allocations)])
        )
        batches.append(("ledger_entries", projection.ledger_entries))
        batches.append(("outbox", projection.outbox))
        through_id = projection.through_id
        if self._pool is not None:
            async with self._pool.acquire() as connection, connection.transaction():
                for name, rows in batches:
                    if rows:
                        columns = [list(c) for c in zip(*rows, strict=True)]
                        await connection.execute(self._sql_projected[name], *columns)
                if through_id:
                    await connection.execute(self._sql_cursor, shard_id, through_id)
            return
        async with self.engine.begin() as sqlite_connection:
            for name, rows in batches:
                if rows:
                    await sqlite_connection.exec_driver_sql(self._sql_projected[name], rows)
            if through_id:
                await sqlite_connection.exec_driver_sql(self._sql_cursor, (shard_id, through_id))

    async def _catch_up(self, shard_id: int) -> None:
        """Project every account with journal rows past the shard's cursor, from the
        journal itself: the whole latest state, and the ledger lines past the version
        its read model shows."""
        j = tables.journal
        while True:
            cursor = await self.projection_cursor(shard_id)
            async with self._reader.connect() as connection, connection.begin():
                touched = (
                    await connection.execute(
                        sa.select(j.c.account_id, sa.func.max(j.c.id))
                        .where(j.c.shard_id == shard_id, j.c.id > cursor)
                        .group_by(j.c.account_id)
                        .order_by(sa.func.max(j.c.id))
                        .limit(CATCH_UP_ACCOUNTS_MAX)
                    )
                ).all()
            if not touched:
                return
            projection = Projection(through_id=max(last for _, last in touched))
            if len(touched) == CATCH_UP_ACCOUNTS_MAX:
                # Accounts are taken in order of their last row: every row up to the
                # last account's is covered by this round.
                projection.through_id = touched[-1][1]
            for account_id, _ in touched:
                await self._replay_into(projection, account_id)
            await self._write_projection(shard_id, projection)

    async def _replay_into(self, projection: Projection, account_id: str) -> None:
        a = tables.accounts
        async with self._reader.connect() as connection, connection.begin():
            projected = (
                await connection.execute(sa.select(a.c.version).where(a.c.account_id == account_id))
            ).scalar()
        loaded = await self._load(
            account_id, ledger_after=int(projected or 0), outbox=projection.outbox
        )
        if loaded.state is None:
            return
        project_entries(projection, account_id, loaded.versions, loaded.entries)
        project_state(projection, loaded.state)

    # -- read side ----------------------------------------------------------------------

    async def load_account(self, account_id: str) -> AccountState | None:
        """Latest checkpoint (if any) + replay of newer journal events via engine.evolve."""
        return (await self._load(account_id)).state

    async def load_account_tracked(
        self, account_id: str
    ) -> tuple[AccountState | None, set[str] | None]:
        """``load_account``, and the payments the account's next checkpoint must write
        because their rows are behind the state: those the replayed journal events
        touched. None means all of them: the checkpoint carried its payments inline (or
        there was none), so no payment is known to have a row."""
        loaded = await self._load(account_id)
        return loaded.state, loaded.unsaved_payments

    async def _load(
        self, account_id: str, *, ledger_after: int | None = None, outbox: list[Row] | None = None
    ) -> _Loaded:
        """The account's latest state; with ``ledger_after``, also the ledger entries
        posted by events past that version (replaying from the start of the journal when
        the checkpoint is newer than it), and into ``outbox`` those events' emails."""
        j = tables.journal
        loaded = _Loaded()
        async with self._reader.connect() as connection, connection.begin():
            # Core and payment rows in one statement, so one snapshot: a checkpoint
            # committed meanwhile cannot pair an older core with newer payments.
            query = _checkpoint_query(account_id, ledger_after)
            checkpoint = (await connection.execute(query)).all()
            state: AccountState | None = None
            version = 0
            unsaved: set[str] | None = None  # payments whose rows the replay leaves behind
            if checkpoint:
                state, split = _assemble(account_id, checkpoint)
                version = state.version
                if split:
                    unsaved = set()
            newer = await connection.execute(
                sa.select(j.c.version, j.c.payload)
                .where(j.c.account_id == account_id, j.c.version > version)
                .order_by(j.c.version)
            )
            for row in newer:
                assert row.version == version + 1, (account_id, version, row.version)
                event = _event_decoder.decode(row.payload)
                state, posted = evolve(state, event)
                version = row.version
                assert state.version == version, (account_id, state.version, version)
                if unsaved is not None:
                    payment_id = getattr(event, "payment_id", None)
                    if payment_id is not None:
                        unsaved.add(payment_id)
                if posted is not None and ledger_after is not None and version > ledger_after:
                    loaded.versions.append(version)
                    loaded.entries.append(posted)
                after = ledger_after is not None and version > ledger_after
                if outbox is not None and after and isinstance(event, NOTIFIED):
                    project_outbox(outbox, state, version, event)
        if state is not None:
            check_invariants(state)
        loaded.state = state
        loaded.unsaved_payments = unsaved
        return loaded

    # -- audit ---------------------------------------------------------------------------

    async def journal(
        self, *, account_id: str | None = None, shard_id: int | None = None
    ) -> list[tuple[str, int, Event]]:
        """(account_id, version, event): one account's in version order, else commit order."""
        j = tables.journal
        query = sa.select(j.c.account_id, j.c.version, j.c.payload)
        if account_id is not None:
            query = query.where(j.c.account_id == account_id)
        if shard_id is not None:
            query = query.where(j.c.shard_id == shard_id)
        query = query.order_by(j.c.version if account_id is not None else j.c.id)
        async with self._reader.connect() as connection, connection.begin():
            result = await connection.execute(query)
            return [
                (row.account_id, row.version, _event_decoder.decode(row.payload)) for row in result
            ]
