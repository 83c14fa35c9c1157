"""Async engines for SQLite (embedded default) and PostgreSQL, configured for many writers.

SQLite is one file that several shard processes write. The rules that make that safe:
WAL (readers never block the writer), a long ``busy_timeout`` (a writer waits for the
lock instead of failing with ``database is locked``), and ``BEGIN IMMEDIATE`` for every
write transaction, so the write lock is taken at BEGIN, where SQLite can wait for it,
rather than upgraded mid-transaction, where it cannot wait and fails at once. That needs
the driver's own transaction handling turned off and BEGIN emitted on the engine's
``begin`` event (SQLAlchemy's documented recipe for pysqlite and aiosqlite).
Reads pass ``sqlite_begin="DEFERRED"`` so they do not queue behind writers.

PostgreSQL's TLS is libpq's ``sslmode``/``sslrootcert`` in the URL (payportal.outgoing_tls).
They stay in the engine's URL, so every connection made from it, SQLAlchemy's or a plain
asyncpg one (``asyncpg_connect_args``), gets the same TLS; they are swapped for asyncpg's
``ssl`` argument at connect time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from payportal.outgoing_tls import POSTGRES_TLS_PARAMS, postgres_ssl

__all__ = ["READ", "async_url", "asyncpg_connect_args", "create_engine_for", "is_sqlite"]

# A writer waits this long for another process's write lock before giving up. A group
# commit holds the lock for milliseconds; 30 s only runs out when something is stuck.
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Execution options for read-only work: a deferred BEGIN takes no write lock.
READ: Final = {"sqlite_begin": "DEFERRED"}

_ASYNC_DRIVERS: Final = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def async_url(url: str | URL) -> URL:
    """The URL with its async driver: ``sqlite://`` → aiosqlite, ``postgresql://`` → asyncpg."""
    parsed = make_url(url)
    if parsed.drivername in _ASYNC_DRIVERS:
        parsed = parsed.set(drivername=_ASYNC_DRIVERS[parsed.drivername])
    if parsed.drivername not in _ASYNC_DRIVERS.values():
        raise ValueError(
            f"unsupported database URL driver {parsed.drivername!r}: "
            "use sqlite+aiosqlite:/// or postgresql+asyncpg://"
        )
    return parsed


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _postgres_tls(url: URL) -> dict[str, Any]:
    """asyncpg's keyword arguments for the URL's TLS parameters ({} when it has none)."""
    values = {}
    for name in POSTGRES_TLS_PARAMS:
        value = url.query.get(name)
        if isinstance(value, tuple):
            raise ValueError(f"database URL: {name} is given more than once")
        values[name] = value
    ssl_argument = postgres_ssl(values["sslmode"], values["sslrootcert"])
    return {} if ssl_argument is None else {"ssl": ssl_argument}


def asyncpg_connect_args(url: str | URL) -> tuple[str, dict[str, Any]]:
    """A PostgreSQL URL as asyncpg's DSN and keyword arguments, TLS included, for a
    connection of its own: ``asyncpg.connect(dsn, **kwargs)``."""
    parsed = async_url(url)
    tls = _postgres_tls(parsed)
    plain = parsed.difference_update_query(POSTGRES_TLS_PARAMS).set(drivername="postgresql")
    return plain.render_as_string(hide_password=False), tls


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_engine_for(url: str | URL, *, pool_size: int = 5, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; on SQLite with the pragmas and BEGIN IMMEDIATE above.

    Creating it connects to nothing; the SQLite file's directory is created if missing.
    """
    parsed = async_url(url)
    path = _sqlite_file(parsed) if is_sqlite(parsed) else None
    # A statement's parameters are password hashes, tokens and email bodies: its errors
    # (logged with their traceback) name the statement, not the values.
    kwargs.setdefault("hide_parameters", True)
    # A file database or a server gets a queue pool; an in-memory SQLite one a static pool.
    if "poolclass" not in kwargs and (path is not None or not is_sqlite(parsed)):
        kwargs.setdefault("pool_size", pool_size)
        # Bursts (a shard activating many accounts at once) may open as many again.
        kwargs.setdefault("max_overflow", pool_size)
    if not is_sqlite(parsed):
        # No pre-ping: it would cost a round trip per commit. A dropped connection fails
        # one statement, SQLAlchemy then invalidates the whole pool, and the shard whose
        # commit failed restarts (docs/design.md decision 3).
        tls = _postgres_tls(parsed)  # a bad sslmode fails here, not at the first connect
        engine = create_async_engine(parsed, **kwargs)
        if any(name in parsed.query for name in POSTGRES_TLS_PARAMS):

            @sa.event.listens_for(engine.sync_engine, "do_connect")
            def _with_tls(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
                # The dialect passes the URL's query as keywords; asyncpg takes ``ssl``.
                for name in POSTGRES_TLS_PARAMS:
                    params.pop(name, None)
                params.update(tls)

        return engine
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    connect_args = kwargs.pop("connect_args", {})
    # The driver's own wait, in seconds, matching the pragma below.
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = create_async_engine(parsed, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy: the driver emits no BEGIN of its own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if path is not None:
                cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL is durable against application crashes and loses at most
            # the last transactions on power loss, at a fraction of FULL's fsyncs.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        assert mode in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"), mode
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine
