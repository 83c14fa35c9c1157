"""Where sign-in sends a payer next: only a path on this site, however a browser would read
it. A table of hostile ``next`` values (as the handler gets them, once decoded by aiohttp)
must all become ``/``; paths of the portal itself are kept as they are."""

from __future__ import annotations

import pytest

from payportal.web.pages_auth import _safe_next


@pytest.mark.parametrize("hostile", [
    "/\t/evil.example",  # /%09/evil.example: browsers drop the tab
    "/\n/evil.example", "/\r/evil.example", "/\r\n/evil.example",
    "/%09/evil.example", "/%0a/evil.example", "/%0D%0A/evil.example",
    "/\x0b/evil.example", "/\x00/evil.example", "/%00/evil.example", "/\x7f/evil",
    "/\\evil.example", "/%5Cevil.example", "/%5cevil.example", "\\\\evil.example",
    "//evil.example", "///evil.example", "/%2F/evil.example", "/%2f%2fevil.example",
    " //evil.example", "\t//evil.example", "/ /evil.example", "/\u3000/evil.example",
    "/\uff0f/evil.example", "/ok\u202e", "https://evil.example", "http:evil.example",
    "https:/evil.example", "javascript:alert(1)", "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>", "evil.example", "./evil", "",
    "/" + "a" * 600,
])  # fmt: skip
def test_a_hostile_next_becomes_the_dashboard(hostile: str) -> None:
    assert _safe_next(hostile) == "/"


@pytest.mark.parametrize("value", [None, 42, b"/payments", ["/payments"]])
def test_a_next_that_is_not_text_becomes_the_dashboard(value: object) -> None:
    assert _safe_next(value) == "/"


@pytest.mark.parametrize("path", [
    "/", "/payments", "/payments/pay_01JDEF", "/payments?status=succeeded&invoice=inv_1",
    "/pay?account=acct_demo_acme#top", "/statements?from=2026-01-01&to=2026-01-31",
    "/security?done=password", "/payments?q=a%2Bb",
])  # fmt: skip
def test_a_path_of_the_portal_is_kept(path: str) -> None:
    assert _safe_next(path) == path
