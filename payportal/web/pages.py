"""The payer portal's pages: dashboard, pay, payment status and receipt, history, saved
payment methods (and autopay), statements; and the HTML error page.

Rules:

- Every page needs a signed-in payer (``pages_auth.require_payer``) and shows one of the
  payer's accounts at a time (``?account=``, default the first; a switcher lists them).
  An account, payment or payment method that is not the payer's is answered 404, the
  same as one that does not exist (the API's rule).
- Paying goes through the API's own code path (``handlers_payments``: idempotency
  record, engine, processor gateway), under the API's money limits. The form carries an
  idempotency key drawn when the page was rendered, so a double click or a resubmitted
  form replays the first answer and never charges twice.
- Card data never reaches this server: new cards are typed into the processor's hosted
  fields (an iframe) and only the resulting token, brand, last 4 and expiry are posted.
- Money is shown from integer minor units (``engine.money.format_minor``); typed amounts
  are parsed into minor units without floats.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
import sqlalchemy as sa
import structlog
from aiohttp import web

from payportal.engine.money import CURRENCY_EXPONENTS, format_minor
from payportal.http import ids
from payportal.http.auth import Principal
from payportal.http.errors import ApiError
from payportal.http.idempotency import request_hash
from payportal.http.methods import remove_payment_method
from payportal.http.ratelimit import (
    ACCOUNT_PAYMENTS,
    ADDRESS_MONEY_POSTS,
    PAYER_MONEY_POSTS,
    client_address,
)
from payportal.http.reads import read_account, read_payment, wait_for_account_projection
from payportal.http.schemas import AMOUNT_MINOR_MAX, AllocationRequest, PaymentCreate
from payportal.http.typedefs import METHODS, RATE_LIMITS, ROUTER, STORE
from payportal.persistence import directory, queries

from . import sessions
from .pages_auth import require_payer
from .security import is_json_route, is_page, read_form

__all__ = ["add_routes", "format_date", "format_datetime", "format_money", "page_error"]

log = structlog.get_logger("payportal.web")

# Dashboard and pay page: more open invoices than this is a merchant's problem to chase,
# not a list a payer scrolls; the rest are still paid oldest first.
INVOICES_SHOWN_MAX: Final = 100
RECENT_PAYMENTS: Final = 5
HISTORY_PAGE: Final = 25
# "1,234.56": digits with optional thousands commas, and at most the currency's decimals.
# Matched whole (fullmatch), with ASCII digits only: ``\d`` also takes other scripts'
# digits, which int() reads.
_AMOUNT: Final = re.compile(r"[0-9]{1,3}(,[0-9]{3})*(\.[0-9]+)?|[0-9]+(\.[0-9]+)?")
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

STATUS_WORDS: Final = {
    "processing": "Processing",
    "retry_scheduled": "Retry scheduled",
    "requires_action": "Needs your confirmation",
    "requires_payment_method": "Declined",
    "succeeded": "Paid",
    "failed": "Failed",
    "canceled": "Canceled",
    "partially_refunded": "Partly refunded",
    "refunded": "Refunded",
    "disputed": "Disputed",
}
# Why a card was declined, in the payer's words (Stripe's decline codes).
DECLINE_REASONS: Final = {
    "do_not_honor": "Your bank declined the payment without giving a reason.",
    "generic_decline": "Your bank declined the payment.",
    "insufficient_funds": "The card does not have enough funds available right now.",
    "expired_card": "The card has expired.",
    "incorrect_cvc": "The security code was not right.",
    "invalid_cvc": "The security code was not right.",
    "lost_card": "The card cannot be used.",
    "stolen_card": "The card cannot be used.",
    "pickup_card": "The card cannot be used.",
    "card_velocity_exceeded": "The card's spending limit has been reached.",
    "processing_error": "The card network had a technical problem.",
    "processor_unavailable": "We could not reach the card processor.",
    "try_again_later": "Your bank asked us to try again later.",
    "payment_intent_authentication_failure": (
        "Your bank's confirmation step was not completed, so the bank declined the payment."
    ),
    "authentication_required": "Your bank asks you to confirm this payment yourself.",
}
WALLET_NAMES: Final = {"apple_pay": "Apple Pay", "google_pay": "Google Pay"}


# -- formatting ------------------------------------------------------------------------------


def format_money(amount_minor: int, currency: str) -> str:
    return format_minor(amount_minor, currency)


def format_date(value: dt.date | None) -> str:
    return "" if value is None else f"{value:%d %b %Y}"


def format_datetime(value: dt.datetime | int | None) -> str:
    """A moment in UTC; an int is milliseconds since the epoch."""
    if value is None:
        return ""
    if isinstance(value, int):
        value = dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
    return f"{value.astimezone(dt.UTC):%d %b %Y %H:%M} UTC"


def parse_amount(raw: str, currency: str) -> int | None:
    """Minor units from what a person types ("1,234.5" → 123450), or None."""
    text = raw.strip().replace(" ", "")
    if not _AMOUNT.fullmatch(text):
        return None
    whole, _, fraction = text.replace(",", "").partition(".")
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    if len(fraction) > exponent:
        return None
    minor = int(whole) * 10**exponent + int((fraction or "0").ljust(exponent, "0") or "0")
    # Past the API's largest amount it is no amount: beyond 2^64 it could not even be
    # sent to a shard (a 500), and short of that the engine would refuse it anyway.
    return minor if minor <= AMOUNT_MINOR_MAX else None


def amount_input(amount_minor: int, currency: str) -> str:
    """The value an amount field is prefilled with: "1234.50", no currency."""
    return format_minor(amount_minor, currency).rsplit(" ", 1)[0]


def method_label(row: Any) -> str:
    if row is None:
        return "a payment method"
    brand = {"visa": "Visa", "mastercard": "Mastercard", "amex": "American Express",
             "discover": "Discover"}.get(row.brand, row.brand.title())  # fmt: skip
    text = f"{brand} ending in {row.last4}" if row.last4 else brand
    if row.wallet:
        text = f"{WALLET_NAMES.get(row.wallet, row.wallet)} ({text})"
    return text


# -- errors ----------------------------------------------------------------------------------

_ERROR_TITLES: Final = {
    400: "That did not work",
    401: "Please sign in",
    403: "This form has expired",
    404: "Page not found",
    405: "That did not work",
    410: "This link has expired",
    413: "That was too much",
    429: "Too many requests",
}


def page_error(request: web.Request, response: web.Response) -> web.Response:
    """The API middleware's JSON error, as a page when a browser page asked."""
    if not is_page(request) or is_json_route(request) or response.prepared:
        return response
    if response.content_type != "application/json":
        return response
    status = response.status
    message = None
    try:
        body = msgspec.json.decode(response.body or b"{}")  # type: ignore[arg-type]
        message = body.get("error", {}).get("message")
    except (msgspec.DecodeError, AttributeError):
        pass
    if status == 403:
        message = "For your security, this page's form is no longer valid. Go back, reload the "
        message += "page and try again."
    elif status == 404:
        message = "There is nothing here, or it is not yours to see."
    elif status >= 500:
        message = "Something went wrong on our side. Nothing was charged twice; try again."
    from . import render

    page = render(request, "error.html", {
        "status": status, "title": _ERROR_TITLES.get(status, "Something went wrong"),
        "message": message or "That did not work.",
    }, status=status)  # fmt: skip
    for name in ("Retry-After", "Allow"):
        if name in response.headers:
            page.headers[name] = response.headers[name]
    return page


# -- accounts --------------------------------------------------------------------------------


class AccountChoice(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    name: str
    currency: str


async def _accounts(request: web.Request, payer_id: str) -> list[AccountChoice]:
    engine = request.app[STORE].engine
    choices = []
    for account_id in await sessions.payer_accounts_of(engine, payer_id):
        profile = await directory.account_profile(engine, account_id)
        if profile is not None:
            choices.append(AccountChoice(account_id=account_id, name=profile.name,
                                         currency=profile.currency))  # fmt: skip
    return choices


async def _chosen(
    request: web.Request, session: sessions.BrowserSession, raw: str | None = None
) -> tuple[AccountChoice, list[AccountChoice]]:
    """The account the page is about and all of the payer's; 404 when ``raw`` names an
    account that is not theirs."""
    choices = await _accounts(request, session.payer_id)
    wanted = raw if raw is not None else request.query.get("account")
    if wanted:
        for choice in choices:
            if choice.account_id == wanted:
                return choice, choices
        raise web.HTTPNotFound()
    if not choices:
        raise web.HTTPNotFound()
    return choices[0], choices


async def _balance(request: web.Request, account_id: str) -> Any:
    reply = await read_account(request.app[ROUTER], account_id)
    if reply.balance is None:
        raise web.HTTPNotFound()
    return reply.balance


async def _open_invoices(request: web.Request, account_id: str) -> list[queries.InvoiceRow]:
    await wait_for_account_projection(request, account_id)
    page = await queries.list_invoices(
        request.app[STORE].engine, account_id, status="open", limit=INVOICES_SHOWN_MAX
    )
    rows = [r for r in page.data if r.amount_due_minor > r.amount_paid_minor]
    return sorted(rows, key=lambda r: (r.due_date, r.invoice_id))


async def _invoice_numbers(request: web.Request, account_id: str) -> dict[str, str]:
    engine = request.app[STORE].engine
    numbers: dict[str, str] = {}
    after = None
    while True:
        page = await queries.list_invoices(engine, account_id, limit=100, starting_after=after)
        numbers.update({r.invoice_id: r.number for r in page.data})
        if not page.has_more or not page.data:
            return numbers
        after = page.data[-1].invoice_id


def _render(request: web.Request, template: str, context: dict[str, Any], *,
            status: int = 200) -> web.Response:  # fmt: skip
    from . import render

    return render(request, template, {"status_words": STATUS_WORDS, **context}, status=status)


# -- dashboard -------------------------------------------------------------------------------


async def dashboard(request: web.Request) -> web.Response:
    from payportal.live import journal_last_id

    session = await require_payer(request)
    account, choices = await _chosen(request, session)
    # Before the reads: every status change after this id reaches the page live.
    seen = await journal_last_id(request.app[STORE].engine, account.account_id)
    balance = await _balance(request, account.account_id)
    invoices = await _open_invoices(request, account.account_id)
    recent = await queries.list_payments(
        request.app[STORE].engine, account_ids=[account.account_id], limit=RECENT_PAYMENTS
    )
    # Off-session attempts their bank declined until the payer confirms (the email links
    # to the same pages), and challenges left open: both wait for the payer, not for us.
    waiting = await queries.list_payments(
        request.app[STORE].engine, account_ids=[account.account_id], status="requires_action",
        limit=RECENT_PAYMENTS,
    )  # fmt: skip
    return _render(request, "dashboard.html", {
        "account": account, "accounts": choices, "balance": balance, "invoices": invoices,
        "today": dt.date.today(), "payments": recent.data, "seen": seen,
        "waiting": waiting.data,
    })  # fmt: skip


# -- pay -------------------------------------------------------------------------------------


class PayForm(msgspec.Struct, kw_only=True):
    amount: str = ""
    invoices: list[str] = []
    method: str = ""
    errors: dict[str, str] = {}


def card_entry(request: web.Request, currency: str) -> dict[str, Any]:
    """What the card-entry macro needs: Stripe's publishable key when the portal runs on
    Stripe (its Payment Element), else the sandbox's hosted fields' URL."""
    from .security import WEB_CONFIG, page_origin

    config = request.config_dict[WEB_CONFIG]
    origin = page_origin(request)
    return {
        "stripe_key": config.stripe_publishable_key if config.uses_stripe_js else None,
        "fields_url": f"{config.processor_origin}/v1/hosted/card-fields?origin={origin}",
        "currency": currency, "decimals": CURRENCY_EXPONENTS.get(currency, 2),
    }


async def _pay_page(
    request: web.Request, session: sessions.BrowserSession, account: AccountChoice,
    choices: list[AccountChoice], form: PayForm | None = None, *, status: int = 200,
) -> web.Response:  # fmt: skip
    engine = request.app[STORE].engine
    balance = await _balance(request, account.account_id)
    invoices = await _open_invoices(request, account.account_id)
    methods = (await queries.list_payment_methods(engine, account.account_id, limit=50)).data
    default = await sessions.default_method(engine, account.account_id)
    if form is None:
        form = PayForm(amount=amount_input(balance.outstanding_minor, account.currency))
    if not form.method:
        ids_ = [m.id for m in methods]
        form.method = default if default in ids_ else (ids_[0] if ids_ else "card")
    from .security import WEB_CONFIG

    processor = request.config_dict[WEB_CONFIG].processor_origin
    return _render(request, "pay.html", {
        "account": account, "accounts": choices, "balance": balance, "invoices": invoices,
        "today": dt.date.today(), "methods": methods, "default_method": default,
        "form": form, "idempotency_key": secrets.token_urlsafe(18),
        "card": card_entry(request, account.currency),
        "processor_origin": processor, "method_label": method_label,
        "amount_input": amount_input,
    }, status=status)  # fmt: skip


async def pay_page(request: web.Request) -> web.Response:
    session = await require_payer(request)
    account, choices = await _chosen(request, session)
    return await _pay_page(request, session, account, choices)


def _form_str(form: Any, name: str, length_max: int = 255) -> str:
    value = form.get(name)
    return value.strip()[:length_max] if isinstance(value, str) else ""


def _explicit_allocations(
    invoices: list[queries.InvoiceRow], chosen: list[str], amount_minor: int
) -> list[AllocationRequest]:
    """The chosen invoices paid oldest first, as far as the amount goes."""
    left_minor = amount_minor
    out = []
    for invoice in invoices:  # already oldest first
        if invoice.invoice_id not in chosen or left_minor == 0:
            continue
        take = min(invoice.amount_due_minor - invoice.amount_paid_minor, left_minor)
        if take > 0:
            out.append(AllocationRequest(invoice=invoice.invoice_id, amount=take))
            left_minor -= take
    return out


async def _money_limits(request: web.Request, payer_id: str, account_id: str) -> None:
    """The API's limits on payments (card testing), counted under the same keys."""
    limits = request.app.get(RATE_LIMITS)
    if limits is None:
        return
    address = client_address(request, limits.trusted_proxies)
    await limits.hit(limits.scaled(ACCOUNT_PAYMENTS), "account-payments", account_id)
    await limits.hit(limits.scaled(PAYER_MONEY_POSTS), "payer-money", payer_id)
    await limits.hit(limits.scaled(ADDRESS_MONEY_POSTS), "address-money", address)


def _digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


# What the processor's hosted fields put in the form: a token, a brand name, digits.
# The sandbox's card tokens, or the PaymentMethod id Stripe's Payment Element creates.
_TOKEN: Final = re.compile(r"(tok|pm)_[A-Za-z0-9_]{1,200}")
_BRAND: Final = re.compile(r"[a-z0-9 _-]{1,32}")
_CARD_FACT: Final = re.compile(r"[0-9]{0,4}")
# Only a page without JavaScript (or a forged form) posts a new card without its token.
NEW_CARD_MISSING: Final = (
    "Type your card into the secure card form and choose Pay again. The form needs "
    "JavaScript; without it, pay with a saved payment method."
)
_SAVED_METHOD: Final = re.compile(r"pm_[A-Za-z0-9_]{1,60}")


async def _new_method(
    request: web.Request, account_id: str, form: Any, *, keep: bool
) -> tuple[str | None, str | None]:
    """Record a token from the hosted fields or a wallet; (payment method id, error)."""
    token = _form_str(form, "token")
    if _TOKEN.fullmatch(token) is None:
        return None, NEW_CARD_MISSING
    wallet = _form_str(form, "wallet") or None
    if wallet is not None and wallet not in WALLET_NAMES:
        return None, "That wallet is not supported."
    last4 = _form_str(form, "last4")
    # Read longer than a brand may be, so that a longer one is refused, not cut short.
    brand = _form_str(form, "brand", 64).lower() or "unknown"
    exp_month, exp_year = _form_str(form, "exp_month"), _form_str(form, "exp_year")
    # The hosted fields fill these in from the processor's answer; anything else was
    # not typed by the payer but changed on the way, and would be stored and shown.
    if (_BRAND.fullmatch(brand) is None or _CARD_FACT.fullmatch(last4) is None
            or _CARD_FACT.fullmatch(exp_month) is None
            or _CARD_FACT.fullmatch(exp_year) is None):  # fmt: skip
        return None, NEW_CARD_MISSING
    method_id = ids.derived_id("pm", account_id, token)
    # A double submit inserts the same row twice at once; the loser finds it there.
    with contextlib.suppress(sa.exc.IntegrityError):
        await directory.insert_payment_method(
            request.app[STORE].engine,
            {"id": method_id, "account_id": account_id, "token": token,
             "type": "wallet" if wallet else "card", "brand": brand,
             "last4": last4 if len(last4) == 4 and _digits(last4) else None,
             "exp_month": int(exp_month) if _digits(exp_month) and len(exp_month) <= 2
             else None,
             "exp_year": int(exp_year) if _digits(exp_year) and len(exp_year) == 4 else None,
             "wallet": wallet,
             # Not kept for reuse unless asked: in the history, not in the list.
             "deleted_at": None if keep else dt.datetime.now(dt.UTC)},
        )  # fmt: skip
    return method_id, None


async def pay(request: web.Request) -> web.Response:
    from payportal.http.handlers_payments import create_and_charge

    session = await require_payer(request)
    form = await read_form(request)
    account, choices = await _chosen(request, session, _form_str(form, "account", 64))
    chosen = [v for v in form.getall("invoice", []) if isinstance(v, str)][:INVOICES_SHOWN_MAX]
    method = _form_str(form, "method", 64)
    state = PayForm(amount=_form_str(form, "amount", 32), invoices=chosen, method=method)
    amount_minor = parse_amount(state.amount, account.currency)
    if amount_minor is None or amount_minor <= 0:
        state.errors["amount"] = "Enter an amount, like 125.00."
    key = _form_str(form, "idempotency_key")
    if not 16 <= len(key) <= 64 or not (key.isascii() and key.isprintable()):
        state.errors["form"] = "This form is out of date. Reload the page and try again."
    if not all(_is_invoice_of(value, account.account_id) for value in chosen):
        # Not one of this account's invoices at all (whether still open is not asked: a
        # form sent twice names invoices the first submission paid). It was ignored,
        # and the amount paid as if nothing had been chosen.
        state.errors["form"] = "This form is out of date. Reload the page and try again."
    engine = request.app[STORE].engine
    method_id = token = None
    if method in ("card", "wallet") and state.errors:
        pass  # a refused form stores nothing, not even the new card: it comes again
    elif method in ("card", "wallet"):
        keep = method == "card" and form.get("save") == "yes"
        method_id, problem = await _new_method(request, account.account_id, form, keep=keep)
        if problem is not None:
            state.errors["method"] = problem
        elif not keep:
            token = _form_str(form, "token")
            method_id = None
    else:
        # A saved method's id, or nothing to look up (a NUL would not even reach a
        # PostgreSQL query without failing it).
        row = (await directory.payment_method(engine, method)
               if _SAVED_METHOD.fullmatch(method) else None)  # fmt: skip
        if row is None or row.account_id != account.account_id or row.deleted_at is not None:
            state.errors["method"] = "Choose how to pay."
        else:
            method_id = row.id
    if state.errors:
        return await _pay_page(request, session, account, choices, state, status=400)
    assert amount_minor is not None
    invoices = await _open_invoices(request, account.account_id)
    body = PaymentCreate(
        account=account.account_id, amount=amount_minor, currency=account.currency,
        payment_method=method_id, token=token,
        allocations=_explicit_allocations(invoices, chosen, amount_minor),
    )  # fmt: skip
    principal = Principal(kind="payer", id=session.payer_id)
    portal_key = f"portal:{key}"
    try:
        await _money_limits(request, session.payer_id, account.account_id)

        status, answered, _ = await create_and_charge(
            request, principal, portal_key, account.account_id, body,
            request_hash(request, _submitted(body, chosen)),
        )  # fmt: skip
        response = web.Response(status=status, body=answered, content_type="application/json")
    except ApiError as error:
        return await _pay_page(request, session, account, choices, _refused(state, error),
                               status=error.status)  # fmt: skip
    answer = msgspec.json.decode(response.body or b"{}")  # type: ignore[arg-type]
    payment = answer.get("error", {}).get("payment") if "error" in answer else answer
    if response.status not in (200, 402) or not isinstance(payment, dict):
        message = answer.get("error", {}).get("message", "The payment could not be made.")
        state.errors["form"] = message
        return await _pay_page(request, session, account, choices, state, status=response.status)
    return web.Response(status=303, headers={"Location": f"/payments/{payment['id']}"})


_INVOICE_ID: Final = re.compile(r"inv_[0-9a-f]+_[0-9a-f]+")


def _is_invoice_of(value: str, account_id: str) -> bool:
    return _INVOICE_ID.fullmatch(value) is not None and ids.account_of(value, "inv") == account_id


def _submitted(body: PaymentCreate, chosen: list[str]) -> bytes:
    """What "the same submission" means: what the payer chose, not the allocation derived
    from it, which changes once the first submission is paid."""
    return msgspec.json.encode({
        "account": body.account, "amount": body.amount, "currency": body.currency,
        "invoices": sorted(chosen), "payment_method": body.payment_method, "token": body.token,
    })  # fmt: skip


def _refused(state: PayForm, error: ApiError) -> PayForm:
    code = error.body.code
    if error.status == 429:
        state.errors["form"] = (
            "Too many payment attempts in a short time. For your security, please wait "
            "a while before trying again."
        )
    elif code == "idempotency_key_in_use":
        state.errors["form"] = "This payment is still being processed. Check your payments."
    elif error.body.param == "amount" or "amount" in code:
        state.errors["amount"] = error.body.message
    else:
        state.errors["form"] = error.body.message
    return state


# -- payment status and receipt ----------------------------------------------------------------


async def own_payment(request: web.Request, session: sessions.BrowserSession) -> tuple[str, Any]:
    """(account id, engine payment) for a payment of the payer's; 404 otherwise."""
    payment_id = request.match_info["id"]
    account_id = ids.account_of(payment_id, "pay")
    engine = request.app[STORE].engine
    if account_id is None or not await directory.payer_owns_account(
        engine, session.payer_id, account_id
    ):  # fmt: skip
        raise web.HTTPNotFound()
    reply = await read_payment(request.app[ROUTER], account_id, payment_id)
    if reply.payment is None:
        raise web.HTTPNotFound()
    return account_id, reply.payment


def payment_story(payment: Any) -> dict[str, Any]:
    """What the status page says: plain words, what to do, and whether it is final."""
    status = payment.status.value
    attempt = payment.current_attempt if payment.attempts else None
    code = attempt.decline_code if attempt is not None else None
    reason = DECLINE_REASONS.get(code or "", "Your bank declined the payment.") if code else None
    # ``requires_action`` is two waits (docs/api.md): a challenge the processor holds for
    # the payer now, or an attempt made without them that their bank declined until they
    # confirm. The first ends by itself (the challenge's callback), so the page listens.
    waiting = None
    if status == "requires_action" and attempt is not None:
        waiting = "challenge" if attempt.status.value == "requires_action" else "confirm"
    final = status not in ("processing", "retry_scheduled") and waiting != "challenge"
    story = {"status": status, "words": STATUS_WORDS.get(status, status), "reason": reason,
             "final": final, "next_retry_at_ms": payment.next_retry_at_ms,
             "waiting": waiting}  # fmt: skip
    return story


def _challenge_frame(request: web.Request, action: Any) -> tuple[str | None, str | None]:
    """(URL to frame, URL to open instead) for the processor's challenge: framed only
    from an origin the page's CSP lets it frame, else a plain link, never a dead frame."""
    if action is None:
        return None, None
    from .security import WEB_CONFIG, frame_origins

    url = action.redirect_to_url.url
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        return None, None
    origin = f"{parts.scheme}://{parts.netloc}"
    config = request.config_dict[WEB_CONFIG]
    allowed = frame_origins(config)
    framable = origin in allowed or any(
        a.startswith("https://*.") and parts.scheme == "https"
        and parts.netloc.endswith(a[len("https://*"):]) for a in allowed
    )  # fmt: skip
    return (url, None) if framable else (None, url)


async def payment_page(request: web.Request, *, error: str | None = None,
                       status: int = 200) -> web.Response:  # fmt: skip
    from payportal.http.typedefs import GATEWAY
    from payportal.live import journal_last_id

    session = await require_payer(request)
    account_id = ids.account_of(request.match_info["id"], "pay")
    # Read before the payment: every change after this id reaches the page live, and
    # every change before it is in what the page shows.
    seen = 0 if account_id is None else await journal_last_id(request.app[STORE].engine, account_id)
    account_id, payment = await own_payment(request, session)
    account, choices = await _chosen(request, session, account_id)
    balance = await _balance(request, account_id)
    numbers = await _invoice_numbers(request, account_id)
    method = await directory.payment_method(request.app[STORE].engine, payment.payment_method.id)
    story = payment_story(payment)
    frame_url = link_url = None
    if story["waiting"] == "challenge":
        # Asked of the processor each time, never stored: the URL is the challenge's secret.
        action = await request.app[GATEWAY].next_action(payment)
        frame_url, link_url = _challenge_frame(request, action)
    return _render(request, "payment.html", {
        "account": account, "accounts": choices, "payment": payment, "balance": balance,
        "numbers": numbers, "method": method_label(method), "story": story,
        "seen": seen, "challenge_url": frame_url, "challenge_link": link_url,
        "confirm_error": error,
    }, status=status)  # fmt: skip


async def payment_get(request: web.Request) -> web.Response:
    return await payment_page(request)


async def payment_confirm(request: web.Request) -> web.Response:
    """The payer's Confirm for a payment their bank wants them present for: the API's own
    confirm, then back to the page, which frames the challenge the new attempt opened."""
    from payportal.http.handlers_payments import confirm_and_charge

    session = await require_payer(request)
    account_id, payment = await own_payment(request, session)
    try:
        await _money_limits(request, session.payer_id, account_id)
        await confirm_and_charge(request, account_id, payment.payment_id)
    except ApiError as error:
        if error.status == 429:
            return await payment_page(request, status=429, error=(
                "Too many payment attempts in a short time. For your security, please wait "
                "a while before trying again."))  # fmt: skip
        if error.status >= 500:
            raise
        # Not waiting for a confirmation any more (a second click, another tab): the
        # page tells what the payment is doing now, and nothing was charged again.
        log.info("portal_confirm_refused", payment_id=payment.payment_id,
                 code=error.body.code)  # fmt: skip
    return web.Response(status=303, headers={"Location": f"/payments/{payment.payment_id}"})


# -- history ---------------------------------------------------------------------------------


def _day_ms(raw: str, *, end: bool) -> int | None:
    if not _DATE.fullmatch(raw):
        return None
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        return None
    if end:
        day += dt.timedelta(days=1)
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


async def history(request: web.Request) -> web.Response:
    session = await require_payer(request)
    account, choices = await _chosen(request, session)
    query = request.query
    filters = {"from": query.get("from", ""), "to": query.get("to", ""),
               "status": query.get("status", ""), "invoice": query.get("invoice", "")}  # fmt: skip
    errors = {}
    start_ms = _day_ms(filters["from"], end=False) if filters["from"] else None
    end_ms = _day_ms(filters["to"], end=True) if filters["to"] else None
    if filters["from"] and start_ms is None:
        errors["from"] = "Use a date like 2026-01-31."
    if filters["to"] and end_ms is None:
        errors["to"] = "Use a date like 2026-01-31."
    status = filters["status"] if filters["status"] in STATUS_WORDS else None
    await wait_for_account_projection(request, account.account_id)
    engine = request.app[STORE].engine
    numbers = await _invoice_numbers(request, account.account_id)
    rows: list[queries.PaymentRow] = []
    after = query.get("after") or None
    has_more = False
    invoice = filters["invoice"]
    # The invoice filter is applied to pages of the list until one is full.
    while len(rows) < HISTORY_PAGE:
        page = await queries.list_payments(
            engine, account_ids=[account.account_id], status=status, created_gte_ms=start_ms,
            created_lt_ms=end_ms, limit=HISTORY_PAGE, starting_after=after,
        )  # fmt: skip
        for row in page.data:
            if invoice and not any(
                invoice in (a.invoice_id, numbers.get(a.invoice_id)) for a in row.allocations
            ):  # fmt: skip
                continue
            rows.append(row)
        has_more = page.has_more
        if not page.has_more or not page.data:
            break
        after = page.data[-1].payment_id
    return _render(request, "history.html", {
        "account": account, "accounts": choices, "payments": rows[:HISTORY_PAGE],
        "filters": filters, "errors": errors, "numbers": numbers,
        "next_after": rows[HISTORY_PAGE - 1].payment_id if has_more and rows else None,
        "format_datetime": format_datetime,
    })  # fmt: skip


# -- payment methods and autopay -----------------------------------------------------------------


def _billing() -> Any:
    try:
        import payportal.billing as billing
    except ImportError:
        return None
    return billing if hasattr(billing, "set_autopay") else None


async def _autopay_state(request: web.Request, account_id: str) -> dict[str, Any] | None:
    billing = _billing()
    if billing is None or not hasattr(billing, "list_subscriptions"):
        return None
    subscriptions = await billing.list_subscriptions(request.app[STORE].engine,
                                                     account_id=account_id)  # fmt: skip
    # Past due still bills (billing's BILLABLE); canceled ones are history.
    active = [s for s in subscriptions if str(s.status) in ("active", "past_due")]
    return {"count": len(active), "enabled": any(s.autopay for s in active)}


async def methods_page(request: web.Request, *, error: str | None = None, status: int = 200,
                       ) -> web.Response:  # fmt: skip
    session = await require_payer(request)
    account, choices = await _chosen(request, session)
    engine = request.app[STORE].engine
    methods = (await queries.list_payment_methods(engine, account.account_id, limit=50)).data
    notice = {"added": "Card saved.", "removed": "Payment method removed.",
              "default": "Default payment method changed.", "autopay_on": "Autopay is on.",
              "autopay_off": "Autopay is off."}.get(request.query.get("done", ""))  # fmt: skip
    return _render(request, "methods.html", {
        "account": account, "accounts": choices, "methods": methods,
        "default_method": await sessions.default_method(engine, account.account_id),
        "method_label": method_label, "error": error, "notice": notice,
        "card": card_entry(request, account.currency),
        "autopay": await _autopay_state(request, account.account_id),
    }, status=status)  # fmt: skip


async def methods_get(request: web.Request) -> web.Response:
    return await methods_page(request)


def _back_to_methods(account_id: str, done: str) -> web.Response:
    return web.Response(status=303,
                        headers={"Location": f"/methods?account={account_id}&done={done}"})


async def method_add(request: web.Request) -> web.Response:
    session = await require_payer(request)
    form = await read_form(request)
    account, _ = await _chosen(request, session, _form_str(form, "account", 64))
    method_id, problem = await _new_method(request, account.account_id, form, keep=True)
    if problem is not None or method_id is None:
        raise web.HTTPBadRequest(reason=problem)
    engine = request.app[STORE].engine
    if await sessions.default_method(engine, account.account_id) is None:
        await sessions.set_default_method(engine, account.account_id, method_id)
    return _back_to_methods(account.account_id, "added")


async def _own_method(request: web.Request, session: sessions.BrowserSession) -> Any:
    row = await directory.payment_method(request.app[STORE].engine, request.match_info["id"])
    if row is None or row.deleted_at is not None or not await directory.payer_owns_account(
        request.app[STORE].engine, session.payer_id, row.account_id
    ):  # fmt: skip
        raise web.HTTPNotFound()
    return row


async def method_remove(request: web.Request) -> web.Response:
    session = await require_payer(request)
    row = await _own_method(request, session)
    engine = request.app[STORE].engine
    await remove_payment_method(request.app[ROUTER], request.app[METHODS], row)
    if await sessions.default_method(engine, row.account_id) == row.id:
        await sessions.set_default_method(engine, row.account_id, None)
    return _back_to_methods(row.account_id, "removed")


async def method_default(request: web.Request) -> web.Response:
    session = await require_payer(request)
    row = await _own_method(request, session)
    await sessions.set_default_method(request.app[STORE].engine, row.account_id, row.id)
    return _back_to_methods(row.account_id, "default")


async def autopay(request: web.Request) -> web.Response:
    session = await require_payer(request)
    form = await read_form(request)
    account, _ = await _chosen(request, session, _form_str(form, "account", 64))
    billing = _billing()
    if billing is None:
        raise web.HTTPNotFound()
    choice = form.get("enabled")
    if choice not in ("yes", "no"):
        # The page sends one of the two; anything else was not the page's form.
        raise web.HTTPBadRequest(reason="The form is out of date.")
    enabled = choice == "yes"
    await billing.set_autopay(request.app[STORE].engine, account_id=account.account_id,
                              enabled=enabled)  # fmt: skip
    return _back_to_methods(account.account_id, "autopay_on" if enabled else "autopay_off")


# -- statements ------------------------------------------------------------------------------


def _period(query: Any) -> tuple[dt.date | None, dt.date | None, dict[str, str]]:
    errors = {}
    bounds: list[dt.date | None] = []
    for name in ("from", "to"):
        raw = query.get(name, "")
        value = None
        if raw:
            try:
                value = dt.date.fromisoformat(raw) if _DATE.fullmatch(raw) else None
            except ValueError:
                value = None
            if value is None:
                errors[name] = "Use a date like 2026-01-31."
        bounds.append(value)
    start, end = bounds
    if start is not None and end is not None and start > end:
        errors["to"] = "The end date must not be before the start date."
    return start, end, errors


async def statements_page(request: web.Request) -> web.Response:
    from payportal.statements import build_statement

    session = await require_payer(request)
    account, choices = await _chosen(request, session)
    start, end, errors = _period(request.query)
    statement = None
    if not errors:
        await wait_for_account_projection(request, account.account_id)
        statement = await build_statement(
            request.app[STORE].engine, account.account_id, start=start, end=end
        )
    return _render(request, "statements.html", {
        "account": account, "accounts": choices, "statement": statement,
        "period": {"from": request.query.get("from", ""), "to": request.query.get("to", "")},
        "errors": errors,
    }, status=400 if errors else 200)  # fmt: skip


async def statement_download(request: web.Request) -> web.Response:
    from payportal.statements import build_statement, render_csv, render_pdf

    session = await require_payer(request)
    account, _ = await _chosen(request, session)
    start, end, errors = _period(request.query)
    kind = request.query.get("format", "pdf")
    if errors or kind not in ("pdf", "csv"):
        raise web.HTTPBadRequest(reason="Choose PDF or CSV and a valid period.")
    await wait_for_account_projection(request, account.account_id)
    statement = await build_statement(
        request.app[STORE].engine, account.account_id, start=start, end=end
    )
    span = f"{start or 'start'}_{end or dt.date.today()}"
    name = f"statement_{account.account_id}_{span}.{kind}"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    if kind == "pdf":
        return web.Response(body=render_pdf(statement), content_type="application/pdf",
                            headers=disposition)  # fmt: skip
    return web.Response(text=render_csv(statement), content_type="text/csv", charset="utf-8",
                        headers=disposition)  # fmt: skip


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", dashboard)
    app.router.add_get("/pay", pay_page)
    app.router.add_post("/pay", pay)
    app.router.add_get("/payments", history)
    app.router.add_get(ids.routed("/payments/{id}"), payment_get)
    app.router.add_post(ids.routed("/payments/{id}/confirm"), payment_confirm)
    app.router.add_get("/methods", methods_get)
    app.router.add_post("/methods", method_add)
    app.router.add_post(ids.routed("/methods/{id}/remove"), method_remove)
    app.router.add_post(ids.routed("/methods/{id}/default"), method_default)
    app.router.add_post("/autopay", autopay)
    app.router.add_get("/statements", statements_page)
    app.router.add_get("/statements/download", statement_download)

