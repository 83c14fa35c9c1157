"""The status publisher: journal → per-account status streams, only after commit.

The model (docs/design.md decisions 3 and 7): nothing is announced before it is durable, so
the publisher reads the journal itself — committed rows only — never the shards'
in-memory decisions. Per shard it keeps a cursor in ``status_cursors`` (its own, apart
from the read-model projector's) and, in journal id order, appends each row that
changes a payment status to its account's stream with the journal id as the entry id.
Rules:

- A round runs when a shard is known to have committed (``wake``, called by the front
  door's balance feed, ``payportal.actors.feed``), and every shard is read every
  ``PUBLISH_INTERVAL_MS_DEFAULT`` as a safety net: an idle front door queries nothing.
- The cursor moves only after every row up to it was appended: a crash in between
  re-publishes those rows, and the streams refuse them as duplicates (the id is not
  above the last). Nothing is skipped, nothing appears twice.
- Reading a shard's rows past the cursor in id order sees no gaps, because a shard
  commits one batch at a time (``Store.write`` holds its per-shard lock), so a row of
  the shard never becomes visible after a row with a higher id.
- Nobody reading costs nothing: while the streams are ``idle`` (the in-process stand-in
  with no subscriber) a round reads only the shard's newest journal id, moves the cursor
  there in memory and clears the streams; a reader who comes later is served from the
  journal (``http/events.py``). The streams are asked twice, before and after that read,
  so a reader who subscribed meanwhile is published to as usual.
- Several publishers over one database (one per front door, on Redis) are safe: appends
  are deduplicated by id and the cursor upsert only moves forward. Without Redis each
  process has its own stand-in streams, so run one publisher per database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Final

import sqlalchemy as sa

from payportal.persistence import Store, tables
from payportal.persistence.tables_status import status_cursors

from ._status import status_entry
from ._streams import StatusStreams

__all__ = ["PUBLISH_INTERVAL_MS_DEFAULT", "StatusPublisher"]

log = logging.getLogger(__name__)

# Journal rows read per round trip: large enough to catch up quickly after downtime,
# small enough that one round holds no long transaction.
BATCH_ROWS_DEFAULT: Final = 500
# Rounds run when a shard is known to have committed (``wake``: the front door's balance
# feed says so within ~50 ms); this is only the safety net for news nobody announced.
PUBLISH_INTERVAL_MS_DEFAULT: Final = 5_000


class StatusPublisher:
    def __init__(
        self, store: Store, streams: StatusStreams, *, shard_ids: Iterable[int],
        batch_rows: int = BATCH_ROWS_DEFAULT,
    ) -> None:  # fmt: skip
        self._store = store
        self._streams = streams
        self._shard_ids = tuple(shard_ids)
        assert self._shard_ids, "a publisher needs shards to read"
        assert batch_rows > 0
        self._batch_rows = batch_rows
        # Plain SQL: SQLite and PostgreSQL share the upsert syntax, and the cursor only
        # ever moves forward (a slower, concurrent publisher cannot pull it back).
        # Shards announced to have news since their last round (``wake``), and the
        # cursors this publisher already knows (read from the table once).
        self._woken: set[int] = set()
        self._news = asyncio.Event()
        self._cursors: dict[int, int] = {}
        self._sql_cursor_save = sa.text(
            "INSERT INTO status_cursors (shard_id, journal_id) VALUES (:shard_id, :journal_id) "
            "ON CONFLICT (shard_id) DO UPDATE SET journal_id = excluded.journal_id, "
            "updated_at = CURRENT_TIMESTAMP "
            "WHERE status_cursors.journal_id < excluded.journal_id"
        )

    async def cursor(self, shard_id: int) -> int:
        """The last journal id of ``shard_id`` that is published (0: none yet)."""
        c = status_cursors
        async with self._store.engine.connect() as connection:
            found = (
                await connection.execute(sa.select(c.c.journal_id).where(c.c.shard_id == shard_id))
            ).scalar()
        return int(found or 0)

    async def save_cursor(self, shard_id: int, journal_id: int) -> None:
        async with self._store.engine.begin() as connection:
            await connection.execute(
                self._sql_cursor_save, {"shard_id": shard_id, "journal_id": journal_id}
            )

    def wake(self, shard_id: int) -> None:
        """Shard ``shard_id`` committed something: publish it now, not at the next
        safety-net round."""
        if shard_id in self._shard_ids:
            self._woken.add(shard_id)
            self._news.set()

    async def run_once(self, shard_ids: Iterable[int] | None = None) -> int:
        """Publish everything committed so far on every shard (or on ``shard_ids``);
        returns the entries appended (duplicates of an earlier, interrupted run are not
        counted)."""
        appended = 0
        for shard_id in self._shard_ids if shard_ids is None else shard_ids:
            appended += await self.publish_shard(shard_id)
        return appended

    async def publish_shard(self, shard_id: int) -> int:
        j = tables.journal
        try:
            return await self._publish_shard(shard_id, j)
        except BaseException:
            # Where it stopped is in the table, not here: read it again next time.
            self._cursors.pop(shard_id, None)
            raise

    async def _publish_shard(self, shard_id: int, j: sa.Table) -> int:
        cursor = self._cursors.get(shard_id)
        if cursor is None:
            cursor = await self.cursor(shard_id)
        if self._streams.idle():
            async with self._store.engine.connect() as connection:
                newest = (await connection.execute(
                    sa.select(sa.func.max(j.c.id)).where(j.c.shard_id == shard_id)
                )).scalar()  # fmt: skip
            # Asked again, with no await in between the answer and the skip: a reader
            # who subscribed during the read is published to as usual.
            if self._streams.idle():
                if newest is not None and newest > cursor:
                    self._streams.forget()
                    self._cursors[shard_id] = newest
                return 0
        appended = 0
        while True:
            async with self._store.engine.connect() as connection:
                rows = (
                    await connection.execute(
                        sa.select(j.c.id, j.c.account_id, j.c.version, j.c.event_type, j.c.payload)
                        .where(j.c.shard_id == shard_id, j.c.id > cursor)
                        .order_by(j.c.id)
                        .limit(self._batch_rows)
                    )
                ).all()
            if not rows:
                return appended
            for row in rows:
                assert row.id > cursor, (shard_id, row.id, cursor)
                entry = status_entry(row.id, row.account_id, row.version, row.event_type,
                                     row.payload)  # fmt: skip
                if entry is not None and await self._streams.append(row.account_id, entry):
                    appended += 1
                cursor = row.id
            # Only now: every row up to ``cursor`` is in its stream.
            await self.save_cursor(shard_id, cursor)
            self._cursors[shard_id] = cursor
            if len(rows) < self._batch_rows:
                return appended

    async def run_forever(self, interval_ms: int = PUBLISH_INTERVAL_MS_DEFAULT) -> None:
        """Publish the shards ``wake`` names as they are named, and every shard every
        ``interval_ms`` whatever was said (news from a process that announces nothing)."""
        loop = asyncio.get_running_loop()
        every_shard_at = loop.time()
        while True:
            due = loop.time() >= every_shard_at
            shard_ids = self._shard_ids if due else sorted(self._woken)
            self._woken.clear()
            self._news.clear()
            if due:
                every_shard_at = loop.time() + interval_ms / 1000
            try:
                await self.run_once(shard_ids)
            except Exception:
                # The cursor stayed where the last success left it: the next round retries.
                log.exception("status publisher failed; retrying")
                self._woken.update(shard_ids)
                await asyncio.sleep(min(1.0, interval_ms / 1000))
                continue
            if self._woken:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._news.wait(), max(0.0, every_shard_at - loop.time())
                )
