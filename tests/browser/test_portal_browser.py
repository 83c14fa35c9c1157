"""The payer portal in a real browser (Chromium through Playwright) against a real
``payportal serve``: the demo payer signs in and pays part of the balance with a new card
using only the keyboard on a 375 px wide screen, watches the status reach "Paid", checks
the receipt's allocation, downloads the statement and checks its totals, and finds the
confirmation email in the mail catcher; then the same with a hard decline (use another
payment method) and a soft decline (retry scheduled), and a wallet button. Screenshots are
kept as artefacts.

The first journey runs twice: over plain HTTP, and over HTTPS as ``make run-tls`` serves
it (the sandbox's card fields too), where nothing the page loads or opens may be plain
HTTP. Over HTTPS also: a browser that does not trust the certificate is refused, pages
carry HSTS, and the plain HTTP port sends the browser to HTTPS."""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import VIEWPORT, Stack

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.slow]

# Tab presses allowed to reach a control: more than any page here has.
TABS_MAX = 60
# The sender worker polls the outbox every second or so: a generous bound for a busy box.
MAIL_WAIT_S = 60


def _to_minor(text: str) -> int:
    """ "1,234.50 USD" → 123450."""
    number = re.search(r"-?[\d,]+\.\d{2}", text)
    assert number is not None, text
    whole, _, cents = number.group(0).replace(",", "").partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole)) * 100 + int(cents))


def _focused(page: Any, selector: str) -> bool:
    return bool(page.evaluate(
        "s => !!document.activeElement && document.activeElement.matches(s)", selector
    ))  # fmt: skip


def tab_to(page: Any, selector: str) -> None:
    """Press Tab until the focused element matches ``selector``: keyboard only."""
    for _ in range(TABS_MAX):
        if _focused(page, selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def tab_to_text(page: Any, text: str) -> None:
    """Press Tab until the focused link or button says ``text``."""
    for _ in range(TABS_MAX):
        if page.evaluate(
            "t => { const e = document.activeElement;"
            " return !!e && e.matches('a, button') && e.textContent.includes(t); }", text
        ):  # fmt: skip
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {text!r}")


def _fits_the_screen(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT["width"], f"{page.url} is {width}px wide"


def sign_in(page: Any, stack: Stack) -> None:
    page.goto("/signin")
    tab_to(page, "#email")
    page.keyboard.type(stack.payer_email)
    page.keyboard.press("Tab")
    page.keyboard.type(stack.payer_password)
    page.keyboard.press("Enter")
    page.wait_for_url(stack.base + "/")


def pay_with_new_card(page: Any, stack: Stack, amount: str, card_number: str) -> None:
    """From the dashboard to the payment's status page, keyboard only."""
    tab_to(page, 'main a[href^="/pay?"]')
    page.keyboard.press("Enter")
    page.wait_for_url("**/pay?**")
    tab_to(page, "#amount")
    page.keyboard.press("Control+A")
    page.keyboard.type(amount)
    # Radios: Tab reaches the chosen one, arrows choose.
    tab_to(page, 'input[name="method"]:checked')
    for _ in range(10):
        if page.locator("#method-card").is_checked():
            break
        page.keyboard.press("ArrowDown")
    assert page.locator("#method-card").is_checked()
    tab_to(page, "iframe[data-card-frame]")
    frame = next(f for f in page.frames if "/v1/hosted/card-fields" in f.url)
    assert frame.url.startswith(stack.sandbox)  # the card is typed into the processor's page
    assert frame.evaluate("document.activeElement.autocomplete") == "cc-number"
    page.keyboard.type(card_number)
    page.keyboard.press("Tab")
    assert frame.evaluate("document.activeElement.autocomplete") == "cc-exp"
    page.keyboard.type("12 / 35")
    page.keyboard.press("Tab")
    assert frame.evaluate("document.activeElement.autocomplete") == "cc-csc"
    page.keyboard.type("123")
    # One action: Pay has the processor tokenize the card, then submits the form.
    tab_to(page, "#pay-button")
    page.keyboard.press("Enter")
    page.wait_for_url("**/payments/pay_**")


def _outstanding(page: Any) -> int:
    return _to_minor(page.locator("[data-outstanding]").inner_text())


@dataclass
class Traffic:
    """What a page asked for: every URL, the event streams' answers, and what Chromium
    blocked as mixed content (which never shows up as a request)."""

    urls: list[str] = field(default_factory=list)
    streams: list[tuple[str, int]] = field(default_factory=list)
    mixed_content: list[str] = field(default_factory=list)

    def plain(self) -> list[str]:
        return [url for url in self.urls if url.startswith(("http:", "ws:"))]


def watch(page: Any) -> Traffic:
    traffic = Traffic()
    page.on("request", lambda request: traffic.urls.append(request.url))

    def answered(response: Any) -> None:
        if "/events?" in response.url:
            traffic.streams.append((response.url, response.status))

    def said(message: Any) -> None:
        if "Mixed Content" in message.text:
            traffic.mixed_content.append(message.text)

    page.on("response", answered)
    page.on("console", said)
    return traffic


@pytest.mark.parametrize("stack", ["http", "https"], indirect=True)
def test_keyboard_only_partial_payment_with_a_new_card_receipt_statement_and_email(
    page: Any, stack: Stack, shoot: Any
) -> None:
    traffic = watch(page)
    sign_in(page, stack)
    _fits_the_screen(page)
    shoot("1-dashboard")
    before_minor = _outstanding(page)
    assert before_minor > 100_00
    assert page.locator(".status-overdue").count() >= 1

    tab_to(page, 'main a[href^="/pay?"]')
    page.keyboard.press("Enter")
    page.wait_for_url("**/pay?**")
    tab_to(page, "#amount")
    page.keyboard.press("Control+A")
    page.keyboard.type("100.00")
    preview = page.locator('[data-preview-invoice="INV-1001"]')
    preview.filter(has_text="100.00 USD").wait_for()
    _fits_the_screen(page)
    shoot("2-pay-preview")
    page.go_back()
    page.wait_for_url(stack.base + "/")

    pay_with_new_card(page, stack, "100.00", "4242 4242 4242 4242")
    page.locator("[data-status-badge]").filter(has_text="Paid").wait_for()
    _fits_the_screen(page)
    shoot("3-receipt")
    row = page.locator('[data-allocation] tr[data-invoice="INV-1001"] td.num')
    assert row.inner_text() == "100.00 USD"
    assert page.locator("[data-allocation] tbody tr").count() == 1
    after_minor = _to_minor(page.locator("[data-new-balance]").inner_text())
    assert after_minor == before_minor - 100_00
    payment_id = page.url.rsplit("/", 1)[1]

    tab_to(page, 'a[href^="/statements"]')
    page.keyboard.press("Enter")
    page.wait_for_url("**/statements**")
    page.locator("[data-statement]").wait_for()
    shoot("4-statement")
    assert _to_minor(page.locator("[data-closing]").inner_text()) == after_minor
    tab_to(page, 'a[href*="format=csv"]')
    with page.expect_download() as download_info:
        page.keyboard.press("Enter")
    download = download_info.value
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    opening = next(r for r in rows if r["row_type"] == "opening")
    closing = next(r for r in rows if r["row_type"] == "closing")
    lines = [r for r in rows if r["row_type"] == "line"]
    totals = {r["kind"]: _to_minor(r["amount"]) for r in rows if r["row_type"] == "total"}
    assert _to_minor(closing["outstanding"]) == after_minor
    assert _to_minor(closing["balance"]) == _to_minor(opening["balance"]) + sum(
        _to_minor(r["balance_change"]) for r in lines
    )
    ours = [r for r in lines if r["payment_id"] == payment_id and r["kind"] == "payment"]
    assert [_to_minor(r["amount"]) for r in ours] == [100_00]
    assert totals["payments"] == sum(_to_minor(r["amount"]) for r in lines
                                     if r["kind"] == "payment")  # fmt: skip
    assert totals["invoiced"] == sum(_to_minor(r["amount"]) for r in lines
                                     if r["kind"] == "invoice")  # fmt: skip

    # The dashboard's live status stream was opened on the portal's own scheme and origin.
    assert any(url.startswith(stack.base + "/accounts/") and status == 200
               for url, status in traffic.streams), traffic.streams  # fmt: skip
    if stack.tls:
        assert traffic.mixed_content == []
        assert traffic.plain() == []

    # The confirmation email, in the catcher's inbox (a page of its own, on its own port).
    deadline = time.monotonic() + MAIL_WAIT_S
    page.goto(stack.mail_ui)
    while "Payment received: 100.00 USD" not in page.content():
        assert time.monotonic() < deadline, "no confirmation email arrived"
        page.wait_for_timeout(1_000)
        page.reload()
    shoot("5-inbox")
    tab_to_text(page, "Payment received: 100.00 USD")
    page.keyboard.press("Enter")
    page.wait_for_url("**/messages/**")
    body = page.content()
    assert payment_id in body
    assert "INV-1001" in body


def test_a_hard_decline_says_to_use_another_payment_method(
    page: Any, stack: Stack, shoot: Any
) -> None:
    sign_in(page, stack)
    before_minor = _outstanding(page)
    pay_with_new_card(page, stack, "25.00", "4000 0000 0000 0002")
    page.locator("[data-decline=hard]").wait_for()
    shoot("declined")
    text = page.locator("#live").inner_text()
    assert "Your card was declined" in text
    assert "use another payment method" in text
    assert "No money was taken" in text
    assert page.locator("[data-status-badge]").inner_text() == "Declined"
    page.get_by_role("link", name="pay with another card or a wallet").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/pay?**")
    page.goto("/")
    assert _outstanding(page) == before_minor


def test_a_soft_decline_says_a_retry_is_scheduled(page: Any, stack: Stack, shoot: Any) -> None:
    sign_in(page, stack)
    pay_with_new_card(page, stack, "30.00", "4000 0000 0000 9995")
    page.locator("[data-decline=soft]").wait_for()
    shoot("retry-scheduled")
    text = page.locator("#live").inner_text()
    assert "Retry scheduled" in text
    assert "try the same card again automatically" in text
    assert "not have enough funds" in text


def test_a_wallet_button_pays_through_the_processors_wallet_token(
    page: Any, stack: Stack, shoot: Any
) -> None:
    sign_in(page, stack)
    tab_to(page, 'main a[href^="/pay?"]')
    page.keyboard.press("Enter")
    page.wait_for_url("**/pay?**")
    tab_to(page, "#amount")
    page.keyboard.press("Control+A")
    page.keyboard.type("5.00")
    tab_to(page, 'input[name="method"]:checked')
    for _ in range(10):
        if page.locator("#method-wallet").is_checked():
            break
        page.keyboard.press("ArrowDown")
    assert page.locator("#method-wallet").is_checked()
    assert page.locator("#wallets").is_visible()
    assert not page.locator("#new-card").is_visible()
    tab_to(page, 'button[data-wallet="google_pay"]')
    page.keyboard.press("Space")
    page.wait_for_url("**/payments/pay_**")
    page.locator("[data-status-badge]").filter(has_text="Paid").wait_for()
    shoot("wallet-receipt")
    assert "Google Pay (Visa ending in 4242)" in page.locator("[data-receipt]").inner_text()


def test_over_https_a_browser_must_trust_the_certificate_and_plain_http_is_sent_there(
    tls_stack: Stack, tls_browser: Any, browser: Any
) -> None:
    from playwright.sync_api import Error as PlaywrightError

    trusting = tls_browser.new_context(viewport=VIEWPORT)
    try:
        page = trusting.new_page()
        response = page.goto(tls_stack.base + "/signin")
        assert response is not None
        assert response.status == 200
        assert page.url == tls_stack.base + "/signin"
        assert page.url.startswith("https://")
        assert response.headers["strict-transport-security"] == "max-age=31536000"

        assert tls_stack.http_redirect is not None
        page.goto(tls_stack.http_redirect + "/signin?next=/statements")
        assert page.url == tls_stack.base + "/signin?next=/statements"
        page.locator("#email").wait_for()
    finally:
        trusting.close()

    # The same page in a browser that was not told about the certificate.
    untrusting = browser.new_context(viewport=VIEWPORT)
    try:
        with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
            untrusting.new_page().goto(tls_stack.base + "/signin")
    finally:
        untrusting.close()


def test_a_card_field_error_shows_beside_the_field_and_a_double_click_pays_once(
    page: Any, stack: Stack, shoot: Any
) -> None:
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    sign_in(page, stack)
    page.goto("/pay")
    page.fill("#amount", "7.00")
    page.check("#method-card")
    fields = page.frame_locator("iframe[data-card-frame]")
    fields.locator("#cc-number").fill("4242 4242 4242 4241")  # fails Luhn's check
    fields.locator("#cc-exp").fill("12 / 35")
    fields.locator("#cc-csc").fill("123")
    page.click("#pay-button")
    number = fields.locator("#cc-number[aria-invalid=true]")
    number.wait_for()
    frame = next(f for f in page.frames if "/v1/hosted/card-fields" in f.url)
    assert frame.evaluate("document.activeElement.id") == "cc-number"
    assert _focused(page, "iframe[data-card-frame]")  # the keyboard is in the field
    described = frame.evaluate(
        "document.getElementById(document.activeElement.getAttribute('aria-describedby'))"
        ".textContent"
    )
    assert "card number is incorrect" in described
    assert page.url.endswith("/pay")
    shoot("card-field-error")

    # Typing on from the field: its error goes once Pay is pressed again.
    page.keyboard.press("Control+A")
    page.keyboard.type("4242 4242 4242 4242")
    posts.clear()
    page.dblclick("#pay-button")
    page.wait_for_url("**/payments/pay_**")
    page.locator("[data-status-badge]").filter(has_text="Paid").wait_for()
    assert sum(url.endswith("/v1/tokens") for url in posts) == 1, posts
    assert sum(url.endswith("/pay") for url in posts) == 1, posts


def test_enter_in_a_card_field_pays(page: Any, stack: Stack) -> None:
    sign_in(page, stack)
    page.goto("/pay")
    page.fill("#amount", "6.00")
    page.check("#method-card")
    fields = page.frame_locator("iframe[data-card-frame]")
    fields.locator("#cc-number").fill("4242 4242 4242 4242")
    fields.locator("#cc-exp").fill("12 / 35")
    fields.locator("#cc-csc").fill("123")
    fields.locator("#cc-csc").press("Enter")
    page.wait_for_url("**/payments/pay_**")


def test_a_3ds_challenge_is_completed_by_keyboard_in_the_page_and_the_status_reads_paid(
    page: Any, stack: Stack, shoot: Any
) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, stack)
    pay_with_new_card(page, stack, "12.00", "4000 0027 6000 3184")
    page.locator("[data-challenge-frame]").wait_for()
    # Set on this document only: a reload would drop it.
    page.evaluate("window.stillTheSamePage = true")
    assert page.get_by_role("heading", name="Confirm this payment with your bank").is_visible()
    _fits_the_screen(page)
    shoot("challenge")
    frame = page.frame_locator("iframe[data-challenge-frame]")
    frame.get_by_role("button", name="Complete authentication").wait_for()
    challenge = next(f for f in page.frames if "/v1/challenges/" in f.url)
    assert challenge.url.startswith(stack.sandbox)  # the bank's page, not the portal's
    tab_to(page, "iframe[data-challenge-frame]")
    for _ in range(5):
        if challenge.evaluate("document.activeElement.value") == "complete":
            break
        page.keyboard.press("Tab")
    assert challenge.evaluate("document.activeElement.value") == "complete"
    page.keyboard.press("Enter")
    badge = page.locator("[data-status-badge]")
    deadline = time.monotonic() + 30
    while badge.inner_text() != "Paid" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert badge.inner_text() == "Paid"
    assert page.evaluate("window.stillTheSamePage === true")
    assert page.locator("[data-challenge-frame]").count() == 0
    assert "Thank you: your payment is received" in page.locator("#live").inner_text()
    assert page.locator("#receipt-heading").inner_text() == "Receipt"
    shoot("challenge-paid")
