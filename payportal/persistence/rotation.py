"""Rotating data keys, re-wrapping them under a new key encryption key, and checking
every sealed value (``payportal keys rotate-data-key`` / ``rewrap-data-keys`` /
``check-sealed``).

A rotation of one purpose's data key, safe beside running processes (each re-reads
``data_keys`` every ``sealing.REFRESH_S``) and resumable (its state is the keys' states
and the version in each sealed value's header, so running it again continues):

1. add version N+1 as ``pending``: processes learn it and can open values sealed with it;
2. after ``settle_s``, make it ``active`` and the old one ``readable``: processes seal
   with N+1 from their next refresh on;
3. after ``settle_s`` again, re-seal every value still under an older version, in
   batches; each update is a compare-and-set on the old ciphertext, so a row a process
   rewrote meanwhile is left as that process wrote it (and found again if still old);
4. when a pass finds nothing old, wait ``settle_s`` and look once more (a process that
   sealed with the old key just before learning the new one); then retire the old
   versions: their wrapped keys are erased, and nothing is readable only with them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from . import tables, tables_payers
from .sealing import (
    ACTIVE,
    INDEX,
    PENDING,
    PURPOSES,
    READABLE,
    REFRESH_S,
    RETIRED,
    Keyring,
    SealedFieldError,
    key_version_of,
    new_data_key_row,
    unwrap,
    wrap,
)
from .tables_keys import data_keys

__all__ = [
    "SEALED_COLUMNS", "CheckReport", "RotationReport", "SealedColumn", "check_sealed",
    "rewrap_data_keys", "rotate_data_key",
]  # fmt: skip

BATCH: Final = 500


@dataclass(frozen=True)
class SealedColumn:
    table: sa.Table
    key: str
    column: str
    purpose: str
    binary: bool = False
    kind: str | None = None  # outbox: only rows of this kind are sealed

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column}"


SEALED_COLUMNS: Final = (
    SealedColumn(tables_payers.payment_methods, "id", "token", "token"),
    SealedColumn(tables_payers.payers, "id", "email", "contact"),
    SealedColumn(tables_payers.account_profiles, "account_id", "name", "contact"),
    SealedColumn(tables_payers.account_profiles, "account_id", "email", "contact"),
    SealedColumn(tables.outbox, "id", "payload", "message", binary=True, kind="email"),
    SealedColumn(tables.idempotency_records, "id", "response_body", "response", binary=True),
)


def _raw(spec: SealedColumn) -> tuple[Any, Any]:
    """The key and value columns as stored (no sealing type in the way)."""
    key = spec.table.c[spec.key]
    value = sa.type_coerce(spec.table.c[spec.column],
                           sa.LargeBinary() if spec.binary else sa.Text())  # fmt: skip
    return key, value


def _text(spec: SealedColumn, stored: Any) -> str:
    return bytes(stored).decode("ascii", "replace") if spec.binary else str(stored)


def _stored(spec: SealedColumn, sealed: str) -> Any:
    return sealed.encode() if spec.binary else sealed


def _prefix(spec: SealedColumn, text: str) -> Any:
    return text.encode() if spec.binary else text


async def _rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(sa.select(data_keys))).all())


@dataclass
class RotationReport:
    purpose: str
    version: int
    resealed: dict[str, int] = field(default_factory=dict)
    retired: list[int] = field(default_factory=list)


async def rotate_data_key(
    engine: AsyncEngine, keyring: Keyring, purpose: str, *, settle_s: float = 2 * REFRESH_S,
    batch: int = BATCH, progress: Callable[[str, int], None] | None = None,
) -> RotationReport:  # fmt: skip
    """Rotate ``purpose``'s data key and re-seal its values (see the module's steps).
    ``keyring`` must be loaded for ``engine``; it follows the steps itself."""
    if purpose not in PURPOSES:
        raise ValueError(f"no data key {purpose!r} to rotate: one of {', '.join(PURPOSES)}"
                         + (" (the index key keys lookups, not ciphertext)"
                            if purpose == INDEX else ""))  # fmt: skip
    rows = [r for r in await _rows(engine) if r.purpose == purpose]
    states = {r.version: r.state for r in rows}
    pending = [v for v, s in states.items() if s == PENDING]
    readable = [v for v, s in states.items() if s == READABLE]
    if pending:
        new = max(pending)  # a rotation stopped before its key became active
    elif readable:
        new = max(v for v, s in states.items() if s == ACTIVE)  # stopped while re-sealing
    else:
        new = max(states, default=0) + 1
        async with engine.begin() as connection:
            await connection.execute(
                sa.insert(data_keys).values(**new_data_key_row(keyring.keks, purpose, new, PENDING))
            )
        pending = [new]
    if pending:
        await keyring.refresh(engine)
        await asyncio.sleep(settle_s)
        async with engine.begin() as connection:
            await connection.execute(sa.update(data_keys).where(
                data_keys.c.purpose == purpose, data_keys.c.state == ACTIVE,
                data_keys.c.version != new).values(state=READABLE))  # fmt: skip
            await connection.execute(sa.update(data_keys).where(
                data_keys.c.purpose == purpose, data_keys.c.version == new).values(state=ACTIVE))
        await keyring.refresh(engine)
        await asyncio.sleep(settle_s)
    report = RotationReport(purpose, new)
    columns = [c for c in SEALED_COLUMNS if c.purpose == purpose]
    while True:
        found = 0
        for spec in columns:
            count = await _reseal(engine, keyring, spec, new, batch, progress)
            report.resealed[spec.name] = report.resealed.get(spec.name, 0) + count
            found += count
        if found == 0:
            await asyncio.sleep(settle_s)
            late = [await _count_old(engine, spec, new) for spec in columns]
            if not any(late):
                break
    old = [r.version for r in await _rows(engine)
           if r.purpose == purpose and r.version != new and r.state != RETIRED]  # fmt: skip
    if old:
        async with engine.begin() as connection:
            await connection.execute(sa.update(data_keys).where(
                data_keys.c.purpose == purpose, data_keys.c.version.in_(old),
            ).values(state=RETIRED, wrapped="", retired_at=dt.datetime.now(dt.UTC)))  # fmt: skip
    await keyring.refresh(engine)
    report.retired = sorted(old)
    return report


def _old_filter(spec: SealedColumn, value: Any, new: int) -> Any:
    current = f"pp1.{spec.purpose}.{new}."
    ours = f"pp1.{spec.purpose}."
    condition = sa.and_(
        sa.func.substr(value, 1, len(ours)) == _prefix(spec, ours),
        sa.func.substr(value, 1, len(current)) != _prefix(spec, current),
    )
    if spec.kind is not None:
        condition = sa.and_(condition, spec.table.c.kind == spec.kind)
    return condition


async def _count_old(engine: AsyncEngine, spec: SealedColumn, new: int) -> int:
    _, value = _raw(spec)
    query = sa.select(sa.func.count()).select_from(spec.table).where(_old_filter(spec, value, new))
    async with engine.connect() as connection:
        return int((await connection.execute(query)).scalar() or 0)


async def _reseal(
    engine: AsyncEngine, keyring: Keyring, spec: SealedColumn, new: int, batch: int,
    progress: Callable[[str, int], None] | None,
) -> int:  # fmt: skip
    key, value = _raw(spec)
    done, after = 0, None
    while True:
        query = (sa.select(key, value).where(_old_filter(spec, value, new))
                 .order_by(key).limit(batch))  # fmt: skip
        if after is not None:
            query = query.where(key > after)
        async with engine.connect() as connection:
            found = (await connection.execute(query)).all()
        if not found:
            return done
        async with engine.begin() as connection:
            for row_key, stored in found:
                try:
                    plain = keyring.open(spec.name, _text(spec, stored))
                except SealedFieldError as error:
                    raise error.at_row(str(row_key)) from None
                resealed = keyring.seal(spec.purpose, spec.name, plain)
                result = await connection.execute(
                    sa.update(spec.table)
                    .where(key == row_key, value == stored)
                    # A bind of the plain type: the column's own would seal it again.
                    .values({spec.column: sa.literal(_stored(spec, resealed), value.type)})
                )
                done += result.rowcount
        after = found[-1][0]
        if progress is not None:
            progress(spec.name, done)


async def rewrap_data_keys(engine: AsyncEngine, keyring: Keyring) -> int:
    """Wrap every live data key under the newest key encryption key (after adding one to
    ``PAYPORTAL_DATA_KEYS``); then older KEKs can be removed from it. Returns how many."""
    newest = max(keyring.keks)
    count = 0
    async with engine.begin() as connection:
        for row in (await connection.execute(sa.select(data_keys))).all():
            if row.state == RETIRED or row.kek_version == newest:
                continue
            key = unwrap(keyring.keks[row.kek_version], row.purpose, row.version, row.wrapped)
            await connection.execute(sa.update(data_keys).where(
                data_keys.c.purpose == row.purpose, data_keys.c.version == row.version,
            ).values(kek_version=newest, wrapped=wrap(keyring.keks[newest], row.purpose,
                                                      row.version, key)))  # fmt: skip
            count += 1
    return count


@dataclass
class CheckReport:
    checked: int = 0
    by_version: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


async def check_sealed(engine: AsyncEngine, keyring: Keyring, *, batch: int = BATCH
                       ) -> CheckReport:  # fmt: skip
    """Open every sealed value; count them by key version and name each row that does not
    open (altered, or under a key this process lacks)."""
    report = CheckReport()
    for spec in SEALED_COLUMNS:
        key, value = _raw(spec)
        after = None
        while True:
            query = sa.select(key, value).where(value.is_not(None)).order_by(key).limit(batch)
            if spec.kind is not None:
                query = query.where(spec.table.c.kind == spec.kind)
            if after is not None:
                query = query.where(key > after)
            async with engine.connect() as connection:
                found = (await connection.execute(query)).all()
            if not found:
                break
            for row_key, stored in found:
                text = _text(spec, stored)
                report.checked += 1
                version = key_version_of(text)
                label = f"{version[0]} v{version[1]}" if version else "not sealed"
                report.by_version[label] = report.by_version.get(label, 0) + 1
                try:
                    keyring.open(spec.name, text)
                except SealedFieldError as error:
                    report.failures.append(str(error.at_row(str(row_key))))
            after = found[-1][0]
    return report
