"""The merchant console in a real browser (Chromium through Playwright) against a real
``payportal serve --seed-demo``: the demo API key signs in using only the keyboard on a
375 px wide screen; every console page fits the screen and is reached by Tab and Enter;
the account search finds the demo accounts; sign-out ends the session. Screenshots are
kept as artefacts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import Stack
from .test_portal_browser import TABS_MAX, _fits_the_screen, tab_to

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.slow]

PAGES = [("Accounts", "/console/accounts"), ("Payments", "/console/payments"),
         ("Retry queue", "/console/retries"), ("Revenue", "/console/revenue"),
         ("Reconciliation", "/console/exceptions"), ("Figures", "/console")]  # fmt: skip


def tab_to_control(page: Any, text: str) -> None:
    """Press Tab until a link or button whose own text is ``text`` has the focus."""
    for _ in range(TABS_MAX):
        focused = page.evaluate(
            "() => { const e = document.activeElement;"
            " return e && e.matches('a, button') ? e.textContent.trim() : null; }"
        )
        if focused == text:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {text!r}")


def _api_key(stack: Stack) -> str:
    found = re.search(r"API key\s+(sk_\S+)", stack.log.read_text())
    assert found is not None, "serve printed no demo API key"
    return found.group(1)


def test_console_by_keyboard_on_a_phone(page: Any, stack: Stack, shoot: Any) -> None:
    page.goto("/console")
    page.wait_for_url(stack.base + "/console/signin")
    tab_to(page, "#api_key")
    page.keyboard.type("sk_not_the_key")
    page.keyboard.press("Enter")
    page.wait_for_selector("#api_key-error")
    assert page.get_attribute("#api_key", "aria-invalid") == "true"
    shoot("refused")
    tab_to(page, "#api_key")
    page.keyboard.type(_api_key(stack))
    page.keyboard.press("Enter")
    page.wait_for_url(stack.base + "/console")
    for figure in ("processing", "success_rate", "accuracy"):
        assert page.inner_text(f'[data-figure="{figure}"]').strip()
    _fits_the_screen(page)
    shoot("figures")

    for label, path in PAGES:
        tab_to_control(page, label)
        page.keyboard.press("Enter")
        page.wait_for_url(stack.base + path)
        assert page.inner_text("h1").strip()
        _fits_the_screen(page)
        shoot(path.strip("/").replace("/", "-"))

    page.goto("/console/accounts")
    assert page.locator('[data-account="acct_demo_acme"]').count() == 1
    tab_to(page, "#q")
    page.keyboard.type("globex")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/console/accounts\?q=globex$"))
    assert page.locator('[data-account="acct_demo_globex"]').count() == 1
    assert page.locator('[data-account="acct_demo_acme"]').count() == 0
    shoot("search")

    tab_to_control(page, "Sign out of the console")
    page.keyboard.press("Enter")
    page.wait_for_url(stack.base + "/console/signin")
    page.goto("/console/accounts")
    page.wait_for_url(stack.base + "/console/signin")
