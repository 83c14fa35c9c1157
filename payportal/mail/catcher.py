"""The built-in mail catcher: an SMTP server that keeps what it receives, and its inbox.

For development and tests, so ``make run`` shows the whole loop without a real mail
server: ``payportal serve`` starts it when ``PAYPORTAL_SMTP_URL`` is unset, on
127.0.0.1:8025 (SMTP, aiosmtpd) and 127.0.0.1:8026 (the inbox, aiohttp;
``PAYPORTAL_MAIL_CATCHER_PORT`` and ``PAYPORTAL_MAIL_UI_PORT`` move them).

``payportal mail-catcher`` runs it as a process of its own (``run_catcher_process``), as
a real mail server would be; ``serve`` starts that process.

The model: messages live in memory, newest last, at most ``MESSAGES_MAX``; a restart
empties the inbox. A message whose ``Message-ID`` is already there is accepted and
dropped, as a receiving mailbox would — this is what makes the sender's resend after a
crash (same Message-ID, see ``sender.py``) show once. ``deliveries`` counts every SMTP
transaction anyway, so tests can see the resend happened, and ``connections`` every SMTP
connection accepted, so they can see a sender keep one. Receiving reads only the
Message-ID; the rest of a message is parsed when the inbox first shows it (parsing with
the email package costs milliseconds, most of the catcher's CPU per message otherwise).

The inbox: ``GET /`` lists messages, ``GET /messages/{n}`` shows one (headers, the text
part, and the HTML part in a sandboxed iframe: no scripts, no same-origin access, links
open in a new tab), ``GET /messages/{n}/raw`` the source, ``GET /api/messages`` the list
as JSON (with bodies), ``DELETE /api/messages`` empties it. Every page is served with a
strict Content-Security-Policy (no scripts at all), ``nosniff`` and no framing by others.
Loopback only: the inbox has no login.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import email
import email.policy
import functools
import hashlib
import html
import itertools
import logging
import re
import signal
import sys
from email.message import EmailMessage
from typing import Any, Final

import msgspec
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["CatchedMessage", "MailCatcher", "MailInbox", "run_catcher_process", "start_catcher"]

log = logging.getLogger(__name__)

# Enough for a long development session; the oldest are dropped first.
MESSAGES_MAX: Final = 1_000


class CatchedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One received message, as the JSON API shows it."""

    id: int
    message_id: str
    received_at: str
    mail_from: str
    rcpt_tos: list[str]
    from_: str = msgspec.field(name="from")
    to: str
    cc: str
    subject: str
    date: str
    text: str
    html: str
    raw: str


def _header(message: EmailMessage, name: str) -> str:
    # Unfolded, as a mail client shows it: a long subject is folded onto a second line.
    return " ".join(str(message.get(name, "")).split())


# The Message-ID header in a message's header block, with its folded continuation lines.
_MESSAGE_ID: Final = re.compile(rb"(?im)^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)")
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")


def _message_id(content: bytes) -> str:
    """The unfolded Message-ID, read from the header block without parsing the message."""
    end = _HEADER_END.search(content)
    found = _MESSAGE_ID.search(content, 0, end.start() if end else len(content))
    if found is None:
        return ""
    return " ".join(found.group(1).decode("utf-8", "replace").split())


class _Received(msgspec.Struct, kw_only=True):
    id: int
    message_id: str
    received_at: str
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    parsed: CatchedMessage | None = None


def _parsed(received: _Received) -> CatchedMessage:
    if received.parsed is not None:
        return received.parsed
    content = received.content
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    text_part = parsed.get_body(preferencelist=("plain",))
    html_part = parsed.get_body(preferencelist=("html",))
    received.parsed = CatchedMessage(
        id=received.id, message_id=received.message_id, received_at=received.received_at,
        mail_from=received.mail_from, rcpt_tos=received.rcpt_tos,
        from_=_header(parsed, "From"), to=_header(parsed, "To"), cc=_header(parsed, "Cc"),
        subject=_header(parsed, "Subject"), date=_header(parsed, "Date"),
        text=text_part.get_content() if text_part is not None else "",
        html=html_part.get_content() if html_part is not None else "",
        raw=content.decode("utf-8", "replace"),
    )  # fmt: skip
    return received.parsed


class MailInbox:
    """The messages, deduplicated by Message-ID."""

    def __init__(self, messages_max: int = MESSAGES_MAX) -> None:
        self.messages: collections.OrderedDict[str, _Received] = collections.OrderedDict()
        self.messages_max = messages_max
        # Every accepted SMTP transaction, duplicates included.
        self.deliveries = 0
        # Every SMTP connection accepted.
        self.connections = 0
        self._ids = itertools.count(1)

    def add(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> bool:
        """Keep a message; False when its Message-ID was already here (then it is dropped)."""
        self.deliveries += 1
        message_id = _message_id(content)
        if not message_id:
            # Without one there is nothing to deduplicate on; the content stands in.
            message_id = "<sha256-" + hashlib.sha256(content).hexdigest() + "@catcher>"
        if message_id in self.messages:
            return False
        self.messages[message_id] = _Received(
            id=next(self._ids), message_id=message_id,
            received_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            mail_from=mail_from, rcpt_tos=list(rcpt_tos), content=content,
        )  # fmt: skip
        while len(self.messages) > self.messages_max:
            self.messages.popitem(last=False)
        return True

    def list(self) -> list[CatchedMessage]:
        return [_parsed(received) for received in self.messages.values()]

    def get(self, number: int) -> CatchedMessage | None:
        found = next((m for m in self.messages.values() if m.id == number), None)
        return None if found is None else _parsed(found)

    def clear(self) -> None:
        self.messages.clear()
        self.deliveries = 0
        self.connections = 0


class _Handler:
    """aiosmtpd handler: every message is accepted into the inbox."""

    def __init__(self, inbox: MailInbox) -> None:
        self.inbox = inbox

    # aiosmtpd's hook name.
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        self.inbox.add(str(envelope.mail_from or ""), list(envelope.rcpt_tos), content)
        return "250 Message accepted for delivery"


# -- the inbox pages --------------------------------------------------------------------

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;margin:0;padding:1rem;max-width:60rem;"
    "margin-inline:auto;color:#1f2328}"
    "table{width:100%;border-collapse:collapse}td,th{text-align:left;padding:.4rem;"
    "border-bottom:1px solid #d0d7de;vertical-align:top}"
    "a{color:#0b5cad}a:focus-visible{outline:3px solid #0b5cad;outline-offset:2px}"
    "pre{white-space:pre-wrap;background:#f6f8fa;padding:1rem;border-radius:6px}"
    "iframe{width:100%;height:40rem;border:1px solid #d0d7de;border-radius:6px}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}dt{font-weight:600}"
)
_STYLE_HASH: Final = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
# Inbox pages: no script at all, only our one stylesheet, frames only from ourselves.
_CSP_PAGE: Final = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; frame-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# An email's HTML: its own inline styles and images, never a script, nothing fetched but
# images; framed only by the inbox, and sandboxed even if opened directly.
_CSP_EMAIL: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; "
    "sandbox allow-popups allow-popups-to-escape-sandbox"
)


def _headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _page(title: str, body: str) -> web.Response:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
    return web.Response(text=document, content_type="text/html", headers=_headers(_CSP_PAGE))


def _message_or_404(request: web.Request) -> CatchedMessage:
    try:
        number = int(request.match_info["number"])
    except ValueError:
        raise web.HTTPNotFound() from None
    message = request.app[INBOX].get(number)
    if message is None:
        raise web.HTTPNotFound()
    return message


async def _list(request: web.Request) -> web.Response:
    inbox = request.app[INBOX]
    rows = "".join(
        f'<tr><td><a href="/messages/{m.id}">{html.escape(m.subject) or "(no subject)"}</a></td>'
        f"<td>{html.escape(m.to)}</td><td>{html.escape(m.received_at)}</td></tr>"
        for m in reversed(inbox.list())
    )
    body = (
        "<h1>Mail catcher</h1>"
        f"<p>{len(inbox.messages)} messages ({inbox.deliveries} deliveries). "
        "Emails the portal sends arrive here. Newest first.</p>"
        + (
            f"<table><thead><tr><th scope=col>Subject</th><th scope=col>To</th>"
            f"<th scope=col>Received</th></tr></thead><tbody>{rows}</tbody></table>"
            if rows
            else "<p>No messages yet.</p>"
        )
    )
    return _page("Mail catcher", body)


async def _show(request: web.Request) -> web.Response:
    m = _message_or_404(request)
    fields = (("From", m.from_), ("To", m.to), ("Cc", m.cc), ("Subject", m.subject),
              ("Date", m.date), ("Message-ID", m.message_id))  # fmt: skip
    header_list = "".join(
        f"<dt>{name}</dt><dd>{html.escape(value)}</dd>" for name, value in fields if value
    )
    body = (
        '<p><a href="/">← Inbox</a></p>'
        f"<h1>{html.escape(m.subject) or '(no subject)'}</h1><dl>{header_list}</dl>"
        + (
            f'<h2>HTML</h2><iframe sandbox="allow-popups allow-popups-to-escape-sandbox" '
            f'src="/messages/{m.id}/html" title="The email as HTML"></iframe>'
            if m.html
            else ""
        )
        + f"<h2>Text</h2><pre>{html.escape(m.text)}</pre>"
        f'<p><a href="/messages/{m.id}/raw">Source</a></p>'
    )
    return _page(m.subject or "Message", body)


_HEAD: Final = re.compile(r"<head[^>]*>", re.IGNORECASE)


async def _show_html(request: web.Request) -> web.Response:
    m = _message_or_404(request)
    # Links leave the frame for a new tab rather than loading the portal inside it.
    document = _HEAD.sub(lambda found: found.group(0) + '<base target="_blank">', m.html, 1)
    return web.Response(text=document, content_type="text/html", headers=_headers(_CSP_EMAIL))


async def _raw(request: web.Request) -> web.Response:
    m = _message_or_404(request)
    return web.Response(text=m.raw, content_type="text/plain", headers=_headers(_CSP_PAGE))


async def _api_list(request: web.Request) -> web.Response:
    inbox = request.app[INBOX]
    body = msgspec.json.encode(
        {"messages": inbox.list(), "deliveries": inbox.deliveries,
         "connections": inbox.connections}
    )  # fmt: skip
    return web.Response(body=body, content_type="application/json", headers=_headers(_CSP_PAGE))


async def _api_clear(request: web.Request) -> web.Response:
    request.app[INBOX].clear()
    return web.Response(status=204, headers=_headers(_CSP_PAGE))


INBOX: Final = web.AppKey("mail_inbox", MailInbox)


def create_inbox_app(inbox: MailInbox) -> web.Application:
    app = web.Application()
    app[INBOX] = inbox
    app.router.add_get("/", _list)
    app.router.add_get("/messages/{number}", _show)
    app.router.add_get("/messages/{number}/html", _show_html)
    app.router.add_get("/messages/{number}/raw", _raw)
    app.router.add_get("/api/messages", _api_list)
    app.router.add_delete("/api/messages", _api_clear)
    return app


class MailCatcher:
    """A running catcher: ``inbox``, the bound ports, and ``close()``."""

    def __init__(
        self, inbox: MailInbox, smtp_server: asyncio.Server, runner: web.AppRunner | None,
        smtp_port: int, ui_port: int | None, sessions: set[SMTP],
    ) -> None:  # fmt: skip
        self.inbox = inbox
        self._smtp_server = smtp_server
        self._runner = runner
        self._sessions = sessions
        self.smtp_port = smtp_port
        self.ui_port = ui_port

    @property
    def open_sessions(self) -> int:
        """SMTP connections open now."""
        return len(self._sessions)

    def drop_sessions(self) -> None:
        """End every open SMTP connection, as a server does with idle ones."""
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()

    async def close(self) -> None:
        self._smtp_server.close()
        # A sender keeps its connection open between messages: end those sessions too.
        self.drop_sessions()
        if self._runner is not None:
            await self._runner.cleanup()
        await self._smtp_server.wait_closed()


def _bound_port(server: Any) -> int:
    return int(server.sockets[0].getsockname()[1])


class _CountedSMTP(SMTP):
    """aiosmtpd's server protocol, counted into the inbox and tracked while connected."""

    def __init__(self, handler: Any, *, inbox: MailInbox, sessions: set[SMTP],
                 **options: Any) -> None:  # fmt: skip
        super().__init__(handler, **options)
        self._inbox = inbox
        self._sessions = sessions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inbox.connections += 1
        self._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        super().connection_lost(error)


async def start_catcher(
    *, host: str = "127.0.0.1", smtp_port: int = 8025, ui_port: int | None = 8026,
    inbox: MailInbox | None = None, handler: Any = None,
) -> MailCatcher:  # fmt: skip
    """Start the inbox (unless ``ui_port`` is None) and then the SMTP server on this loop,
    so once SMTP accepts connections both are up. Port 0 picks a free port; the bound ones
    are on the result. ``handler`` replaces the default aiosmtpd handler (tests use one
    that answers 4xx/5xx)."""
    inbox = inbox if inbox is not None else MailInbox()
    loop = asyncio.get_running_loop()
    runner = None
    bound_ui = None
    sessions: set[SMTP] = set()
    try:
        if ui_port is not None:
            runner = web.AppRunner(create_inbox_app(inbox), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, ui_port)
            await site.start()
            bound_ui = int(runner.addresses[0][1])
        smtp_server = await loop.create_server(
            functools.partial(_CountedSMTP, handler if handler is not None else _Handler(inbox),
                              inbox=inbox, sessions=sessions, hostname="payportal-catcher",
                              loop=loop),
            host, smtp_port,
        )  # fmt: skip
    except BaseException:
        if runner is not None:
            await runner.cleanup()
        raise
    return MailCatcher(inbox, smtp_server, runner, _bound_port(smtp_server), bound_ui, sessions)


def run_catcher_process(settings: Any, *, smtp_port: int | None = None,
                        ui_port: int | None = None) -> None:  # fmt: skip
    """``payportal mail-catcher``: the catcher and its inbox in this process, on uvloop,
    until SIGINT or SIGTERM. Raises ``OSError`` when a port cannot be bound."""
    from payportal.children import die_with_parent

    die_with_parent()
    with contextlib.suppress(ImportError):  # uvloop is a dependency; Windows lacks it
        import uvloop

        uvloop.install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # aiosmtpd logs every connection and command at INFO: noise, and CPU, per message.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    smtp_port = settings.mail_catcher_port if smtp_port is None else smtp_port
    ui_port = settings.mail_ui_port if ui_port is None else ui_port
    asyncio.run(_serve_catcher(smtp_port, ui_port))


async def _serve_catcher(smtp_port: int, ui_port: int) -> None:
    catcher = await start_catcher(smtp_port=smtp_port, ui_port=ui_port)
    print(f"mail catcher: SMTP on 127.0.0.1:{catcher.smtp_port}, inbox on "
          f"http://127.0.0.1:{catcher.ui_port}/", file=sys.stderr, flush=True)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await catcher.close()
