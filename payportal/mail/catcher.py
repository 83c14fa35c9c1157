"""The built-in mail catcher: an SMTP server that keeps what it receives, and its inbox.

For development and tests, so ``make run`` shows the whole loop without a real mail
server: ``payportal serve`` starts it when ``PAYPORTAL_SMTP_URL`` is unset, on
127.0.0.1:8025 (SMTP, aiosmtpd) and 127.0.0.1:8026 (the inbox, aiohttp;
``PAYPORTAL_MAIL_CATCHER_PORT`` and ``PAYPORTAL_MAIL_UI_PORT`` move them).

The model: messages live in memory, newest last, at most ``MESSAGES_MAX``; a restart
empties the inbox. A message whose ``Message-ID`` is already there is accepted and
dropped, as a receiving mailbox would — this is what makes the sender's resend after a
crash (same Message-ID, see ``sender.py``) show once. ``deliveries`` counts every SMTP
transaction anyway, so tests can see the resend happened.

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
import datetime as dt
import email
import email.policy
import functools
import hashlib
import html
import itertools
import logging
import re
from email.message import EmailMessage
from typing import Any, Final

import msgspec
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["CatchedMessage", "MailCatcher", "MailInbox", "start_catcher"]

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


class MailInbox:
    """The messages, deduplicated by Message-ID."""

    def __init__(self, messages_max: int = MESSAGES_MAX) -> None:
        self.messages: collections.OrderedDict[str, CatchedMessage] = collections.OrderedDict()
        self.messages_max = messages_max
        # Every accepted SMTP transaction, duplicates included.
        self.deliveries = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()

    def add(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> bool:
        """Keep a message; False when its Message-ID was already here (then it is dropped)."""
        self.deliveries += 1
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        message_id = _header(parsed, "Message-ID")
        if not message_id:
            # Without one there is nothing to deduplicate on; the content stands in.
            message_id = "<sha256-" + hashlib.sha256(content).hexdigest() + "@catcher>"
        if message_id in self.messages:
            return False
        text_part = parsed.get_body(preferencelist=("plain",))
        html_part = parsed.get_body(preferencelist=("html",))
        self.messages[message_id] = CatchedMessage(
            id=next(self._ids), message_id=message_id,
            received_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            mail_from=mail_from, rcpt_tos=list(rcpt_tos),
            from_=_header(parsed, "From"), to=_header(parsed, "To"), cc=_header(parsed, "Cc"),
            subject=_header(parsed, "Subject"), date=_header(parsed, "Date"),
            text=text_part.get_content() if text_part is not None else "",
            html=html_part.get_content() if html_part is not None else "",
            raw=content.decode("utf-8", "replace"),
        )  # fmt: skip
        while len(self.messages) > self.messages_max:
            self.messages.popitem(last=False)
        return True

    def list(self) -> list[CatchedMessage]:
        return list(self.messages.values())

    def get(self, number: int) -> CatchedMessage | None:
        return next((m for m in self.messages.values() if m.id == number), None)

    def clear(self) -> None:
        self.messages.clear()
        self.deliveries = 0


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
    body = msgspec.json.encode({"messages": inbox.list(), "deliveries": inbox.deliveries})
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
        smtp_port: int, ui_port: int | None,
    ) -> None:  # fmt: skip
        self.inbox = inbox
        self._smtp_server = smtp_server
        self._runner = runner
        self.smtp_port = smtp_port
        self.ui_port = ui_port

    async def close(self) -> None:
        self._smtp_server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self._smtp_server.wait_closed()


def _bound_port(server: Any) -> int:
    return int(server.sockets[0].getsockname()[1])


async def start_catcher(
    *, host: str = "127.0.0.1", smtp_port: int = 8025, ui_port: int | None = 8026,
    inbox: MailInbox | None = None, handler: Any = None,
) -> MailCatcher:  # fmt: skip
    """Start the SMTP server (and, unless ``ui_port`` is None, the inbox) on this loop.
    Port 0 picks a free port; the bound ones are on the result. ``handler`` replaces the
    default aiosmtpd handler (tests use one that answers 4xx/5xx)."""
    inbox = inbox if inbox is not None else MailInbox()
    loop = asyncio.get_running_loop()
    smtp_server = await loop.create_server(
        functools.partial(SMTP, handler if handler is not None else _Handler(inbox),
                          hostname="payportal-catcher", loop=loop),
        host, smtp_port,
    )  # fmt: skip
    runner = None
    bound_ui = None
    try:
        if ui_port is not None:
            runner = web.AppRunner(create_inbox_app(inbox), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, ui_port)
            await site.start()
            bound_ui = int(runner.addresses[0][1])
    except BaseException:
        smtp_server.close()
        if runner is not None:
            await runner.cleanup()
        raise
    return MailCatcher(inbox, smtp_server, runner, _bound_port(smtp_server), bound_ui)
