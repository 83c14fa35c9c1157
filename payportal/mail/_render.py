"""Rendering an email from its three Jinja2 templates: subject, plain text and HTML.

The model: a template named ``t`` is three files in ``payportal/mail/templates``:
``t.subject.txt`` (one line), ``t.txt`` and ``t.html``. HTML is autoescaped; the text
parts are not (they are never interpreted as markup). Undefined variables raise, so a
template and its caller cannot drift apart silently. ``public_url`` is always in the
context, for links. Money is passed as integer minor units and printed with the
``money`` filter (``{{ amount_minor|money(currency) }}``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jinja2
import msgspec

from payportal.engine.money import CURRENCY_EXPONENTS

__all__ = ["RenderedEmail", "format_money", "render_email"]


def format_money(amount_minor: int, currency: str) -> str:
    """For people: "1,819.50 USD", with integer arithmetic only."""
    exponent = CURRENCY_EXPONENTS[currency]
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole:,} {currency}"
    return f"{sign}{whole:,}.{fraction:0{exponent}d} {currency}"


class RenderedEmail(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    text: str
    html: str


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("payportal.mail", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                            default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Package files, not edited while running: no stat() of each template per render.
        auto_reload=False,
    )  # fmt: skip
    environment.filters["money"] = format_money
    return environment


def render_email(template: str, context: Mapping[str, Any], *, public_url: str) -> RenderedEmail:
    """Render ``template``'s subject, text and HTML with ``context`` plus ``public_url``."""
    environment = _environment()
    values = {**context, "public_url": public_url.rstrip("/")}
    subject = environment.get_template(f"{template}.subject.txt").render(values)
    # A header is one line: a newline in a subject would be a header injection.
    subject = " ".join(subject.split())
    assert subject, template
    return RenderedEmail(
        subject=subject,
        text=environment.get_template(f"{template}.txt").render(values),
        html=environment.get_template(f"{template}.html").render(values),
    )
