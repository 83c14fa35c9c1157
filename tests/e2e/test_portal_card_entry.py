"""Where the pay and payment-methods pages take a new card, through aiohttp's test client:
the sandbox's hosted fields in an iframe by default; with PAYPORTAL_PROCESSOR=stripe and
a publishable key, Stripe's Payment Element, with a CSP that allows exactly what Stripe.js
needs (and nothing of it otherwise). Nothing here loads Stripe.js: the pages are read as
markup and headers only. Without JavaScript the page says what to do."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from payportal.web.security import WebConfig

from .front_door import FrontDoor, serving_front_door
from .web_client import csrf_token

PASSWORD = "correct horse battery"
PUBLISHABLE_KEY = "pk_test_portal0card0entry"


def _stripe(config: WebConfig) -> WebConfig:
    return msgspec.structs.replace(config, processor="stripe",
                                   stripe_publishable_key=PUBLISHABLE_KEY)  # fmt: skip


def _directives(csp: str) -> dict[str, list[str]]:
    parts = (part.split() for part in csp.split(";") if part.strip())
    return {words[0]: words[1:] for words in parts}


async def _signed_in(door: FrontDoor) -> str:
    account_id = await door.api.account()
    await door.api.invoice(account_id, 12_500, dt.date.today(), number="INV-1")
    await door.api.ok("POST", f"/v1/accounts/{account_id}/payers",
                      json={"email": "card-entry@example.com", "password": PASSWORD})  # fmt: skip
    token = await csrf_token(door.client, "/signin")
    response = await door.client.post("/signin", data={
        "csrf_token": token, "email": "card-entry@example.com", "password": PASSWORD,
        "next": "/",
    }, allow_redirects=False)  # fmt: skip
    assert response.status == 303
    return account_id


@pytest.fixture(params=["sandbox", "stripe"])
def processor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def door(processor: str, database_url: str, aiohttp_server: Any,
               ) -> AsyncIterator[FrontDoor]:  # fmt: skip
    adjust = _stripe if processor == "stripe" else None
    async with serving_front_door(database_url, aiohttp_server, web_config=adjust) as front:
        yield front


@pytest.mark.parametrize("path", ["/pay", "/methods"])
async def test_the_card_form_and_the_csp_follow_the_processor(
    door: FrontDoor, processor: str, path: str
) -> None:
    await _signed_in(door)
    response = await door.client.get(path)
    assert response.status == 200
    html = await response.text()
    csp = _directives(response.headers["Content-Security-Policy"])
    nonce = re.fullmatch(r"'nonce-([^']+)'", csp["script-src"][0])
    assert nonce is not None, csp
    # The one button tokenizes and submits; without JavaScript the page says so.
    assert html.count("data-card-submit") == 1
    assert "<noscript>" in html
    assert "Use this card" not in html
    if processor == "stripe":
        assert csp["script-src"][1:] == ["https://js.stripe.com", "https://*.js.stripe.com"]
        assert csp["frame-src"] == ["https://js.stripe.com", "https://*.js.stripe.com",
                                    "https://hooks.stripe.com"]  # fmt: skip
        assert csp["connect-src"] == ["'self'", "https://api.stripe.com"]
        assert f'<script src="https://js.stripe.com/v3/" nonce="{nonce.group(1)}" defer>' in html
        assert f'data-stripe-key="{PUBLISHABLE_KEY}"' in html
        assert "data-card-frame" not in html
        assert door.sandbox_url not in html
    else:
        assert "stripe" not in response.headers["Content-Security-Policy"]
        assert "stripe" not in html.lower()
        assert csp["script-src"] == [nonce.group(0)]
        assert csp["frame-src"] == [door.sandbox_url]
        assert csp["connect-src"] == ["'self'", door.sandbox_url]
        frame = re.search(r'<iframe src="([^"]+)" title="([^"]+)"', html)
        assert frame is not None
        assert frame.group(1).startswith(f"{door.sandbox_url}/v1/hosted/card-fields?origin=")
        assert frame.group(2)
    # Everything else stays as strict as ever.
    assert csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]
    assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]


async def test_a_new_card_posted_without_its_token_says_what_to_do(door: FrontDoor) -> None:
    account_id = await _signed_in(door)
    token = await csrf_token(door.client, f"/pay?account={account_id}")
    response = await door.client.post("/pay", data={
        "csrf_token": token, "account": account_id, "amount": "10.00", "method": "card",
        "idempotency_key": "no-javascript-0001",
    }, allow_redirects=False)  # fmt: skip
    assert response.status == 400
    text = await response.text()
    assert "Type your card into the secure card form and choose Pay again" in text
    assert "without it, pay with a saved payment method" in text
