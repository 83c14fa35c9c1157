"""The merchant console at ``/console``: headline figures, accounts, payments, the retry
queue, revenue and reconciliation — server-rendered pages for the merchant's staff.

Sign-in: the merchant pastes one of its API keys (``sk_…``) into ``/console/signin``. The
key is verified like an API call's (``persistence.keys.verify_api_key``) and then
forgotten: the browser gets a console session cookie (``__Host-payportal_console``) whose
random token is stored only as its SHA-256 hash, in the portal's browser-session table
with the API key's id as its owner. A session lasts ``SESSION_TTL``, ends after
``SESSION_IDLE`` without a request, on sign-out, and as soon as its API key is revoked.
Failed sign-ins are limited per client address (``SIGNIN_FAILURES``; 429 past it).

Every form posts the CSRF token (``web.security``); pages carry the CSP nonce and the
security headers of every page. Single-tenant: one merchant per deployment, so any live
API key sees every account — as the API does for merchant keys.

Pages (all GET unless said): ``/console`` (the three headline figures for a window:
1h, 24h, 7d, 30d), ``/console/accounts?q=`` (search by id, name, email or external
reference; balances from the read model), ``/console/payments?status=&account=&from=&to=``,
``/console/retries`` (payments in ``retry_scheduled`` by next retry, with the last
decline code; attempts awaiting a status inquiry), ``/console/revenue?from=&to=``
(recognized and deferred revenue by currency and month of service, the accuracy against
the independent recomputation and the invoices that differ — ``&format=csv`` downloads
it; ``payportal.accounting.revenue_report``), ``/console/exceptions`` and
``POST /console/exceptions/{id}/resolve`` (open reconciliation exceptions and their
resolution with a reason and a note; ``payportal.accounting``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import sqlalchemy as sa
import structlog
from aiohttp import web
from limits import RateLimitItemPerMinute
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.accounting import (
    open_exceptions,
    render_revenue_csv,
    resolve_exception,
    revenue_report,
)
from payportal.accounting.reconciliation import RESOLUTIONS, ExceptionNotFound
from payportal.engine import PaymentStatus
from payportal.http import ids
from payportal.http.errors import ApiError
from payportal.http.ratelimit import client_address
from payportal.http.typedefs import RATE_LIMITS, STORE
from payportal.metrics import headline_figures
from payportal.persistence import queries
from payportal.persistence._engine import READ
from payportal.persistence.directory import utc
from payportal.persistence.keys import verify_api_key
from payportal.persistence.sealing import keyring_of, query_terms
from payportal.persistence.tables import accounts, api_keys, attempts, payments
from payportal.persistence.tables_janitor import attempt_inquiries
from payportal.persistence.tables_payers import account_profiles, account_search_terms
from payportal.persistence.tables_portal import portal_sessions

from . import render
from .security import delete_cookie, read_form, set_cookie

__all__ = [
    "CONSOLE_COOKIE",
    "ConsoleSession",
    "end_session",
    "install",
    "load_session",
    "start_session",
]

log = structlog.get_logger("payportal.web.console")

CONSOLE_COOKIE: Final = "__Host-payportal_console"
TOKEN_PREFIX: Final = "cs_"  # noqa: S105 - a prefix, not a secret
TOKEN_BYTES: Final = 32
# A shift at the back office; the idle limit closes a console left open on a shared desk.
SESSION_TTL: Final = dt.timedelta(hours=8)
SESSION_IDLE: Final = dt.timedelta(minutes=30)
# ``last_seen_at`` is written at most this often, so browsing costs no write per page.
TOUCH_EVERY: Final = dt.timedelta(minutes=1)
# An API key has 256 bits: guessing is hopeless, but a script trying pasted or leaked
# keys is not, and 10 mistakes in 15 minutes is more than any person makes.
SIGNIN_FAILURES: Final = RateLimitItemPerMinute(10, 15)
# Rows per page of a list; "Next" pages on with a keyset cursor.
PAGE_ROWS: Final = 50
RETRY_ROWS_MAX: Final = 200
SEARCH_LENGTH_MAX: Final = 200
WINDOWS: Final = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24),
                  "7d": dt.timedelta(days=7), "30d": dt.timedelta(days=30)}  # fmt: skip
WINDOW_DEFAULT: Final = "24h"

_SESSION: web.RequestKey[ConsoleSession | None] = web.RequestKey("console_session")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- sessions ---------------------------------------------------------------------------------


class ConsoleSession(msgspec.Struct, frozen=True, kw_only=True):
    token_hash: str
    key_id: str
    key_name: str
    created_at: dt.datetime
    last_seen_at: dt.datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def start_session(engine: AsyncEngine, key_id: str, user_agent: str) -> str:
    """A new console session for the API key ``key_id``; the token is returned once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    now = _now()
    async with engine.begin() as connection:
        await connection.execute(sa.insert(portal_sessions).values(
            token_hash=_hash(token), payer_id=key_id, last_seen_at=now,
            expires_at=now + SESSION_TTL, user_agent=user_agent[:200],
        ))  # fmt: skip
    return token


async def load_session(engine: AsyncEngine, token: str) -> ConsoleSession | None:
    """The live session the cookie names: not revoked, expired or idle, and its API key
    still live. None otherwise."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    digest = _hash(token)
    s, k = portal_sessions.c, api_keys.c
    query = (
        sa.select(s.token_hash, s.payer_id, s.created_at, s.last_seen_at, s.expires_at,
                  s.revoked_at, k.name, k.revoked_at.label("key_revoked_at"))
        .join(api_keys, k.id == s.payer_id)
        .where(s.token_hash == digest)
    )  # fmt: skip
    async with engine.execution_options(**READ).connect() as connection:
        row = (await connection.execute(query)).first()
    if row is None or row.revoked_at is not None or row.key_revoked_at is not None:
        return None
    now = _now()
    last_seen_at = utc(row.last_seen_at)
    if utc(row.expires_at) <= now or last_seen_at + SESSION_IDLE <= now:
        return None
    if now - last_seen_at >= TOUCH_EVERY:
        async with engine.begin() as connection:
            await connection.execute(
                sa.update(portal_sessions).where(s.token_hash == digest).values(last_seen_at=now)
            )
        last_seen_at = now
    return ConsoleSession(
        token_hash=digest, key_id=row.payer_id, key_name=row.name,
        created_at=utc(row.created_at), last_seen_at=last_seen_at,
    )  # fmt: skip


async def end_session(engine: AsyncEngine, digest: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            sa.update(portal_sessions)
            .where(portal_sessions.c.token_hash == digest, portal_sessions.c.revoked_at.is_(None))
            .values(revoked_at=_now())
        )


async def current_session(request: web.Request) -> ConsoleSession | None:
    if _SESSION in request:
        return request[_SESSION]
    token = request.cookies.get(CONSOLE_COOKIE)
    found = await load_session(request.app[STORE].engine, token) if token else None
    request[_SESSION] = found
    return found


def _signed_in(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if await current_session(request) is None:
            raise web.HTTPSeeOther("/console/signin")
        return await handler(request)

    return wrapped


def _page(request: web.Request, template: str, context: dict[str, Any], *,
          status: int = 200) -> web.Response:  # fmt: skip
    return render(request, f"console/{template}", {
        "console": request.get(_SESSION), "section": template.removesuffix(".html"),
        "status_names": [str(s) for s in PaymentStatus], **context,
    }, status=status)  # fmt: skip


# -- sign in and out ------------------------------------------------------------------------


async def signin_page(request: web.Request) -> web.StreamResponse:
    if await current_session(request) is not None:
        raise web.HTTPSeeOther("/console")
    return _page(request, "signin.html", {"error": None})


async def signin(request: web.Request) -> web.StreamResponse:
    limits = request.app.get(RATE_LIMITS)
    address = client_address(request, limits.trusted_proxies) if limits is not None else ""
    if limits is not None:
        await limits.refuse_if_full(
            SIGNIN_FAILURES, "console-signin", address,
            message="Too many failed sign-ins; try again after the Retry-After delay.",
        )  # fmt: skip
    form = await read_form(request)
    raw = form.get("api_key")
    key = raw.strip() if isinstance(raw, str) else ""
    engine = request.app[STORE].engine
    key_id = await verify_api_key(engine, key) if 0 < len(key) <= 200 else None
    if key_id is None:
        if limits is not None:
            with contextlib.suppress(ApiError):  # full now: the next attempt is refused
                await limits.hit(SIGNIN_FAILURES, "console-signin", address)
        log.info("console_signin_failed", address=address)
        return _page(request, "signin.html", {
            "error": "That is not a live API key of this merchant. Keys start with sk_.",
        }, status=401)  # fmt: skip
    token = await start_session(engine, key_id, request.headers.get("User-Agent", ""))
    log.info("console_signin", key_id=key_id)
    response = web.HTTPSeeOther("/console")
    set_cookie(response, CONSOLE_COOKIE, token, max_age_s=int(SESSION_TTL.total_seconds()))
    raise response


async def signout(request: web.Request) -> web.StreamResponse:
    session = await current_session(request)
    if session is not None:
        await end_session(request.app[STORE].engine, session.token_hash)
    response = web.HTTPSeeOther("/console/signin")
    delete_cookie(response, CONSOLE_COOKIE)
    raise response


# -- headline figures -----------------------------------------------------------------------


def _percent(value: Any) -> str | None:
    return None if value is None else f"{float(value) * 100:.2f} %"


def _duration(ms: Any) -> str | None:
    if ms is None:
        return None
    value = float(ms)
    return f"{value:.0f} ms" if value < 1_000 else f"{value / 1000:.2f} s"


async def overview(request: web.Request) -> web.StreamResponse:
    window = request.query.get("window", WINDOW_DEFAULT)
    if window not in WINDOWS:
        window = WINDOW_DEFAULT
    until = _now()
    since = until - WINDOWS[window]
    figures = await headline_figures(request.app[STORE].engine, since=since, until=until)
    return _page(request, "overview.html", {
        "windows": list(WINDOWS), "window": window, "figures": figures,
        "processing": _duration(figures.payment_processing_ms_avg),
        "success_rate": _percent(figures.payment_success_rate),
        "accuracy": _percent(figures.revenue_recognition_accuracy),
    })  # fmt: skip


# -- accounts -------------------------------------------------------------------------------


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def _rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.execution_options(**READ).connect() as connection:
        return list(await connection.execute(query))


async def accounts_page(request: web.Request) -> web.StreamResponse:
    q = request.query.get("q", "").strip()[:SEARCH_LENGTH_MAX]
    after = request.query.get("after", "")[:64]
    p, a = account_profiles.c, accounts.c
    query = (
        sa.select(p.account_id, p.name, p.email, p.currency, p.external_ref,
                  a.outstanding_minor, a.credit_minor)
        .select_from(account_profiles.outerjoin(accounts, a.account_id == p.account_id))
        .order_by(p.account_id)
        .limit(PAGE_ROWS + 1)
    )  # fmt: skip
    if q:
        pattern = _like(q)
        # Names and emails are sealed: matched by whole words through their blind index
        # (account_search_terms); ids and references, which are not, by substring.
        matches = [sa.func.lower(column).like(pattern, escape="\\")
                   for column in (p.account_id, p.external_ref)]  # fmt: skip
        terms = query_terms(q)
        if terms:
            keyring = keyring_of(request.app[STORE].engine)
            t = account_search_terms.c
            matches.append(p.account_id.in_(
                sa.select(t.account_id)
                .where(t.term.in_([keyring.blind_index("account.term", w) for w in terms]))
                .group_by(t.account_id)
                .having(sa.func.count() == len(terms))
            ))  # fmt: skip
        query = query.where(sa.or_(*matches))
    if after:
        query = query.where(p.account_id > after)
    rows = await _rows(request.app[STORE].engine, query)
    more = len(rows) > PAGE_ROWS
    rows = rows[:PAGE_ROWS]
    return _page(request, "accounts.html", {
        "q": q, "rows": rows, "next_after": rows[-1].account_id if more else None,
    })  # fmt: skip


# -- payments -------------------------------------------------------------------------------


def _day_ms(raw: str, *, end: bool) -> int | None:
    """A date field as milliseconds: its start, or (``end``) the start of the next day."""
    day = dt.date.fromisoformat(raw)
    if end:
        day += dt.timedelta(days=1)
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp() * 1000)


def _last_decline(attempt_rows: list[Any]) -> str | None:
    for attempt in reversed(attempt_rows):
        if attempt.decline_code:
            return str(attempt.decline_code)
    return None


async def payments_page(request: web.Request) -> web.StreamResponse:
    filters = {name: request.query.get(name, "").strip()[:64]
               for name in ("status", "account", "from", "to", "after")}  # fmt: skip
    errors: dict[str, str] = {}
    status = filters["status"] or None
    if status is not None and status not in {str(s) for s in PaymentStatus}:
        errors["status"] = "Choose a status from the list."
        status = None
    bounds: dict[str, int | None] = {"from": None, "to": None}
    for name in ("from", "to"):
        if filters[name]:
            try:
                bounds[name] = _day_ms(filters[name], end=name == "to")
            except ValueError:
                errors[name] = "Enter a date as YYYY-MM-DD."
    page = await queries.list_payments(
        request.app[STORE].engine, account_ids=[filters["account"]] if filters["account"] else None,
        status=status, created_gte_ms=bounds["from"], created_lt_ms=bounds["to"],
        limit=PAGE_ROWS, starting_after=filters["after"] or None,
    )  # fmt: skip
    rows = [{
        "row": p, "decline_code": _last_decline(p.attempts),
        "processing_ms": None if p.finished_at_ms is None else p.finished_at_ms - p.created_at_ms,
    } for p in page.data]  # fmt: skip
    return _page(request, "payments.html", {
        "filters": filters, "errors": errors, "rows": rows,
        "next_after": page.data[-1].payment_id if page.has_more else None,
    }, status=400 if errors else 200)  # fmt: skip


# -- the retry queue ------------------------------------------------------------------------


async def retries_page(request: web.Request) -> web.StreamResponse:
    engine = request.app[STORE].engine
    p, t = payments.c, attempts.c
    due = await _rows(engine, (
        sa.select(p.payment_id, p.account_id, p.amount_minor, p.currency, p.created_at_ms,
                  p.next_retry_at_ms)
        .where(p.status == str(PaymentStatus.retry_scheduled))
        .order_by(p.next_retry_at_ms, p.payment_id)
        .limit(RETRY_ROWS_MAX)
    ))  # fmt: skip
    ids = [row.payment_id for row in due]
    # Each payment's decline codes, oldest first: the last is what the payer last heard.
    declines: dict[str, list[str]] = {}
    if ids:
        for attempt in await _rows(engine, (
            sa.select(t.payment_id, t.decline_code)
            .where(t.payment_id.in_(ids), t.decline_code.is_not(None))
            .order_by(t.created_at_ms, t.attempt_id)
        )):  # fmt: skip
            declines.setdefault(attempt.payment_id, []).append(attempt.decline_code)
    i = attempt_inquiries.c
    inquiries = await _rows(engine, (
        sa.select(i.attempt_id, i.payment_id, i.account_id, i.inquiries_made,
                  i.next_inquiry_at_ms, i.last_inquiry_at_ms)
        .order_by(i.next_inquiry_at_ms, i.attempt_id)
        .limit(RETRY_ROWS_MAX)
    ))  # fmt: skip
    return _page(request, "retries.html", {
        "rows": [{"row": row, "decline_code": (declines.get(row.payment_id) or [""])[-1],
                  "declines": len(declines.get(row.payment_id, []))} for row in due],
        "inquiries": inquiries, "limit": RETRY_ROWS_MAX,
    })  # fmt: skip


# -- revenue and reconciliation (the accounting module's) -----------------------------------


def _date_or_none(raw: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(raw) if raw else None
    except ValueError:
        return None


async def revenue_page(request: web.Request) -> web.StreamResponse:
    start = _date_or_none(request.query.get("from", "")[:10])
    end = _date_or_none(request.query.get("to", "")[:10])
    report = await revenue_report(request.app[STORE].engine, start=start, end=end)
    if request.query.get("format") == "csv":
        return web.Response(
            text=render_revenue_csv(report), content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="revenue.csv"'},
        )  # fmt: skip
    return _page(request, "revenue.html", {
        "report": report, "accuracy": _percent(report.accuracy),
        "month_accuracy": {(m.currency, m.month): _percent(m.accuracy) for m in report.months},
        "start": start.isoformat() if start else "", "end": end.isoformat() if end else "",
    })  # fmt: skip


RESOLUTION_WORDS: Final = {
    "matched_manually": "Matched by hand",
    "processor_corrected": "Corrected by the processor",
    "refunded": "Refunded",
    "written_off": "Written off",
    "not_an_issue": "Not an issue",
}


async def exceptions_page(request: web.Request, *, errors: dict[str, str] | None = None,
                          status: int = 200) -> web.Response:  # fmt: skip
    rows = await open_exceptions(request.app[STORE].engine)
    return _page(request, "exceptions.html", {
        "rows": rows, "resolutions": {r: RESOLUTION_WORDS.get(r, r) for r in RESOLUTIONS},
        "done": request.query.get("resolved", "")[:64], "errors": errors or {},
    }, status=status)  # fmt: skip


async def resolve(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    resolution, note = form.get("resolution"), form.get("note")
    exception_id = request.match_info["id"][:64]
    if not isinstance(resolution, str) or resolution not in RESOLUTIONS:
        return await exceptions_page(
            request, errors={exception_id: "Choose how it was resolved."}, status=400
        )
    note = note.strip()[:1000] if isinstance(note, str) else ""
    session = await current_session(request)
    assert session is not None
    try:
        await resolve_exception(
            request.app[STORE].engine, exception_id, resolution=resolution,
            note=f"{note} (console, key {session.key_name})".strip(),
        )  # fmt: skip
    except ExceptionNotFound:
        raise web.HTTPNotFound() from None
    log.info("reconciliation_exception_resolved", exception_id=exception_id,
             resolution=resolution, key_id=session.key_id)  # fmt: skip
    raise web.HTTPSeeOther(f"/console/exceptions?resolved={exception_id}")


# -- installation ---------------------------------------------------------------------------


def install(app: web.Application) -> None:
    """Add the console's routes to an app that has ``payportal.web`` installed."""
    add = app.router.add_route
    add("GET", "/console/signin", signin_page)
    add("POST", "/console/signin", signin)
    add("POST", "/console/signout", signout)
    add("GET", "/console", _signed_in(overview))
    add("GET", "/console/accounts", _signed_in(accounts_page))
    add("GET", "/console/payments", _signed_in(payments_page))
    add("GET", "/console/retries", _signed_in(retries_page))
    add("GET", "/console/revenue", _signed_in(revenue_page))
    add("GET", "/console/exceptions", _signed_in(exceptions_page))
    add("POST", ids.routed("/console/exceptions/{id}/resolve"), _signed_in(resolve))
