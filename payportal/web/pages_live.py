"""The pages' JSON and live status, authenticated by the session cookie.

- ``GET /pay/preview.json?account=&amount=&invoice=…``: how an amount would be split
  over the open invoices (the chosen ones first, then oldest first) — the API's
  allocation preview (``engine.allocate`` over the same read model), for the pay page to
  show as the payer types.
- ``GET /payments/{id}/status.json``: the payment's status in plain words (the status
  page's polling fallback).
- ``GET /payments/{id}/events``: Server-Sent Events of the payment's status changes, fed
  from the status streams exactly as ``GET /v1/payments/{id}/events`` is; and
  ``GET /accounts/{id}/events`` (``?after=``) for the dashboard, every payment of one
  account.

Anything not the payer's is 404, as everywhere.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from payportal.engine import Allocation, allocate
from payportal.http import events, ids
from payportal.http.reads import wait_for_account_projection
from payportal.http.typedefs import STORE
from payportal.live import journal_last_id, journal_payment_start
from payportal.persistence import directory, queries

from .pages import format_money, own_payment, parse_amount, payment_story
from .pages_auth import current_session

__all__ = ["add_routes"]


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(payload), status=status,
                        content_type="application/json")  # fmt: skip


def _error(status: int, code: str, message: str, param: str | None = None) -> web.Response:
    return _json({"error": {"code": code, "message": message, "param": param}}, status)


async def preview(request: web.Request) -> web.Response:
    session = await current_session(request)
    if session is None:
        return _error(401, "signed_out", "Your session ended; sign in again.")
    account_id = request.query.get("account", "")
    engine = request.app[STORE].engine
    profile = await directory.account_profile(engine, account_id)
    if profile is None or not await directory.payer_owns_account(
        engine, session.payer_id, account_id
    ):  # fmt: skip
        return _error(404, "resource_missing", "No such account.", "account")
    amount_minor = parse_amount(request.query.get("amount", ""), profile.currency)
    if amount_minor is None or amount_minor <= 0:
        return _error(400, "parameter_invalid", "Enter an amount, like 125.00.", "amount")
    await wait_for_account_projection(request, account_id)
    open_invoices = await queries.open_invoices(engine, account_id)
    chosen = set(request.query.getall("invoice", []))
    explicit = [
        Allocation(invoice_id=i.invoice_id, amount_minor=i.amount_remaining_minor)
        for i in sorted(open_invoices, key=lambda i: (i.due_date, i.invoice_id))
        if i.invoice_id in chosen
    ]
    split = allocate(open_invoices, amount_minor, explicit)
    numbers = {i.invoice_id: i.number for i in open_invoices}
    currency = profile.currency
    return _json({
        "amount": amount_minor, "amount_text": format_money(amount_minor, currency),
        "allocations": [{"invoice": a.invoice_id, "number": numbers.get(a.invoice_id, ""),
                         "amount": a.amount_minor,
                         "amount_text": format_money(a.amount_minor, currency)}
                        for a in split.allocations],
        "unapplied": split.unapplied_minor,
        "unapplied_text": format_money(split.unapplied_minor, currency),
    })  # fmt: skip


async def status(request: web.Request) -> web.Response:
    session = await current_session(request)
    if session is None:
        return _error(401, "signed_out", "Your session ended; sign in again.")
    try:
        _, payment = await own_payment(request, session)
    except web.HTTPNotFound:
        return _error(404, "resource_missing", "No such payment.", "id")
    return _json(payment_story(payment))


async def stream(request: web.Request) -> web.StreamResponse:
    session = await current_session(request)
    if session is None:
        return _error(401, "signed_out", "Your session ended; sign in again.")
    payment_id = request.match_info["id"]
    account_id = ids.account_of(payment_id, "pay")
    engine = request.app[STORE].engine
    if account_id is None or not await directory.payer_owns_account(
        engine, session.payer_id, account_id
    ):  # fmt: skip
        return _error(404, "resource_missing", "No such payment.", "id")
    streams = request.app.get(events.STATUS_STREAMS)
    if streams is None:
        return _error(404, "resource_missing", "No live status here; poll instead.")
    created = await journal_payment_start(engine, account_id, payment_id)
    if created is None:
        return _error(404, "resource_missing", "No such payment.", "id")
    # ``after``: the journal id the page was rendered at (it shows everything up to it).
    shown = events.parse_event_id(request.query.get("after", "")) or 0
    after = max(created - 1, shown, events.last_event_id(request) or 0)
    return await events.serve_status_stream(request, streams, account_id, payment_id, after)


async def account_stream(request: web.Request) -> web.StreamResponse:
    """The dashboard's live status: every payment status change of the account."""
    session = await current_session(request)
    if session is None:
        return _error(401, "signed_out", "Your session ended; sign in again.")
    account_id = request.match_info["id"]
    engine = request.app[STORE].engine
    if not await directory.payer_owns_account(engine, session.payer_id, account_id):
        return _error(404, "resource_missing", "No such account.", "id")
    streams = request.app.get(events.STATUS_STREAMS)
    if streams is None:
        return _error(404, "resource_missing", "No live status here.")
    after = events.parse_event_id(request.query.get("after", "")) or 0
    after = max(after, events.last_event_id(request) or 0)
    if after == 0:
        after = await journal_last_id(engine, account_id)
    return await events.serve_status_stream(request, streams, account_id, None, after)


def add_routes(app: web.Application) -> None:
    app.router.add_get(ids.routed("/accounts/{id}/events"), account_stream)
    app.router.add_get("/pay/preview.json", preview)
    app.router.add_get(ids.routed("/payments/{id}/status.json"), status)
    app.router.add_get(ids.routed("/payments/{id}/events"), stream)
