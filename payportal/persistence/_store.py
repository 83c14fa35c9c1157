"""The store under the account shards: group commit, recovery and the journal's read side.

The model (DESIGN.md decisions 3 and 4): a shard hands over a batch of account changes
and ``commit`` writes all of it — journal rows, ledger rows, read models, checkpoints —
in ONE transaction, or raises and writes nothing. The journal's UNIQUE (account_id,
version) makes the database refuse any event applied twice, so a re-sent batch or a
zombie shard fails as a whole instead of doubling money. ``load_account`` rebuilds an
account from its latest checkpoint plus the journal events newer than it, through the
engine's own ``evolve``.

Rules: Core statements only (no ORM on the hot path); one executemany per table per
commit, so a batch of 256 changes is a handful of statements; every row is built before
the first ``await``; checkpoints and the account row never move to an older version.
"""

from __future__ import annotations

from typing import Any, Final, Self

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from payportal.engine import AccountState, Event, evolve

from . import tables
from ._engine import READ, create_engine_for, is_sqlite
from ._rows import AccountChange, Rows, build_rows

__all__ = ["Store"]

_event_decoder: Final = msgspec.msgpack.Decoder(Event)
_state_decoder: Final = msgspec.msgpack.Decoder(AccountState)


class _TableWrite:
    """One table's write in a commit: a prepared statement and how rows are passed to it.

    SQLite takes the rows as an executemany (in-process, so one call per row is cheap).
    PostgreSQL takes one array per column and inserts ``SELECT * FROM unnest(...)``: the
    whole batch is one statement and one round trip, several times faster than an
    executemany of the same rows.
    """

    def __init__(
        self,
        dialect: str,
        table: sa.Table,
        *,
        skip: tuple[str, ...] = (),
        upsert: bool = True,
        versioned: bool = False,
        touch: str | None = None,
    ) -> None:
        """``skip``: columns left to their server default (besides autoincrement ids).
        ``upsert``: ON CONFLICT (primary key) DO UPDATE every other column. ``touch``: a
        timestamp column set to now() on update. ``versioned``: update only when the
        incoming row's version is not older, so a late write never moves a row back."""
        self.columns = [
            c.name
            for c in table.columns
            if c.name not in skip and c.name != touch and c.autoincrement is not True
        ]
        self.arrays = dialect == "postgresql"
        insert: Any = postgresql.insert(table) if self.arrays else sqlite.insert(table)
        if self.arrays:
            arrays = [
                sa.cast(sa.bindparam(name), postgresql.ARRAY(table.c[name].type))
                for name in self.columns
            ]
            # WITH ORDINALITY + ORDER BY: rows are inserted (and ids drawn) in list order.
            source = (
                sa.func.unnest(*arrays)
                .table_valued(*self.columns, with_ordinality="ordinal")
                .render_derived()
            )
            rows = sa.select(*(source.c[name] for name in self.columns)).order_by(source.c.ordinal)
            insert = insert.from_select(self.columns, rows)
        if upsert:
            keys = [c.name for c in table.primary_key.columns]
            update: dict[str, Any] = {
                name: insert.excluded[name] for name in self.columns if name not in keys
            }
            if touch is not None:
                update[touch] = sa.func.now()
            where = table.c.version <= insert.excluded.version if versioned else None
            insert = insert.on_conflict_do_update(index_elements=keys, set_=update, where=where)
        self.statement = insert

    async def run(self, connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        assert rows[0].keys() == set(self.columns), (rows[0].keys(), self.columns)
        if self.arrays:
            await connection.execute(
                self.statement, {name: [row[name] for row in rows] for name in self.columns}
            )
        else:
            await connection.execute(self.statement, rows)


class Store:
    """Durable storage for the shards. Create it with ``await Store.connect(url)``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = engine.execution_options(**READ)
        dialect = engine.dialect.name
        assert dialect in ("sqlite", "postgresql"), dialect
        self._writes = {
            "journal": _TableWrite(dialect, tables.journal, skip=("created_at",), upsert=False),
            "ledger_entries": _TableWrite(dialect, tables.ledger_entries, upsert=False),
            "accounts": _TableWrite(dialect, tables.accounts, versioned=True),
            "invoices": _TableWrite(dialect, tables.invoices),
            "payments": _TableWrite(dialect, tables.payments),
            # The processor column keeps its default until a second processor exists.
            "attempts": _TableWrite(dialect, tables.attempts, skip=("processor",)),
            "allocations": _TableWrite(dialect, tables.allocations),
            "checkpoints": _TableWrite(
                dialect, tables.account_checkpoints, versioned=True, touch="updated_at"
            ),
        }

    @classmethod
    async def connect(cls, url: str, *, pool_size: int = 5) -> Self:
        """Open a pool to ``url`` and check that the database answers."""
        engine = create_engine_for(url, pool_size=pool_size)
        try:
            async with engine.connect() as connection:
                await connection.execution_options(**READ)
                await connection.execute(sa.text("SELECT 1"))
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine.url)

    # -- write side ---------------------------------------------------------------------

    async def commit(self, shard_id: int, changes: list[AccountChange]) -> None:
        """ONE transaction (group commit): journal rows, ledger rows, read-model upserts,
        checkpoints. Raises on failure (and leaves nothing)."""
        if not changes:
            return
        rows = build_rows(shard_id, changes)
        async with self.engine.begin() as connection:
            await self._write(connection, rows)

    async def _write(self, connection: AsyncConnection, rows: Rows) -> None:
        # The journal first: a second application of any event fails here, before the
        # rest of the batch is written (and rolled back).
        await self._writes["journal"].run(connection, rows.journal)
        await self._writes["ledger_entries"].run(connection, rows.ledger_entries)
        # Sorted by key, so two writers take PostgreSQL's row locks in one order.
        upserts: list[tuple[str, dict[Any, dict[str, Any]]]] = [
            ("accounts", rows.accounts),
            ("invoices", rows.invoices),
            ("payments", rows.payments),
            ("attempts", rows.attempts),
            ("allocations", rows.allocations),
            ("checkpoints", rows.checkpoints),
        ]
        for name, keyed in upserts:
            await self._writes[name].run(connection, [keyed[k] for k in sorted(keyed)])

    # -- read side ----------------------------------------------------------------------

    async def load_account(self, account_id: str) -> AccountState | None:
        """Latest checkpoint (if any) + replay of newer journal events via engine.evolve."""
        cp = tables.account_checkpoints
        j = tables.journal
        async with self._reader.connect() as connection, connection.begin():
            checkpoint = (
                await connection.execute(
                    sa.select(cp.c.version, cp.c.state).where(cp.c.account_id == account_id)
                )
            ).first()
            state: AccountState | None = None
            version = 0
            if checkpoint is not None:
                state = _state_decoder.decode(checkpoint.state)
                assert state.account_id == account_id, (state.account_id, account_id)
                assert state.version == checkpoint.version, (state.version, checkpoint.version)
                version = state.version
            newer = await connection.execute(
                sa.select(j.c.version, j.c.payload)
                .where(j.c.account_id == account_id, j.c.version > version)
                .order_by(j.c.version)
            )
            for row in newer:
                assert row.version == version + 1, (account_id, version, row.version)
                state, _ = evolve(state, _event_decoder.decode(row.payload))
                version = row.version
                assert state.version == version, (account_id, state.version, version)
        return state

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
