"""The outbox sender: claims due rows under a lease, sends them over SMTP, marks them.

The model: every pending ``outbox`` row (neither ``sent_at`` nor ``failed_at``) is due at
``due_at_ms``. A sender claims a few due rows by writing its name and a lease expiry
into them in ONE statement — on PostgreSQL the candidates are picked ``FOR UPDATE SKIP
LOCKED``, so concurrent senders take different rows without waiting; on SQLite the
conditional ``UPDATE … WHERE lease free`` runs under the database's single write lock
(``BEGIN IMMEDIATE``). So any number of front-door processes may run a sender. A claimed
row is rendered (payment rows; see ``payments.py``), sent with aiosmtplib and marked
``sent_at``. If the sender dies, its lease expires and another sender takes the row.

Failures: a temporary one (SMTP 4xx, a refused or dropped connection, a timeout) puts
the row back with exponential backoff (``SendPolicy``: data, jitter from an injected
random source) and records the error; after ``attempts_max`` it is given up. A permanent
one (SMTP 5xx, an account with nobody to write to, a payload that cannot be rendered, a
message the SMTP client refuses to send as malformed) records the error and sets
``failed_at`` at once: retrying cannot help.

The delivery guarantee, honestly: AT LEAST ONCE to the SMTP server. A crash (or an
expired lease) after the server accepted a message but before ``sent_at`` was written
sends it again. Every send of a row carries the same ``Message-ID``, derived from the
row's dedupe key (``message_id_for``), the same ``Date`` (when the row was written) and
the same content, so the resend is recognisably the same message: receivers that
deduplicate by Message-ID (our catcher does, as do many mailbox providers) show it once;
others may show it twice. Nothing is ever marked sent that the server did not accept,
and no row is lost: a row is pending until it is sent or deliberately given up with its
reason in ``last_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.errors
import email.utils
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiosmtplib
import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.persistence import tables
from payportal.persistence._engine import READ

from ._outbox import KIND_EMAIL, OutboxEmail, public_url
from .payments import PAYMENT_KINDS, render_payment_email

__all__ = [
    "MAIL_FROM_DEFAULT",
    "OutboxSender",
    "SendPolicy",
    "SmtpTarget",
    "message_id_for",
    "smtp_target",
]

log = logging.getLogger(__name__)

MAIL_FROM_DEFAULT: Final = "Payportal <payments@payportal.localhost>"
# ``outbox.last_error`` is VARCHAR(500).
ERROR_CHARS_MAX: Final = 500

_email_decoder: Final = msgspec.msgpack.Decoder(OutboxEmail)


class SendPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When to try a row again after a temporary failure. ``attempts_max`` counts every
    attempt, the first included; 12 attempts at these intervals span about 17 hours,
    longer than a mail server's usual maintenance or greylisting."""

    interval_ms_initial: int = 30_000
    backoff_coefficient: int = 2
    interval_ms_max: int = 4 * 3_600_000
    attempts_max: int = 12
    # Spreads a burst of retries (a mail server back after an outage) over time.
    jitter_permille: int = 200
    # How long a claim holds a row: comfortably longer than one SMTP send may take
    # (``smtp_timeout_s``), so a live sender never loses a row it is still sending.
    lease_ms: int = 120_000
    smtp_timeout_s: float = 30.0
    # Rows one claim takes: small, so a row waits behind few others of a stuck sender.
    batch_max: int = 20
    # Idle wait between scans of an empty outbox.
    poll_interval_ms: int = 500


def next_delay_ms(policy: SendPolicy, attempts: int, rng: random.Random) -> int | None:
    """The wait before attempt ``attempts + 1``, or None when the attempts are spent."""
    assert attempts >= 1, attempts
    if attempts >= policy.attempts_max:
        return None
    delay = policy.interval_ms_initial * policy.backoff_coefficient ** (attempts - 1)
    delay = min(delay, policy.interval_ms_max)
    jitter = delay * policy.jitter_permille // 1000
    return delay + (rng.randint(0, jitter) if jitter else 0)


class SmtpTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where the sender delivers. Its repr never shows the password."""

    hostname: str
    port: int
    use_tls: bool = False  # smtps:// — TLS from the first byte
    username: str | None = None
    password: str | None = msgspec.field(default=None)

    def __repr__(self) -> str:
        return f"SmtpTarget({self.hostname}:{self.port}, tls={self.use_tls})"


def smtp_target(smtp_url: str | None, *, catcher_port: int = 8025) -> SmtpTarget:
    """``PAYPORTAL_SMTP_URL`` (smtp://user:pass@host:587 upgrades with STARTTLS when the
    server offers it; smtps://host:465 is TLS throughout), else the built-in catcher."""
    if smtp_url is None:
        return SmtpTarget(hostname="127.0.0.1", port=catcher_port)
    parts = urlsplit(smtp_url)
    assert parts.scheme in ("smtp", "smtps"), parts.scheme
    assert parts.hostname, "settings validated the host"
    use_tls = parts.scheme == "smtps"
    return SmtpTarget(
        hostname=parts.hostname, port=parts.port or (465 if use_tls else 25), use_tls=use_tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )  # fmt: skip


def message_id_for(dedupe_key: str, mail_from: str = MAIL_FROM_DEFAULT) -> str:
    """The row's ``Message-ID``: the same for every send of one outbox row."""
    domain = email.utils.parseaddr(mail_from)[1].rpartition("@")[2] or "payportal.localhost"
    digest = hashlib.sha256(dedupe_key.encode()).hexdigest()[:40]
    return f"<{digest}@{domain}>"


class _Temporary(Exception):
    """Try again later."""


class _Permanent(Exception):
    """Trying again cannot help."""


class _Malformed(Exception):
    """The SMTP client refused to send the message as it is."""


def _classify(error: BaseException) -> Exception:
    """An SMTP or network error as ``_Temporary`` or ``_Permanent``, message kept short."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in error.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in error.recipients)
        if any(400 <= code < 500 for code in codes):
            return _Temporary(f"recipients refused: {text}")
        return _Permanent(f"recipients refused: {text}")
    if isinstance(error, aiosmtplib.SMTPResponseException):
        text = f"SMTP {error.code} {error.message}"
        if 500 <= error.code < 600:
            return _Permanent(text)
        return _Temporary(text)
    # Connection refused or dropped, timeouts, TLS trouble: the server may be back later.
    return _Temporary(f"{type(error).__name__}: {error}")


class _Claimed(msgspec.Struct, kw_only=True):
    id: int
    kind: str
    dedupe_key: str
    payload: bytes
    attempts: int
    lease_until_ms: int
    created_at: dt.datetime


class OutboxSender:
    """Delivers the outbox. ``run_once`` handles one claim; ``run`` loops until cancelled."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        smtp: SmtpTarget,
        mail_from: str = MAIL_FROM_DEFAULT,
        policy: SendPolicy | None = None,
        owner: str | None = None,
        base_url: str | None = None,
        clock_ms: Callable[[], int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        # Rendering only reads: on SQLite a deferred BEGIN takes no write lock.
        self._reader = engine.execution_options(**READ)
        self.smtp = smtp
        self.mail_from = mail_from
        self.policy = policy or SendPolicy()
        # Unique per process and sender, so a lease names who holds it.
        self.owner = owner or f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._base_url = base_url
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look at the outbox now instead of after the idle wait (e.g. after enqueueing)."""
        self._wake.set()

    async def run(self) -> None:
        """Send until cancelled. Errors of one round are logged, and the next round runs."""
        log.info("mail sender %s delivering to %r", self.owner, self.smtp)
        while True:
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("mail sender: round failed; retrying")
                handled = 0
            if handled:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.policy.poll_interval_ms / 1000)

    async def run_once(self) -> int:
        """Claim due rows, send them, record each result. Returns how many were claimed."""
        claimed = await self._claim()
        if not claimed:
            return 0
        smtp: aiosmtplib.SMTP | None = None
        try:
            for row in claimed:
                # Too little of the lease left to send within it: another sender may take
                # the row meanwhile, so leave it to whoever claims it next.
                if self._clock_ms() + self.policy.smtp_timeout_s * 1000 >= row.lease_until_ms:
                    continue
                smtp = await self._handle(row, smtp)
        finally:
            if smtp is not None and smtp.is_connected:
                with contextlib.suppress(Exception):
                    await smtp.quit()
        return len(claimed)

    # -- the lease --------------------------------------------------------------------

    async def _claim(self) -> list[_Claimed]:
        o = tables.outbox.c
        now_ms = self._clock_ms()
        due = (
            sa.select(o.id)
            .where(
                o.sent_at.is_(None), o.failed_at.is_(None), o.due_at_ms <= now_ms,
                sa.or_(o.lease_until_ms.is_(None), o.lease_until_ms <= now_ms),
            )
            .order_by(o.due_at_ms, o.id)
            .limit(self.policy.batch_max)
            # PostgreSQL: senders skip each other's rows; SQLite renders no FOR UPDATE and
            # serializes the whole UPDATE under its write lock instead.
            .with_for_update(skip_locked=True)
        )  # fmt: skip
        claim = (
            sa.update(tables.outbox)
            .where(o.id.in_(due.scalar_subquery()))
            .values(lease_owner=self.owner, lease_until_ms=now_ms + self.policy.lease_ms,
                    attempts=o.attempts + 1)
            .returning(o.id, o.kind, o.dedupe_key, o.payload, o.attempts, o.lease_until_ms,
                       o.created_at)
        )  # fmt: skip
        async with self.engine.begin() as connection:
            rows = (await connection.execute(claim)).all()
        return sorted(
            (_Claimed(id=r.id, kind=r.kind, dedupe_key=r.dedupe_key, payload=bytes(r.payload),
                      attempts=r.attempts, lease_until_ms=r.lease_until_ms,
                      created_at=r.created_at) for r in rows),
            key=lambda row: row.id,
        )  # fmt: skip

    async def _finish(self, row: _Claimed, values: dict[str, Any], *, held: bool) -> None:
        """Write a result; with ``held``, only while this sender still holds the lease."""
        o = tables.outbox.c
        statement = sa.update(tables.outbox).where(o.id == row.id, o.sent_at.is_(None))
        if held:
            statement = statement.where(o.lease_owner == self.owner)
        async with self.engine.begin() as connection:
            await connection.execute(statement.values(**values))

    async def _mark_sent(self, row: _Claimed, note: str | None = None) -> None:
        # Whoever holds the lease now: the server accepted the message, so it is sent.
        await self._finish(
            row,
            {"sent_at": sa.func.now(), "lease_owner": None, "lease_until_ms": None,
             "last_error": note},
            held=False,
        )  # fmt: skip

    async def _retry_later(self, row: _Claimed, error: str) -> None:
        delay_ms = next_delay_ms(self.policy, row.attempts, self._rng)
        if delay_ms is None:
            log.warning("mail %s: giving up after %d attempts: %s", row.id, row.attempts, error)
            await self._give_up(row, f"gave up after {row.attempts} attempts: {error}")
            return
        log.info("mail %s: temporary failure, retrying in %d ms: %s", row.id, delay_ms, error)
        await self._finish(
            row,
            {"due_at_ms": self._clock_ms() + delay_ms, "lease_owner": None,
             "lease_until_ms": None, "last_error": error[:ERROR_CHARS_MAX]},
            held=True,
        )  # fmt: skip

    async def _give_up(self, row: _Claimed, error: str) -> None:
        await self._finish(
            row,
            {"failed_at": sa.func.now(), "lease_owner": None, "lease_until_ms": None,
             "last_error": error[:ERROR_CHARS_MAX]},
            held=True,
        )  # fmt: skip

    # -- one row ------------------------------------------------------------------------

    async def _message(self, row: _Claimed) -> EmailMessage:
        if row.kind == KIND_EMAIL:
            stored = _email_decoder.decode(row.payload)
        elif row.kind in PAYMENT_KINDS:
            async with self._reader.connect() as connection:
                stored = await render_payment_email(
                    connection, kind=row.kind, payload=row.payload,
                    public_url=self._base_url or public_url(),
                )  # fmt: skip
        else:
            raise _Permanent(f"unknown outbox kind {row.kind!r}")
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = ", ".join(stored.to)
        if stored.cc:
            message["Cc"] = ", ".join(stored.cc)
        message["Subject"] = stored.subject
        message["Message-ID"] = message_id_for(row.dedupe_key, self.mail_from)
        # When the row was written, so every send of it is the same message.
        created_at = row.created_at
        if created_at.tzinfo is None:  # SQLite keeps the database's UTC clock without zone
            created_at = created_at.replace(tzinfo=dt.UTC)
        message["Date"] = email.utils.format_datetime(created_at)
        message.set_content(stored.text)
        message.add_alternative(stored.html, subtype="html")
        return message

    @staticmethod
    async def _reset(smtp: aiosmtplib.SMTP | None) -> aiosmtplib.SMTP | None:
        """The connection, reset for the next message; None if it cannot be."""
        if smtp is None:
            return None
        try:
            await smtp.rset()
        except Exception:
            smtp.close()
            return None
        return smtp

    async def _connect(self) -> aiosmtplib.SMTP:
        target = self.smtp
        smtp = aiosmtplib.SMTP(
            hostname=target.hostname, port=target.port, use_tls=target.use_tls,
            username=target.username, password=target.password,
            timeout=self.policy.smtp_timeout_s,
        )  # fmt: skip
        await smtp.connect()
        return smtp

    async def _handle(self, row: _Claimed, smtp: aiosmtplib.SMTP | None) -> aiosmtplib.SMTP | None:
        """Send one claimed row and record the result; returns the connection to reuse."""
        try:
            message = await self._message(row)
        except _Permanent as error:
            await self._give_up(row, str(error))
            return smtp
        except (LookupError, msgspec.DecodeError, ValueError) as error:
            # Nobody to write to, or a payload that does not render: a resend is the same.
            log.warning("mail %s: cannot be built: %s", row.id, error)
            await self._give_up(row, f"cannot be built: {error}")
            return smtp
        try:
            if smtp is None or not smtp.is_connected:
                smtp = await self._connect()
            try:
                refused, _ = await smtp.send_message(message)
            except (ValueError, email.errors.MessageError) as error:
                raise _Malformed(str(error)) from None
        except _Malformed as error:
            # aiosmtplib checks addresses and commands as it sends (a control character, an
            # address it cannot parse) and raises ValueError mid-transaction: the same
            # message fails the same way every time, so it is given up, not retried.
            log.warning("mail %s: refused as malformed: %s", row.id, error)
            await self._give_up(row, f"malformed: {error}")
            return await self._reset(smtp)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            outcome = _classify(error)
            if isinstance(error, aiosmtplib.SMTPResponseException) and smtp is not None:
                # The connection is still good after a refused message: reset it for the next.
                with contextlib.suppress(Exception):
                    await smtp.rset()
            if isinstance(outcome, _Permanent):
                log.warning("mail %s: permanently refused: %s", row.id, outcome)
                await self._give_up(row, str(outcome))
            else:
                await self._retry_later(row, str(outcome))
            return smtp
        note = None
        if refused:
            # Some recipients took it; a resend would duplicate it for them.
            note = "; ".join(f"{a}: {r.code} {r.message}" for a, r in refused.items())
            note = f"sent; refused for {note}"[:ERROR_CHARS_MAX]
        await self._mark_sent(row, note)
        return smtp
