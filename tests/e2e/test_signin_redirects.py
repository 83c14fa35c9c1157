"""Sign-in's ``next`` through the portal (SQLite and PostgreSQL): whatever a hostile link
puts there, the answer is a 303 whose Location, read the way a browser reads it, stays on
this site, including values with control characters that aiohttp would refuse to send.
Harness: ``test_portal_security.portal``."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from yarl import URL

from .test_portal_security import Portal, _email, portal

__all__ = ["portal"]

# As they appear in a link's query string (percent-encoded once, or not at all).
HOSTILE = [
    "/%09/evil.example", "/%0A/evil.example", "/%0D/evil.example", "/%5Cevil.example",
    "/%5C%5Cevil.example", "%5C%5Cevil.example", "//evil.example", "%2F%2Fevil.example",
    "/%2F/evil.example", "https://evil.example", "https:evil.example", "%20//evil.example",
    "javascript:alert(1)", "/%2509/evil.example", "/%E3%80%80/evil.example",
]  # fmt: skip
# Control characters aiohttp refuses in a header: the connection used to be dropped.
CONTROL = ["/%0a", "/%0b", "/%00", "/x%0d%0aSet-Cookie:%20planted=1", "/%7F"]
_TABS_AND_NEWLINES = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))


def _as_a_browser_reads(base: str, location: str) -> tuple[str, str]:
    """(scheme, host) a browser goes to: WHATWG URL parsing trims leading and trailing C0
    controls and spaces, removes tabs and newlines, and reads a backslash as a slash."""
    cleaned = _TABS_AND_NEWLINES.sub("", location.strip(_C0_AND_SPACE)).replace("\\", "/")
    parts = urlsplit(urljoin(base, cleaned))
    return parts.scheme, parts.netloc


async def _signed_in(portal: Portal) -> None:
    email = _email()
    await portal.payer(email)
    assert (await portal.sign_in(email)).status == 303


async def test_a_signed_in_payer_is_sent_only_to_a_path_on_this_site(portal: Portal) -> None:
    await _signed_in(portal)
    base = str(portal.client.make_url("/"))
    here = _as_a_browser_reads(base, "/")
    for value in HOSTILE:
        response = await portal.client.get(URL(f"/signin?next={value}", encoded=True),
                                           allow_redirects=False)  # fmt: skip
        assert response.status == 303, value
        location = response.headers["Location"]
        assert _as_a_browser_reads(base, location) == here, (value, location)
        assert location == "/", (value, location)
    kept = await portal.client.get("/signin?next=%2Fpayments%3Fstatus%3Dsucceeded",
                                   allow_redirects=False)  # fmt: skip
    assert kept.status == 303
    assert kept.headers["Location"] == "/payments?status=succeeded"


async def test_a_next_with_control_characters_is_a_303_to_the_dashboard(portal: Portal) -> None:
    await _signed_in(portal)
    for value in CONTROL:
        response = await portal.client.get(URL(f"/signin?next={value}", encoded=True),
                                           allow_redirects=False)  # fmt: skip
        assert response.status == 303, value
        assert response.headers["Location"] == "/", value
        assert "planted" not in response.headers.get("Set-Cookie", "")


async def test_signing_in_with_a_hostile_next_lands_on_the_dashboard(portal: Portal) -> None:
    email = _email()
    await portal.payer(email)
    base = str(portal.client.make_url("/"))
    for value in ["/\t/evil.example", "/\\evil.example", "//evil.example", "/\n/evil.example",
                  "/\x0b", "/\x00", "https://evil.example"]:  # fmt: skip
        browser = await portal.browser()
        token = await portal.token("/signin", browser)
        response = await browser.post("/signin", data={
            "csrf_token": token, "email": email, "password": "correct horse battery",
            "next": value,
        }, allow_redirects=False)  # fmt: skip
        assert response.status == 303, value
        assert response.headers["Location"] == "/", value
        assert _as_a_browser_reads(base, response.headers["Location"])[1] == urlsplit(base).netloc
