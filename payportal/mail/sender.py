"""The outbox sender: claims due rows under a lease, sends them over SMTP, marks them.

The model: every pending ``outbox`` row (neither ``sent_at`` nor ``failed_at``) is due at
``due_at_ms``. A sender claims a batch of due rows by writing its name and a lease expiry
into them in ONE statement — on PostgreSQL the candidates are picked ``FOR UPDATE SKIP
LOCKED``, so concurrent senders take different rows without waiting; on SQLite the
conditional ``UPDATE … WHERE lease free`` runs under the database's single write lock
(``BEGIN IMMEDIATE``). So any number of senders may run. A claimed batch is rendered
with one read for all its payment rows (``payments.load_contacts``), sent over one SMTP
connection that the sender keeps open between rounds, and its results are written in
one transaction: every sent row in one UPDATE. If the sender dies, its lease expires and
another sender takes the rows.

Failures: a temporary one (SMTP 4xx, a refused or dropped connection, a timeout) puts
the row back with exponential backoff (``SendPolicy``: data, jitter from an injected
random source) and records the error; after ``attempts_max`` it is given up. A permanent
one (SMTP 5xx, an account with nobody to write to, a payload that cannot be rendered, a
message the SMTP client refuses as malformed — a header with a line break, an address
it cannot put on a command line) records the error and sets ``failed_at`` at once:
retrying cannot help. When the server cannot be reached, the rest of the batch is put
back untried with the same error. Trouble connecting or logging in is temporary (the
server or its settings get fixed), never a reason to give a message up.

The kept connection: opened on the first send, reused by later rounds, closed (QUIT)
after ``smtp_idle_s`` without a send and reopened on demand. After a refused message it
is reset (RSET); if that fails, or it times out or drops, it is closed and the next send
opens another. A kept connection the server closed while it was idle is noticed on the
next send, which is made once more on a fresh connection.

Waking: the sender does not poll a busy loop. On PostgreSQL it LISTENs on
``OUTBOX_CHANNEL`` over a connection of its own; the transactions that write outbox rows
NOTIFY it (the projection, ``enqueue_email``), and it wakes at their commit. On SQLite,
which has no notifications, it looks for a due row every ``poll_interval_ms`` with one
indexed ``SELECT … LIMIT 1`` and claims only when there is one. Either way it also wakes
when a retry it scheduled falls due, runs the next round at once after a full batch
(more are waiting), and looks every ``safety_interval_ms`` regardless — the net for a
lost notification or another sender's expired lease. A lost LISTEN connection is
reopened (polling meanwhile), and a round follows, for what it missed.

The delivery guarantee, honestly: AT LEAST ONCE to the SMTP server. A crash (or an
expired lease) after the server accepted a message but before ``sent_at`` was written
sends it again — with batches, every message of the batch sent before the crash. Every
send of a row carries the same ``Message-ID``, derived from the row's dedupe key
(``message_id_for``), the same ``Date`` (when the row was written) and the same content,
so the resend is recognisably the same message: receivers that deduplicate by Message-ID
(our catcher does, as do many mailbox providers) show it once; others may show it twice.
Nothing is ever marked sent that the server did not accept, and no row is lost: a row is
pending until it is sent or deliberately given up with its reason in ``last_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.errors
import email.utils
import functools
import hashlib
import ipaddress
import logging
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.persistence import tables
from payportal.persistence._engine import READ, asyncpg_connect_args
from payportal.persistence.sealing import SealedFieldError

from ._mime import SmtpMessage, build_message
from ._outbox import KIND_EMAIL, OutboxEmail, decode_email, public_url
from .payments import PAYMENT_KINDS, decode_notice, load_contacts, render_payment_notice

__all__ = [
    "MAIL_FROM_DEFAULT",
    "OutboxSender",
    "SendPolicy",
    "SmtpTarget",
    "message_id_for",
    "smtp_client",
    "smtp_target",
]

log = logging.getLogger(__name__)

MAIL_FROM_DEFAULT: Final = "Payportal <payments@payportal.localhost>"
# ``outbox.last_error`` is VARCHAR(500).
ERROR_CHARS_MAX: Final = 500
# An SMTP server's refusal often repeats the recipient's address; the outbox keeps
# addresses sealed (docs/operations.md "Data at rest"), so its notes keep none in clear.
_ADDRESS: Final = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")


def _stored_error(text: str) -> str:
    """``text`` as ``outbox.last_error`` keeps it: addresses replaced, length capped."""
    return _ADDRESS.sub("<address>", text)[:ERROR_CHARS_MAX]
# After a round that failed outright (the database is away), before the next one: the
# error is logged once per pause, not in a tight loop.
FAILED_ROUND_PAUSE_S: Final = 5.0
# How long reopening a lost LISTEN connection may take, and the wait between tries.
LISTEN_CONNECT_TIMEOUT_S: Final = 10.0
LISTEN_RETRY_S: Final = 5.0



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
    # Rows one claim takes. Claiming and marking cost a statement each per batch, so a
    # bigger batch is cheaper per email; a batch is sent in well under a second, and a
    # row the lease would not cover is left for the next claim.
    batch_max: int = 100
    # SQLite has no notifications: how often an idle sender looks for a due row (one
    # indexed probe). Also PostgreSQL's pace while its LISTEN connection is being reopened.
    poll_interval_ms: int = 1_000
    # The safety net under notifications and scheduled retries: look this often anyway.
    safety_interval_ms: int = 30_000
    # A kept SMTP connection unused this long is closed; the next send opens another.
    smtp_idle_s: float = 30.0


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
    """Where the sender delivers. Its repr never shows the password.

    TLS is aiosmtplib's, with certificates always verified: ``use_tls`` is TLS from the
    first byte; otherwise ``start_tls`` True requires STARTTLS (a server that does not
    offer it is refused, nothing is sent in the clear) and None upgrades when offered."""

    hostname: str
    port: int
    use_tls: bool = False  # smtps:// — TLS from the first byte
    start_tls: bool | None = None
    ca_file: str | None = None  # trusted besides the system's CAs (a private relay)
    username: str | None = None
    password: str | None = msgspec.field(default=None)

    def __repr__(self) -> str:
        tls = "tls" if self.use_tls else "starttls" if self.start_tls else "starttls if offered"
        return f"SmtpTarget({self.hostname}:{self.port}, {tls})"


def smtp_target(smtp_url: str | None, *, catcher_port: int = 8025,
                ca_file: str | None = None) -> SmtpTarget:  # fmt: skip
    """``PAYPORTAL_SMTP_URL``, else the built-in catcher. smtps://host:465 is TLS
    throughout; smtp://host:587?starttls=required must upgrade with STARTTLS; plain
    smtp:// upgrades when the server offers it, except that a password for a server not
    on this machine is only ever sent after STARTTLS."""
    if smtp_url is None:
        return SmtpTarget(hostname="127.0.0.1", port=catcher_port)
    parts = urlsplit(smtp_url)
    assert parts.scheme in ("smtp", "smtps"), parts.scheme
    assert parts.hostname, "settings validated the host"
    use_tls = parts.scheme == "smtps"
    required = parse_qs(parts.query).get("starttls") == ["required"]
    if not use_tls and parts.password and not _loopback(parts.hostname):
        required = True
    return SmtpTarget(
        hostname=parts.hostname, port=parts.port or (465 if use_tls else 25), use_tls=use_tls,
        start_tls=True if required else None, ca_file=ca_file,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )  # fmt: skip


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def smtp_client(target: SmtpTarget, *, timeout_s: float) -> aiosmtplib.SMTP:
    """An unconnected client for ``target``; ``connect()`` does TLS and login."""
    return aiosmtplib.SMTP(
        hostname=target.hostname, port=target.port, use_tls=target.use_tls,
        start_tls=target.start_tls, validate_certs=True, cert_bundle=target.ca_file,
        username=target.username, password=target.password, timeout=timeout_s,
    )  # fmt: skip


@functools.lru_cache(maxsize=16)
def _domain(mail_from: str) -> str:
    # Cached: parsing the one From address for every message was a measurable cost.
    return email.utils.parseaddr(mail_from)[1].rpartition("@")[2] or "payportal.localhost"


def message_id_for(dedupe_key: str, mail_from: str = MAIL_FROM_DEFAULT) -> str:
    """The row's ``Message-ID``: the same for every send of one outbox row."""
    domain = _domain(mail_from)
    digest = hashlib.sha256(dedupe_key.encode()).hexdigest()[:40]
    return f"<{digest}@{domain}>"


class _Temporary(Exception):
    """Try again later."""


class _Permanent(Exception):
    """Trying again cannot help."""


class _Unreachable(Exception):
    """The server could not be reached or the connection broke: the rest of the batch
    would fare no better this round."""


# What the SMTP client raises for a message it will not send as it is: an address it
# cannot put on a command line (ValueError), a non-ASCII address to a server without
# SMTPUTF8, a header the email package refuses to write.
_MALFORMED: Final = (ValueError, UnicodeError, email.errors.MessageError,
                     aiosmtplib.SMTPNotSupported)  # fmt: skip
# The connection is gone or in an unknown state.
_CONNECTION: Final = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError,
                      OSError, TimeoutError)  # fmt: skip


def _classify(error: BaseException) -> Exception:
    """An SMTP reply as ``_Temporary`` or ``_Permanent``, message kept short."""
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
    return _Temporary(f"{type(error).__name__}: {error}")


async def _transaction(smtp: aiosmtplib.SMTP, message: SmtpMessage) -> dict[str, Any]:
    """One SMTP transaction — MAIL, a RCPT per recipient, DATA — as aiosmtplib's
    ``sendmail`` runs it, minus its address parsing: it runs the email package's parser
    on every address three times a message (a third of the sender's CPU per email), and
    ``build_message`` has already checked them by the same rules. Returns the recipients
    refused while others took the message; raises as ``sendmail`` does."""
    if smtp.is_ehlo_or_helo_needed:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            await smtp.helo()
    options = []
    if message.utf8:
        if not smtp.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported(
                "a non-ASCII address, and the server does not offer SMTPUTF8"
            )
        options.append(b"SMTPUTF8")
    if smtp.supports_extension("size"):
        options.append(b"SIZE=%d" % len(message.data))
    encoding = "utf-8" if message.utf8 else "ascii"
    sender = message.mail_from.encode(encoding)
    response = await smtp.execute_command(b"MAIL", b"FROM:<" + sender + b">", *options)
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, message.mail_from)
    refused: dict[str, Any] = {}
    for recipient in message.recipients:
        response = await smtp.execute_command(b"RCPT", b"TO:<" + recipient.encode(encoding) + b">")
        if response.code not in (250, 251):
            refused[recipient] = response
    if len(refused) == len(message.recipients):
        raise aiosmtplib.SMTPRecipientsRefused([
            aiosmtplib.SMTPRecipientRefused(r.code, r.message, address)
            for address, r in refused.items()
        ])  # fmt: skip
    await smtp.data(message.data)
    return refused


class _Claimed(msgspec.Struct, kw_only=True):
    id: int
    kind: str
    dedupe_key: str
    payload: bytes
    attempts: int
    lease_until_ms: int
    created_at: dt.datetime


class _Results:
    """What a round did to each row, written together at its end."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.sent_with_note: list[tuple[int, str]] = []
        self.retry: list[tuple[_Claimed, str]] = []
        self.give_up: list[tuple[_Claimed, str]] = []

    def __bool__(self) -> bool:
        return bool(self.sent or self.sent_with_note or self.retry or self.give_up)


class OutboxSender:
    """Delivers the outbox. ``run_once`` handles one claim; ``run`` loops until
    ``stop()`` or cancellation; ``close()`` lets go of the SMTP and LISTEN connections."""

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
        # Rendering and probing only read: on SQLite a deferred BEGIN takes no write lock.
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
        self._stopping = False
        self._smtp: aiosmtplib.SMTP | None = None
        self._smtp_idle_at = 0.0  # monotonic time after which the kept connection closes
        # SMTP connections this sender opened, for tests and benchmarks.
        self.connections_opened = 0
        self._postgres = engine.dialect.name == "postgresql"
        self._listener: Any = None  # asyncpg connection LISTENing on OUTBOX_CHANNEL
        # LISTEN connections opened (PostgreSQL), for tests: a lost one is reopened.
        self.listens_opened = 0
        self._listen_retry_at = 0.0
        # The earliest retry this sender scheduled (clock_ms), so it wakes for it.
        self._next_due_ms: int | None = None

    # -- the loop -----------------------------------------------------------------------

    def wake(self) -> None:
        """Look at the outbox now instead of after the idle wait."""
        self._wake.set()

    def stop(self) -> None:
        """Let ``run`` return after the round in progress (nothing is cut mid-send)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Send until ``stop()`` or cancelled. A round that fails is logged; the next runs
        after a pause. Closes its connections when it returns."""
        log.info("mail sender %s delivering to %r", self.owner, self.smtp)
        try:
            if self._postgres:
                await self._listen()  # before the first round: nothing is missed between
            while not self._stopping:
                # Cleared before the claim: a notification during the round wakes the next.
                self._wake.clear()
                try:
                    handled = await self.run_once()
                except Exception:
                    log.exception("mail sender: round failed; retrying")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopped(), FAILED_ROUND_PAUSE_S)
                    continue
                if handled < self.policy.batch_max:  # a full batch: more are waiting
                    await self._idle()
        finally:
            await self.close()

    async def _stopped(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    async def _idle(self) -> None:
        """Wait until there is something to send: a notification, ``wake()``, a retry of
        ours falling due, or (on a timer) a probe that finds a due row."""
        while not self._stopping:
            reopen = self._postgres and self._listener is None
            if reopen and time.monotonic() >= self._listen_retry_at and await self._listen():
                return  # listening again: look at what arrived meanwhile
            listening = self._listener is not None
            interval_ms = (self.policy.safety_interval_ms if listening
                           else self.policy.poll_interval_ms)  # fmt: skip
            if self._next_due_ms is not None:
                interval_ms = min(interval_ms, max(0, self._next_due_ms - self._clock_ms()))
            look_at = time.monotonic() + interval_ms / 1000
            while True:
                now = time.monotonic()
                until = look_at
                if self._smtp is not None:
                    until = min(until, self._smtp_idle_at)
                if until > now:
                    try:
                        await asyncio.wait_for(self._wake.wait(), until - now)
                    except TimeoutError:
                        pass
                    else:
                        return
                if self._smtp is not None and time.monotonic() >= self._smtp_idle_at:
                    await self._close_smtp()
                if time.monotonic() >= look_at:
                    break
            if self._next_due_ms is not None and self._next_due_ms <= self._clock_ms():
                self._next_due_ms = None
                return
            if await self._due():
                return

    async def _due(self) -> bool:
        """Is any row due and unleased? One indexed read; errors say yes (the round that
        follows reports them)."""
        o = tables.outbox.c
        now_ms = self._clock_ms()
        probe = (
            sa.select(sa.literal(1)).select_from(tables.outbox)
            .where(o.sent_at.is_(None), o.failed_at.is_(None), o.due_at_ms <= now_ms,
                   sa.or_(o.lease_until_ms.is_(None), o.lease_until_ms <= now_ms))
            .limit(1)
        )  # fmt: skip
        try:
            if self._listener is not None:
                # Over the LISTEN connection: the safety net also proves it is alive.
                sql = str(probe.compile(dialect=self.engine.dialect,
                                        compile_kwargs={"literal_binds": True}))  # fmt: skip
                found = await self._listener.fetchval(sql, timeout=LISTEN_CONNECT_TIMEOUT_S)
                return found is not None
            async with self._reader.connect() as connection:
                return (await connection.execute(probe)).first() is not None
        except Exception as error:
            log.warning("mail sender: probing the outbox failed: %s", error)
            if self._listener is not None:
                await self._close_listener()
            return True

    # -- PostgreSQL notifications -------------------------------------------------------

    async def _listen(self) -> bool:
        """Open a connection of its own and LISTEN on the outbox channel; False (and
        polling until the next try) if the database cannot be reached."""
        import asyncpg  # type: ignore[import-untyped]

        dsn, tls = asyncpg_connect_args(self.engine.url)
        try:
            connection = await asyncpg.connect(dsn, timeout=LISTEN_CONNECT_TIMEOUT_S, **tls)
        except Exception as error:
            log.warning("mail sender: cannot LISTEN for the outbox (%s); polling meanwhile", error)
            self._listen_retry_at = time.monotonic() + LISTEN_RETRY_S
            return False
        try:
            await connection.add_listener(tables.OUTBOX_CHANNEL, self._notified)
        except Exception as error:
            log.warning("mail sender: LISTEN failed (%s); polling meanwhile", error)
            self._listen_retry_at = time.monotonic() + LISTEN_RETRY_S
            await connection.close()
            return False
        connection.add_termination_listener(self._listener_lost)
        self._listener = connection
        self.listens_opened += 1
        return True

    @property
    def listener_pid(self) -> int | None:
        """The PostgreSQL server process of the LISTEN connection, while there is one."""
        return None if self._listener is None else int(self._listener.get_server_pid())

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    def _listener_lost(self, connection: Any) -> None:
        if connection is self._listener:
            log.warning("mail sender: the LISTEN connection was lost; reopening it")
            self._listener = None
            self._wake.set()  # reopen it now, then look at what was missed

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close(timeout=5)

    async def close(self) -> None:
        """QUIT the kept SMTP connection and close the LISTEN connection."""
        await self._close_smtp()
        await self._close_listener()

    # -- one round ----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim due rows, send them, record the results. Returns how many were claimed."""
        claimed = await self._claim()
        if not claimed:
            return 0
        results = _Results()
        try:
            messages = await self._build(claimed, results)
            await self._send_all(messages, results)
        except Exception:
            # Keep what was decided (sent rows above all): their leases would lapse and
            # resend them otherwise.
            if results:
                await self._record(results)
            raise
        await self._record(results)
        return len(claimed)

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

    async def _build(
        self, claimed: list[_Claimed], results: _Results
    ) -> list[tuple[_Claimed, SmtpMessage]]:
        """Each row's message; rows that cannot become one are given up. The payment rows'
        account details are read for the whole batch at once."""
        notices: dict[int, Any] = {}
        for row in claimed:
            if row.kind in PAYMENT_KINDS:
                try:
                    notices[row.id] = decode_notice(row.payload)
                except msgspec.DecodeError as error:
                    results.give_up.append((row, f"cannot be built: {error}"))
        contacts = None
        if notices:
            async with self._reader.connect() as connection:
                contacts = await load_contacts(connection, notices.values())
        base_url = self._base_url or public_url()
        messages = []
        for row in claimed:
            try:
                if row.kind == KIND_EMAIL:
                    stored = decode_email(self._reader, row.payload)
                elif row.id in notices:
                    assert contacts is not None
                    stored = render_payment_notice(row.kind, notices[row.id], contacts,
                                                   public_url=base_url)  # fmt: skip
                elif row.kind in PAYMENT_KINDS:
                    continue  # its payload did not decode: given up above
                else:
                    results.give_up.append((row, f"unknown outbox kind {row.kind!r}"))
                    continue
                messages.append((row, self._message(row, stored)))
            except SealedFieldError as error:
                # Altered at rest (or sealed under a destroyed key): no retry can open it.
                log.error("mail %s: %s", row.id, error.at_row(str(row.id)))
                results.give_up.append((row, f"cannot be opened: {error.at_row(str(row.id))}"))
            except (LookupError, msgspec.DecodeError, ValueError) as error:
                # Nobody to write to, a payload that does not render, a header that cannot
                # be written: a resend would be the same.
                log.warning("mail %s: cannot be built: %s", row.id, error)
                results.give_up.append((row, f"cannot be built: {error}"))
            except Exception as error:
                # A bug (a template error, say): not this row's fault; retried with backoff
                # meanwhile, given up after the policy's attempts.
                log.exception("mail %s: building it failed", row.id)
                results.retry.append((row, f"building failed: {type(error).__name__}: {error}"))
        return messages

    def _message(self, row: _Claimed, stored: OutboxEmail) -> SmtpMessage:
        created_at = row.created_at
        if created_at.tzinfo is None:  # SQLite keeps the database's UTC clock without zone
            created_at = created_at.replace(tzinfo=dt.UTC)
        return build_message(
            mail_from=self.mail_from, to=stored.to, cc=stored.cc, subject=stored.subject,
            text=stored.text, html=stored.html,
            message_id=message_id_for(row.dedupe_key, self.mail_from),
            # When the row was written, so every send of it is the same message.
            date=created_at,
        )  # fmt: skip

    async def _send_all(
        self, messages: list[tuple[_Claimed, SmtpMessage]], results: _Results
    ) -> None:
        unreachable: str | None = None
        for row, message in messages:
            if unreachable is not None:
                results.retry.append((row, unreachable))
                continue
            # Too little of the lease left to send within it: another sender may take the
            # row meanwhile, so leave it to whoever claims it next.
            if self._clock_ms() + self.policy.smtp_timeout_s * 1000 >= row.lease_until_ms:
                continue
            try:
                refused = await self._transmit(message)
            except _Unreachable as error:
                unreachable = str(error)
                results.retry.append((row, unreachable))
            except _Permanent as error:
                log.warning("mail %s: permanently refused: %s", row.id, error)
                results.give_up.append((row, str(error)))
            except _Temporary as error:
                results.retry.append((row, str(error)))
            else:
                if refused:
                    # Some recipients took it; a resend would duplicate it for them.
                    note = "; ".join(f"{a}: {r.code} {r.message}" for a, r in refused.items())
                    results.sent_with_note.append((row.id, f"sent; refused for {note}"))
                else:
                    results.sent.append(row.id)

    # -- the kept SMTP connection -------------------------------------------------------

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = smtp_client(self.smtp, timeout_s=self.policy.smtp_timeout_s)
        await smtp.connect()
        return smtp

    async def _connection(self) -> tuple[aiosmtplib.SMTP, bool]:
        """(the connection, whether it was kept from before)."""
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp, True
        await self._close_smtp()
        try:
            self._smtp = await self._connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            # Refused, unreachable, TLS or login trouble: the server or its settings.
            raise _Unreachable(str(_classify(error))) from error
        self.connections_opened += 1
        return self._smtp, False

    async def _close_smtp(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            try:
                await asyncio.wait_for(smtp.quit(), 5)
            except Exception:  # it is going away either way
                smtp.close()

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        """After a refused message, clear the transaction; a connection that cannot be
        reset is closed (the next send opens another)."""
        try:
            await smtp.rset()
        except Exception:
            if smtp is self._smtp:
                self._smtp = None
            smtp.close()

    async def _transmit(self, message: SmtpMessage) -> dict[str, Any]:
        """Send one message over the kept connection; the recipients the server refused
        while accepting the message for others."""
        smtp, kept = await self._connection()
        try:
            return await self._attempt(smtp, message)
        except _Unreachable:
            if not kept:
                raise
        # A kept connection the server had closed while idle: once more on a fresh one.
        smtp, _ = await self._connection()
        return await self._attempt(smtp, message)

    async def _attempt(self, smtp: aiosmtplib.SMTP, message: SmtpMessage) -> dict[str, Any]:
        try:
            refused = await _transaction(smtp, message)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as error:
            await self._reset(smtp)  # the connection is still good after a refused message
            raise _classify(error) from error
        except _CONNECTION as error:
            await self._close_smtp()
            raise _Unreachable(f"{type(error).__name__}: {error}") from error
        except _MALFORMED as error:
            await self._reset(smtp)  # the client may have stopped mid-transaction
            raise _Permanent(f"refused by the SMTP client: {error}") from error
        except aiosmtplib.SMTPException as error:
            await self._close_smtp()
            raise _Temporary(f"{type(error).__name__}: {error}") from error
        self._smtp_idle_at = time.monotonic() + self.policy.smtp_idle_s
        return refused

    # -- results ------------------------------------------------------------------------

    async def _record(self, results: _Results) -> None:
        """Write a round's results in one transaction: the sent rows in one statement,
        each retry and give-up with its own due time and reason."""
        o = tables.outbox.c
        pending = sa.update(tables.outbox).where(o.sent_at.is_(None))
        released = {"lease_owner": None, "lease_until_ms": None}
        now_ms = self._clock_ms()
        retries = []
        for row, error in results.retry:
            delay_ms = next_delay_ms(self.policy, row.attempts, self._rng)
            if delay_ms is None:
                log.warning("mail %s: giving up after %d attempts: %s", row.id, row.attempts,
                            error)  # fmt: skip
                results.give_up.append((row, f"gave up after {row.attempts} attempts: {error}"))
            else:
                log.info("mail %s: temporary failure, retrying in %d ms: %s", row.id,
                         delay_ms, error)  # fmt: skip
                retries.append((row, now_ms + delay_ms, error))
        async with self.engine.begin() as connection:
            if results.sent:
                # Whoever holds the lease now: the server accepted them, so they are sent.
                await connection.execute(
                    pending.where(o.id.in_(results.sent))
                    .values(sent_at=sa.func.now(), last_error=None, **released)
                )  # fmt: skip
            for row_id, note in results.sent_with_note:
                await connection.execute(
                    pending.where(o.id == row_id)
                    .values(sent_at=sa.func.now(), last_error=_stored_error(note), **released)
                )  # fmt: skip
            # A retry or give-up only while this sender still holds the lease.
            held = pending.where(o.lease_owner == self.owner)
            for row, due_at_ms, error in retries:
                await connection.execute(
                    held.where(o.id == row.id)
                    .values(due_at_ms=due_at_ms, last_error=_stored_error(error), **released)
                )  # fmt: skip
            for row, error in results.give_up:
                await connection.execute(
                    held.where(o.id == row.id)
                    .values(failed_at=sa.func.now(), last_error=_stored_error(error),
                            **released)
                )  # fmt: skip
        if retries:
            earliest = min(due for _, due, _ in retries)
            if self._next_due_ms is None or earliest < self._next_due_ms:
                self._next_due_ms = earliest
