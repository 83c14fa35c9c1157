"""Every portal and console page, and the processor's card fields inside the pay page,
audited with axe-core for WCAG 2.2 AA at desktop width and at 375 px: no serious or
critical violation may remain (``axe.py``). One context per role (signed out, payer,
merchant), each page loaded once and audited at both widths, with the states that
change the markup: form errors, a card-field error inside the frame, a receipt, a
decline, saved cards."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from . import axe
from .conftest import VIEWPORT, Stack
from .test_console_browser import _api_key

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.slow]

DESKTOP = {"width": 1280, "height": 800}
# The reset email is sent by the outbox worker, which polls about once a second.
MAIL_WAIT_S = 30


@pytest.fixture
def audit() -> Iterator[axe.Audit]:
    found = axe.Audit()
    yield found
    found.assert_clean()


@pytest.fixture
def context(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP, base_url=stack.base)
    context.set_default_timeout(30_000)
    axe.install(context, [stack.base, stack.sandbox])
    try:
        yield context
    finally:
        context.close()


def _both_widths(page: Any, audit: axe.Audit, label: str) -> None:
    for viewport in (DESKTOP, VIEWPORT):
        page.set_viewport_size(viewport)
        audit.check(page, label)
    page.set_viewport_size(DESKTOP)


def _visit(page: Any, audit: axe.Audit, path: str, label: str) -> None:
    page.goto(path)
    _both_widths(page, audit, label)


def _reset_link(stack: Stack, email: str) -> str:
    deadline = time.monotonic() + MAIL_WAIT_S
    while True:
        with urllib.request.urlopen(f"{stack.mail_ui}/api/messages", timeout=10) as answer:
            inbox = json.loads(answer.read())
        for message in inbox["messages"]:
            if email in json.dumps(message.get("to", "")) or email in json.dumps(message):
                found = re.search(r"/reset/[A-Za-z0-9_\-]{16,}", json.dumps(message))
                if found:
                    return found.group(0)
        assert time.monotonic() < deadline, "no reset email arrived"
        time.sleep(0.5)


def test_signed_out_pages(context: Any, stack: Stack, audit: axe.Audit) -> None:
    page = context.new_page()
    _visit(page, audit, "/signin", "sign-in")
    page.fill("#email", stack.payer_email)
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    page.wait_for_selector(".form-error, .field-error")
    _both_widths(page, audit, "sign-in refused")
    _visit(page, audit, "/reset", "reset request")
    page.fill("#email", stack.payer_email)
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    _both_widths(page, audit, "reset requested")
    _visit(page, audit, _reset_link(stack, stack.payer_email), "new password")
    _visit(page, audit, "/reset/not-a-link-we-sent", "expired link")
    _visit(page, audit, "/nothing-here", "not found")
    _visit(page, audit, "/console/signin", "console sign-in")
    page.fill("#api_key", "sk_not_the_key")
    page.click("main button[type=submit]")
    page.wait_for_selector("#api_key-error")
    _both_widths(page, audit, "console sign-in refused")
    # The card fields on their own, as the processor serves them into the frame.
    _visit(page, audit, f"{stack.sandbox}/v1/hosted/card-fields?origin={stack.base}",
           "card fields")  # fmt: skip


def _pay_new_card(page: Any, amount: str, number: str, *, save: bool) -> None:
    page.goto("/pay")
    page.fill("#amount", amount)
    page.check("#method-card")
    fields = page.frame_locator("iframe[data-card-frame]")
    fields.locator("#cc-number").fill(number)
    fields.locator("#cc-exp").fill("12 / 35")
    fields.locator("#cc-csc").fill("123")
    if save:
        page.check("#save")
    page.click("#pay-button")
    page.wait_for_url("**/payments/pay_**")


def test_payer_pages(context: Any, stack: Stack, audit: axe.Audit) -> None:
    page = context.new_page()
    page.goto("/signin")
    page.fill("#email", stack.payer_email)
    page.fill("#password", stack.payer_password)
    page.click("main button[type=submit]")
    page.wait_for_url(stack.base + "/")
    _both_widths(page, audit, "overview")

    _visit(page, audit, "/pay", "pay")
    page.check("#method-card")
    page.click("#pay-button")  # nothing typed: the frame marks the card number
    page.frame_locator("iframe[data-card-frame]").locator(
        "#cc-number[aria-invalid=true]").wait_for()  # fmt: skip
    _both_widths(page, audit, "pay, card field error")
    page.check("#method-wallet")
    _both_widths(page, audit, "pay, wallets")

    _pay_new_card(page, "12.00", "4242 4242 4242 4242", save=True)
    page.locator("[data-status-badge]").filter(has_text="Paid").wait_for()
    _both_widths(page, audit, "receipt")
    _pay_new_card(page, "13.00", "4000 0000 0000 0002", save=False)
    page.locator("[data-decline]").wait_for()
    _both_widths(page, audit, "declined")

    _visit(page, audit, "/pay", "pay, saved card")
    page.fill("#amount", "not an amount")
    page.click("#pay-button")
    page.wait_for_selector("#amount-error")
    _both_widths(page, audit, "pay, amount refused")
    _visit(page, audit, "/payments", "history")
    _visit(page, audit, "/payments?from=yesterday", "history, bad filter")
    _visit(page, audit, "/methods", "payment methods")
    _visit(page, audit, "/statements", "statements")
    _visit(page, audit, "/statements?from=2026-13-45", "statements, bad period")
    _visit(page, audit, "/security", "security")


def test_console_pages(context: Any, stack: Stack, audit: axe.Audit) -> None:
    page = context.new_page()
    page.goto("/console/signin")
    page.fill("#api_key", _api_key(stack))
    page.click("main button[type=submit]")
    page.wait_for_url(stack.base + "/console")
    _both_widths(page, audit, "console figures")
    for path in ("/console/accounts", "/console/accounts?q=globex", "/console/payments",
                 "/console/retries", "/console/revenue", "/console/exceptions"):  # fmt: skip
        _visit(page, audit, path, path.removeprefix("/console/"))


def test_the_audit_fails_on_a_violation(context: Any) -> None:
    """The gate itself: a field without a label, inside a frame, is reported."""
    page = context.new_page()
    page.goto("/signin")
    page.evaluate("""() => {
      const frame = document.createElement("iframe");
      frame.title = "Inner";
      frame.srcdoc = "<!doctype html><html lang=en><title>Inner</title><input id=q>";
      document.querySelector("main").append(frame);
    }""")
    page.frame_locator("main iframe").locator("#q").wait_for()
    found = axe.Audit()
    found.check(page, "broken")
    with pytest.raises(AssertionError, match=r"critical label: .*\n    iframe >>> #q"):
        found.assert_clean()
