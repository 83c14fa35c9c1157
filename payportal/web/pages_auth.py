"""Signing in and out, password reset and invitations, and the security page.

Rules:

- Sign-in checks the Argon2id hash (``http.auth.verify_password``, which spends the
  same time on an unknown email) behind the API's login lockout — the same counters
  (``http.ratelimit``): 10 failures for an email within 15 minutes lock it for 30, the
  browser and the API counting together, and while locked even the right password is
  refused. A success starts a new session (the id rotates) and ends the one the
  browser had.
- "Forgot password" answers the same whether or not the email has a login, and sends
  at most ``RESET_MAILS_PER_HOUR`` links an hour to one address. A link works once,
  for an hour; using it ends every session of the payer.
- An invitation (a payer added without a password) is a one-time link valid for a
  week that sets the first password and signs the payer in.
- Changing the password needs the current one and ends every other session; "sign out
  everywhere" ends all of them, browser and API alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final
from urllib.parse import quote, unquote, urljoin, urlsplit

import structlog
from aiohttp import web
from limits import RateLimitItemPerHour
from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.http.auth import hash_password, verify_password
from payportal.http.errors import ApiError
from payportal.http.ratelimit import (
    LOGIN_FAILURES_PER_ADDRESS,
    LOGIN_FAILURES_PER_EMAIL,
    LOGIN_LOCKOUT,
    TOO_MANY_LOGINS,
    RateLimits,
    client_address,
    email_key,
    mask_email,
)
from payportal.http.typedefs import RATE_LIMITS, STORE, TASKS
from payportal.persistence import directory

from . import sessions
from .security import SESSION_COOKIE, clear_session_cookie, read_form, rotate_session_cookie

__all__ = ["add_routes", "current_session", "require_payer"]

log = structlog.get_logger("payportal.web")

# NIST SP 800-63B asks for at least 8; a passphrase of 10 is easy to remember.
PASSWORD_LENGTH_MIN: Final = 10
# Argon2 hashes anything, but a megabyte "password" is a denial-of-service attempt.
PASSWORD_LENGTH_MAX: Final = 256
# Enough for someone who lost the first mail or two; not enough to flood an inbox.
RESET_MAILS_PER_HOUR: Final = RateLimitItemPerHour(5)
SESSION_COOKIE_MAX_AGE_S: Final = int(sessions.SESSION_TTL.total_seconds())

# Longer is no page of ours, and a very long Location is refused by some proxies.
NEXT_LENGTH_MAX: Final = 500
# Any origin will do: a "next" is kept only if resolving it against one keeps that one.
_ORIGIN: Final = "https://portal.invalid/"

_SESSION: web.RequestKey[sessions.BrowserSession | None] = web.RequestKey("portal_session")


async def current_session(request: web.Request) -> sessions.BrowserSession | None:
    """The signed-in payer's session (read once per request), or None."""
    if _SESSION in request:
        return request[_SESSION]
    token = request.cookies.get(SESSION_COOKIE)
    found = None
    if token:
        found = await sessions.load_session(request.app[STORE].engine, token)
    request[_SESSION] = found
    return found


def _safe_next(raw: object) -> str:
    """``raw`` if it is a path on this site however a browser reads it, else ``/``.

    Browsers parse a ``Location`` by the WHATWG URL rules: they drop tabs and newlines
    anywhere and leading control characters and spaces, and read a backslash as ``/``,
    so ``/<tab>/evil.example`` and ``/<backslash>evil.example`` mean ``//evil.example``,
    another site. Rather than follow those rules, nothing they would touch gets
    through: only printable ASCII without spaces or backslashes, a single leading
    ``/``, the same again once percent-decoded (so nothing changes if a hop decodes
    it), and resolving it against an origin must keep that origin. A control character
    would also make the header unsendable: aiohttp refuses it and drops the connection."""
    value = raw if isinstance(raw, str) else ""
    if _local_path(value) and _local_path(unquote(value)):
        return value
    return "/"


def _local_path(value: str) -> bool:
    if not 1 <= len(value) <= NEXT_LENGTH_MAX:
        return False
    if not all("!" <= character <= "~" for character in value) or "\\" in value:
        return False
    if not value.startswith("/") or value.startswith("//"):
        return False
    resolved = urlsplit(urljoin(_ORIGIN, value))
    return (resolved.scheme, resolved.netloc) == urlsplit(_ORIGIN)[:2]


async def require_payer(request: web.Request) -> sessions.BrowserSession:
    session = await current_session(request)
    if session is None:
        target = request.path_qs if request.method == "GET" else "/"
        raise web.HTTPSeeOther(f"/signin?next={_quote(target)}")
    return session


def _quote(value: str) -> str:
    return quote(value, safe="/")


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _limits(request: web.Request) -> RateLimits | None:
    return request.app.get(RATE_LIMITS)


def _password_problem(password: str, confirm: str | None = None) -> str | None:
    if len(password) < PASSWORD_LENGTH_MIN:
        return f"Use at least {PASSWORD_LENGTH_MIN} characters."
    if len(password) > PASSWORD_LENGTH_MAX:
        return f"Use at most {PASSWORD_LENGTH_MAX} characters."
    if confirm is not None and confirm != password:
        return "The two passwords are not the same."
    return None


def _field(form: object, name: str) -> str:
    value = form.get(name) if hasattr(form, "get") else None  # type: ignore[union-attr]
    return value if isinstance(value, str) else ""


def _minutes(error: ApiError) -> int:
    seconds = int(error.headers.get("Retry-After", "60"))
    return max(1, -(-seconds // 60))


# -- sign in and out -------------------------------------------------------------------------


async def signin_form(request: web.Request) -> web.Response:
    from . import render

    if await current_session(request) is not None:
        return _see_other(_safe_next(request.query.get("next")))
    notice = {"reset": "Your password is changed. Sign in with the new one.",
              "out": "You are signed out."}.get(request.query.get("done", ""))  # fmt: skip
    return render(request, "signin.html", {
        "next": _safe_next(request.query.get("next")), "email": "", "error": None,
        "notice": notice,
    })  # fmt: skip


async def _guarded_check(request: web.Request, email: str, password: str) -> str | None:
    """The payer id if the password is right; raises the lockout's ApiError (429)."""
    engine = request.app[STORE].engine
    limits = _limits(request)
    email_id = email_key(request, email)
    address = "" if limits is None else client_address(request, limits.trusted_proxies)
    if limits is not None:
        # Decided before the password is looked at, known email or not (as the API does).
        await limits.refuse_if_full(LOGIN_LOCKOUT, "login-lock", email_id, message=TOO_MANY_LOGINS)
        await limits.refuse_if_full(
            LOGIN_FAILURES_PER_ADDRESS, "login-address", address, message=TOO_MANY_LOGINS
        )
        try:
            await limits.hit(LOGIN_FAILURES_PER_EMAIL, "login-email", email_id)
        except ApiError:
            raise await _lock(limits, email, email_id) from None
    login = await directory.payer_by_email(engine, email)
    verified = await verify_password(login.password_hash if login else None, password)
    if login is not None and verified:
        if limits is not None:
            await limits.clear(LOGIN_FAILURES_PER_EMAIL, "login-email", email_id)
        return login.payer_id
    if limits is not None:
        with contextlib.suppress(ApiError):
            await limits.hit(LOGIN_FAILURES_PER_ADDRESS, "login-address", address)
        if await limits.remaining(LOGIN_FAILURES_PER_EMAIL, "login-email", email_id) <= 0:
            raise await _lock(limits, email, email_id)
    return None


async def _lock(limits: RateLimits, email: str, email_id: str) -> ApiError:
    try:
        await limits.hit(LOGIN_LOCKOUT, "login-lock", email_id)
    except ApiError as already:
        return already
    log.warning("login_locked", email=mask_email(email), via="browser")
    try:
        await limits.refuse_if_full(LOGIN_LOCKOUT, "login-lock", email_id, message=TOO_MANY_LOGINS)
    except ApiError as locked:
        return locked
    return ApiError(429, "rate_limit_error", "rate_limited", TOO_MANY_LOGINS,
                    headers={"Retry-After": str(LOGIN_LOCKOUT.get_expiry())})  # fmt: skip


async def _sign_in(request: web.Request, payer_id: str, location: str) -> web.Response:
    engine = request.app[STORE].engine
    old = await current_session(request)
    if old is not None:
        await sessions.end_session(engine, old.token_hash)
    token = await sessions.start_session(
        engine, payer_id, request.headers.get("User-Agent", "")
    )
    response = _see_other(location)
    rotate_session_cookie(request, response, token, max_age_s=SESSION_COOKIE_MAX_AGE_S)
    return response


async def signin(request: web.Request) -> web.Response:
    from . import render

    form = await read_form(request)
    email = _field(form, "email").strip().lower()
    password = _field(form, "password")
    target = _safe_next(_field(form, "next"))
    context = {"next": target, "email": email, "error": None, "notice": None}
    if not email or not password:
        context["error"] = "Enter your email and your password."
        return render(request, "signin.html", context, status=400)
    try:
        payer_id = await _guarded_check(request, email, password)
    except ApiError as error:
        if error.status != 429:
            raise
        context["error"] = (
            "Too many attempts with this email. For your security, signing in is paused: "
            f"try again in {_minutes(error)} minutes, or reset your password."
        )
        response = render(request, "signin.html", context, status=429)
        response.headers["Retry-After"] = error.headers.get("Retry-After", "60")
        return response
    if payer_id is None:
        context["error"] = "The email or password is not right."
        return render(request, "signin.html", context, status=401)
    return await _sign_in(request, payer_id, target)


async def signout(request: web.Request) -> web.Response:
    session = await current_session(request)
    if session is not None:
        await sessions.end_session(request.app[STORE].engine, session.token_hash)
    response = _see_other("/signin?done=out")
    clear_session_cookie(request, response)
    return response


# -- password reset --------------------------------------------------------------------------


async def reset_form(request: web.Request) -> web.Response:
    from . import render

    return render(request, "reset_request.html", {"sent": False, "email": "", "error": None})


async def reset_request(request: web.Request) -> web.Response:
    from . import render

    form = await read_form(request)
    email = _field(form, "email").strip().lower()
    if "@" not in email or len(email) > 320:
        return render(request, "reset_request.html", {
            "sent": False, "email": email, "error": "Enter the email you sign in with.",
        }, status=400)  # fmt: skip
    limits = _limits(request)
    allowed = True
    if limits is not None:
        try:
            await limits.hit(RESET_MAILS_PER_HOUR, "reset-email", email_key(request, email))
        except ApiError:
            allowed = False  # same answer: the limit must not reveal the email either
    engine = request.app[STORE].engine
    login = await directory.payer_by_email(engine, email) if allowed else None
    if login is not None:
        # Written after the answer, so how long the answer takes does not tell whether
        # the email has a login; it finishes even if the browser goes away.
        task = asyncio.get_running_loop().create_task(_send_reset(engine, login))
        tasks = request.app[TASKS]
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return render(request, "reset_request.html", {"sent": True, "email": "", "error": None})


async def _send_reset(engine: AsyncEngine, login: directory.PayerLogin) -> None:
    from payportal.mail import enqueue_email, public_url

    async with engine.begin() as connection:
        token = await sessions.issue_link(connection, "reset", login.payer_id)
        await enqueue_email(
            connection, dedupe_key=f"password_reset:{sessions.token_hash(token)}",
            to=login.email, template="password_reset",
            context={"reset_url": f"{public_url()}/reset/{token}",
                     "expires_minutes": int(sessions.RESET_TTL.total_seconds() // 60)},
        )  # fmt: skip
    log.info("password_reset_sent", email=mask_email(login.email))


async def _link_form(request: web.Request, purpose: sessions.LinkPurpose) -> web.Response:
    from . import render

    token = request.match_info["token"]
    usable = await sessions.link_is_usable(request.app[STORE].engine, purpose, token)
    response = render(request, "set_password.html", {
        "purpose": purpose, "usable": usable, "error": None,
    }, status=200 if usable else 410)  # fmt: skip
    # The URL holds the token: no Referer may carry it anywhere, even to our own files.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def _link_use(request: web.Request, purpose: sessions.LinkPurpose) -> web.Response:
    from . import render

    token = request.match_info["token"]
    form = await read_form(request)
    password = _field(form, "password")
    problem = _password_problem(password, _field(form, "confirm"))
    engine = request.app[STORE].engine
    if problem is not None:
        usable = await sessions.link_is_usable(engine, purpose, token)
        return render(request, "set_password.html", {
            "purpose": purpose, "usable": usable, "error": problem,
        }, status=400)  # fmt: skip
    payer_id = await sessions.use_link(engine, purpose, token, await hash_password(password))
    if payer_id is None:
        return render(request, "set_password.html", {
            "purpose": purpose, "usable": False, "error": None,
        }, status=410)  # fmt: skip
    if purpose == "reset":
        response = _see_other("/signin?done=reset")
        clear_session_cookie(request, response)
        return response
    return await _sign_in(request, payer_id, "/")


async def reset_link_form(request: web.Request) -> web.Response:
    return await _link_form(request, "reset")


async def reset_link_use(request: web.Request) -> web.Response:
    return await _link_use(request, "reset")


async def invite_form(request: web.Request) -> web.Response:
    return await _link_form(request, "invite")


async def invite_use(request: web.Request) -> web.Response:
    return await _link_use(request, "invite")


# -- the security page -----------------------------------------------------------------------


async def _security_page(request: web.Request, session: sessions.BrowserSession, *,
                         error: str | None = None, notice: str | None = None,
                         status: int = 200) -> web.Response:  # fmt: skip
    from . import render

    active = await sessions.list_sessions(request.app[STORE].engine, session.payer_id)
    return render(request, "security.html", {
        "sessions": active, "current": session.token_hash, "error": error, "notice": notice,
    }, status=status)  # fmt: skip


async def security_page(request: web.Request) -> web.Response:
    session = await require_payer(request)
    notice = "Your password is changed." if request.query.get("done") == "password" else None
    return await _security_page(request, session, notice=notice)


async def change_password(request: web.Request) -> web.Response:
    session = await require_payer(request)
    form = await read_form(request)
    new = _field(form, "new_password")
    problem = _password_problem(new, _field(form, "confirm"))
    if problem is not None:
        return await _security_page(request, session, error=problem, status=400)
    try:
        payer_id = await _guarded_check(request, session.email, _field(form, "current_password"))
    except ApiError as error:
        if error.status != 429:
            raise
        return await _security_page(
            request, session, status=429,
            error=f"Too many wrong passwords: try again in {_minutes(error)} minutes.",
        )  # fmt: skip
    if payer_id != session.payer_id:
        return await _security_page(
            request, session, error="Your current password is not right.", status=400
        )
    await sessions.set_password(
        request.app[STORE].engine, session.payer_id, await hash_password(new),
        keep=session.token_hash,
    )  # fmt: skip
    return _see_other("/security?done=password")


async def signout_everywhere(request: web.Request) -> web.Response:
    session = await require_payer(request)
    await sessions.end_all_sessions(request.app[STORE].engine, session.payer_id)
    response = _see_other("/signin?done=out")
    clear_session_cookie(request, response)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/signin", signin_form)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
    app.router.add_get("/reset", reset_form)
    app.router.add_post("/reset", reset_request)
    app.router.add_get("/reset/{token}", reset_link_form)
    app.router.add_post("/reset/{token}", reset_link_use)
    app.router.add_get("/invite/{token}", invite_form)
    app.router.add_post("/invite/{token}", invite_use)
    app.router.add_get("/security", security_page)
    app.router.add_post("/security/password", change_password)
    app.router.add_post("/security/signout-everywhere", signout_everywhere)
