"""Fixtures of the browser tests: a real ``payportal serve --seed-demo`` (front door,
sandbox, shards on a local Ray, mail catcher) in a scratch directory on free ports, and
Debian's Chromium driven by Playwright.

A test parametrized with ``@pytest.mark.parametrize("stack", ["http", "https"],
indirect=True)`` also runs against a second serve that terminates TLS with a certificate
from ``make_dev_cert``, in a browser that trusts that certificate alone, by its public
key's hash: no CA is installed, and any other certificate's error still stops a page.
``browser`` trusts nothing of ours, so it is refused there.

Without Chromium the tests are skipped with the reason, locally; under ``CI=true`` a
missing browser fails them (``.ci/run`` installs it). Screenshots go to
``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from payportal.tls import DevCert, make_dev_cert
from tests import artifacts
from tests.serve_process import free_port, serving

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
    # With TLS: plain HTTP on this address answers with a redirect to ``base``.
    http_redirect: str | None = None

    @property
    def tls(self) -> bool:
        return self.base.startswith("https://")


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


@contextlib.contextmanager
def _serve_stack(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """``payportal serve --seed-demo`` as ``make run`` (or ``make run-tls``) starts it."""
    env = dict(env or {})
    redirect = env.get("PAYPORTAL_HTTP_REDIRECT_PORT")
    with serving(workdir, env=env) as served:
        login = next(line for line in served.banner.splitlines() if "payer login" in line)
        email, _, password = login.split("payer login", 1)[1].strip().partition(" / ")
        yield Stack(
            base=served.base, sandbox=served.sandbox,
            mail_ui=served.inbox, payer_email=email.strip(),
            payer_password=password.strip(), log=served.log,
            http_redirect=f"http://127.0.0.1:{redirect}" if redirect else None,
        )  # fmt: skip
        _keep_inbox(served.inbox)
    output = served.output()
    assert "4242424242424242" not in output
    assert "4000000000000002" not in output


# Package scope: one server for every browser test, stopped when they are done rather
# than at the end of the whole run (it holds a Ray instance and its shards).
@pytest.fixture(scope="package")
def plain_stack(tmp_path_factory: pytest.TempPathFactory, chromium_path: str) -> Iterator[Stack]:
    with _serve_stack(tmp_path_factory.mktemp("serve")) as served:
        yield served


@pytest.fixture(scope="package")
def dev_cert(tmp_path_factory: pytest.TempPathFactory) -> DevCert:
    return make_dev_cert(tmp_path_factory.mktemp("tls"))


# Started only by the tests that ask for HTTPS, so the rest pay nothing for it.
@pytest.fixture(scope="package")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, chromium_path: str,
              dev_cert: DevCert) -> Iterator[Stack]:  # fmt: skip
    env = {"PAYPORTAL_TLS_CERT_FILE": str(dev_cert.cert_file),
           "PAYPORTAL_TLS_KEY_FILE": str(dev_cert.key_file),
           "PAYPORTAL_TLS_CA_FILE": str(dev_cert.ca_file),
           "PAYPORTAL_HTTP_REDIRECT_PORT": str(free_port())}  # fmt: skip
    with _serve_stack(tmp_path_factory.mktemp("serve-tls"), env) as served:
        yield served


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Stack:
    """The plain server, or with ``indirect`` parametrization "https" the TLS one."""
    scheme = getattr(request, "param", "http")
    assert scheme in ("http", "https"), scheme
    return request.getfixturevalue("tls_stack" if scheme == "https" else "plain_stack")


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


# One Playwright for both browsers: its sync API allows one instance per thread.
@pytest.fixture(scope="package")
def playwright(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as started:
        yield started


@contextlib.contextmanager
def _launch(playwright: Any, chromium_path: str, args: list[str]) -> Iterator[Any]:
    launched = playwright.chromium.launch(executable_path=chromium_path, args=args,
                                          headless=True)  # fmt: skip
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="package")
def browser(playwright: Any, chromium_path: str) -> Iterator[Any]:
    with _launch(playwright, chromium_path, CHROMIUM_ARGS) as launched:
        yield launched


def spki_sha256(cert_file: Path) -> str:
    """The base64 SHA-256 of a certificate's SubjectPublicKeyInfo, as Chromium's
    ``--ignore-certificate-errors-spki-list`` takes it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    public_key = x509.load_pem_x509_certificate(cert_file.read_bytes()).public_key()
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="package")
def tls_browser(playwright: Any, chromium_path: str, dev_cert: DevCert) -> Iterator[Any]:
    """A browser that trusts the development certificate and nothing else new."""
    trust = f"--ignore-certificate-errors-spki-list={spki_sha256(dev_cert.cert_file)}"
    with _launch(playwright, chromium_path, [*CHROMIUM_ARGS, trust]) as launched:
        yield launched


@pytest.fixture
def page(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh phone-sized browser context (its own cookies) and page, in the browser
    that trusts ``stack``'s certificate when it has one."""
    browser = request.getfixturevalue("tls_browser" if stack.tls else "browser")
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
