"""The sandbox issuer's 3-D Secure challenge page, and the page it leaves behind.

Served from the sandbox's own origin, as a real issuer's page is, and framable only by
the pages the card fields may be framed by. One form with two buttons, so it works by
keyboard alone and without script: Tab to a button, Enter. Nothing secret is shown: the
amount and the card's brand and last 4, as an issuer's page shows them.
"""

from __future__ import annotations

from html import escape
from string import Template
from typing import Final

from payportal.engine import format_minor

__all__ = ["render_challenge", "render_challenge_done"]

_STYLE: Final = (
    "body{font:16px system-ui,sans-serif;margin:0;padding:12px;color:#111;background:#fff}"
    "h1{font-size:1.15rem;margin:0 0 8px}p{margin:0 0 12px}"
    ".actions{display:flex;flex-wrap:wrap;gap:8px}"
    "button{font:inherit;padding:10px 14px;min-height:44px;border-radius:6px;"
    "border:2px solid #1d4ed8;cursor:pointer}"
    "button.primary{background:#1d4ed8;color:#fff}button.secondary{background:#fff;color:#1d4ed8}"
    "button:focus-visible{outline:3px solid #f59e0b;outline-offset:2px}"
)

_PAGE: Final = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Confirm this payment</title>
<style nonce="$nonce">$style</style>
</head>
<body>
<main>
<h1>Confirm this payment with your bank</h1>
<p>Sandbox issuer: $amount on your $brand card ending in $last4.</p>
<form method="post">
<div class="actions">
<button class="primary" type="submit" name="result" value="complete" autofocus>
Complete authentication</button>
<button class="secondary" type="submit" name="result" value="fail">Fail authentication</button>
</div>
</form>
</main>
</body>
</html>
""")

_DONE: Final = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Authentication $outcome</title>
<style nonce="$nonce">$style</style>
</head>
<body>
<main>
<h1 role="status">Authentication $outcome</h1>
<p>You can return to the payment; its status updates by itself.</p>
</main>
</body>
</html>
""")


def render_challenge(
    nonce: str, *, amount_minor: int, currency: str, brand: str, last4: str
) -> str:
    return _PAGE.substitute(
        nonce=nonce, style=_STYLE, amount=escape(format_minor(amount_minor, currency)),
        brand=escape(brand.capitalize()), last4=escape(last4),
    )  # fmt: skip


def render_challenge_done(nonce: str, *, completed: bool) -> str:
    # Only the payer's part: a decline after authenticating is the payment's news, told
    # by the portal, not the issuer's.
    return _DONE.substitute(nonce=nonce, style=_STYLE,
                            outcome="complete" if completed else "failed")  # fmt: skip
