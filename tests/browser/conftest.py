"""Fixtures of the browser tests: a real ``payportal serve --seed-demo`` (front door,
sandbox, shards on a local Ray, mail catcher) in a scratch directory on free ports, and
Debian's Chromium driven by Playwright.

Without Chromium the tests are skipped with the reason, locally; under ``CI=true`` a
missing browser fails them (``.ci/run`` installs it). Screenshots go to
``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests import artifacts
from tests.serve_process import serving

CHROMIUM = os.environ.get("PAYPORTAL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# A phone: the narrowest layout the portal supports.
VIEWPORT = {"width": 375, "height": 812}


class Stack(msgspec.Struct, frozen=True, kw_only=True):
    base: str
    sandbox: str
    mail_ui: str
    payer_email: str
    payer_password: str
    log: Path


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if _in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


# Package scope: one server for every browser test, stopped when they are done rather
# than at the end of the whole run (it holds a Ray instance and its shards).
@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, chromium_path: str) -> Iterator[Stack]:
    """``payportal serve --seed-demo`` as ``make run`` starts it, on free ports."""
    workdir = tmp_path_factory.mktemp("serve")
    with serving(workdir) as served:
        login = next(line for line in served.banner.splitlines() if "payer login" in line)
        email, _, password = login.split("payer login", 1)[1].strip().partition(" / ")
        yield Stack(
            base=served.base, sandbox=served.sandbox,
            mail_ui=served.inbox, payer_email=email.strip(),
            payer_password=password.strip(), log=served.log,
        )  # fmt: skip
        _keep_inbox(served.inbox)
    output = served.output()
    assert "4242424242424242" not in output
    assert "4000000000000002" not in output


def _keep_inbox(inbox: str) -> None:
    """Every email the catcher received, for the final secrets scan."""
    with contextlib.suppress(OSError), urllib.request.urlopen(
        f"{inbox}/api/messages", timeout=10
    ) as answer:
        artifacts.keep(artifacts.DOCUMENTS, "mail-catcher-inbox", answer.read(), "json")


def _keep_page(page: Any, label: str) -> None:
    """The page's markup, for the final secrets scan."""
    with contextlib.suppress(Exception):  # a page that is closing keeps nothing
        artifacts.keep(artifacts.DOCUMENTS, label, page.content(), "html")


@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh phone-sized browser context (its own cookies) and page."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True,
                                  base_url=stack.base)  # fmt: skip
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        yield page
    finally:
        _keep_page(page, f"browser-{request.node.name}-last")
        context.close()


@pytest.fixture
def shoot(request: pytest.FixtureRequest, page: Any) -> Any:
    """``shoot("step")`` saves a full-page screenshot named after the test and step."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = request.node.name.replace("[", "_").replace("]", "")

    def take(step: str) -> Path:
        path = SCREENSHOTS / f"{name}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        _keep_page(page, f"browser-{name}-{step}")
        return path

    return take
