"""The email templates say the right thing safely: money with its currency, people's
names escaped in HTML, one-line subjects, plain-word decline reasons that differ for hard,
soft, technical and exhausted declines, and a missing template variable is an error, not
a blank; checked by rendering the real templates."""

from __future__ import annotations

import jinja2
import pytest

from payportal.mail import render_email
from payportal.mail._render import format_money
from payportal.mail.payments import PaymentNotice, decline_wording

SUCCEEDED = {
    "account_name": "Ada <img src=x onerror=alert(1)>", "payment_id": "pay_1",
    "amount_minor": 123_456, "currency": "USD", "method": {"brand": "Visa", "last4": "4242"},
    "outstanding_minor": 0, "credit_minor": 544, "paid_on": "2 December 2026",
    "allocations": [{"invoice_id": "inv_1", "invoice_number": "INV-1", "amount_minor": 122_912}],
    "unapplied_minor": 544, "description": "Plan <b>Pro</b> & \"support\"",
}  # fmt: skip


def _notice(**fields: object) -> PaymentNotice:
    base: dict[str, object] = {
        "account_id": "a", "payment_id": "p", "version": 3, "at_ms": 0, "amount_minor": 100,
        "currency": "USD", "method_id": "pm",
    }  # fmt: skip
    return PaymentNotice(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount_minor", "currency", "shown"),
    [(181_950, "USD", "1,819.50 USD"), (5, "EUR", "0.05 EUR"), (1_234_567, "JPY", "1,234,567 JPY"),
     (1_234, "BHD", "1.234 BHD")],
)  # fmt: skip
def test_money_is_shown_in_major_units_with_grouping_and_currency(
    amount_minor: int, currency: str, shown: str
) -> None:
    assert format_money(amount_minor, currency) == shown


def test_the_confirmation_escapes_names_in_html_and_links_to_receipt_and_statements() -> None:
    rendered = render_email("payment_succeeded", SUCCEEDED, public_url="https://p.example/")

    assert "<img" not in rendered.html
    assert "Ada &lt;img src=x onerror=alert(1)&gt;" in rendered.html
    assert "Ada <img src=x onerror=alert(1)>" in rendered.text  # plain text is not markup
    # The merchant's description of the payment, escaped the same way.
    assert "<b>" not in rendered.html
    assert "For:</strong> Plan &lt;b&gt;Pro&lt;/b&gt; &amp; &#34;support&#34;" in rendered.html
    assert 'For: Plan <b>Pro</b> & "support"' in rendered.text
    assert rendered.subject == "Payment received: 1,234.56 USD"
    for body in (rendered.text, rendered.html):
        assert "https://p.example/payments/pay_1" in body
        assert "https://p.example/statements" in body
        assert "1,229.12 USD" in body
        assert "5.44 USD" in body  # kept as credit


def test_a_subject_is_one_line_whatever_the_context_holds() -> None:
    declined = {**SUCCEEDED, "hard": False, "reason": "x\nBcc: someone@example.com", "advice": "y"}

    rendered = render_email("payment_declined", declined, public_url="https://p.example")

    assert "\n" not in rendered.subject
    assert rendered.subject == "Your payment of 1,234.56 USD did not go through"
    assert "For:</strong> Plan &lt;b&gt;Pro&lt;/b&gt;" in rendered.html
    assert "For: Plan <b>Pro</b>" in rendered.text


def test_a_missing_variable_fails_the_render() -> None:
    context = {k: v for k, v in SUCCEEDED.items() if k != "allocations"}

    with pytest.raises(jinja2.UndefinedError):
        render_email("payment_succeeded", context, public_url="https://p.example")


@pytest.mark.parametrize(
    ("fields", "hard", "reason", "advice"),
    [
        ({"status": "requires_payment_method", "decline_code": "do_not_honor",
          "decline_class": "hard"}, True,
         "Your bank declined the card and did not give a reason.", "contact your bank"),
        ({"status": "requires_payment_method", "decline_code": "expired_card",
          "decline_class": "hard"}, True, "The card has expired.", "another card"),
        ({"status": "failed", "decline_code": "insufficient_funds", "decline_class": "soft"},
         False, "not enough funds", "make sure funds are available"),
        ({"status": "failed", "decline_code": "processing_error",
          "decline_class": "technical"}, False, "could not reach the card network",
         "Nothing is wrong with your card"),
        ({"status": "failed", "exhausted": True, "decline_code": "insufficient_funds",
          "decline_class": "soft"}, False, "We tried the payment several times", "funds"),
        ({"status": "requires_payment_method", "decline_code": "stolen_card",
          "decline_class": "hard"}, True, "did not give a reason", "another card"),
    ],
)  # fmt: skip
def test_decline_wording_is_plain_and_differs_for_hard_and_soft(
    fields: dict[str, object], hard: bool, reason: str, advice: str
) -> None:
    got_hard, got_reason, got_advice = decline_wording(_notice(**fields))

    assert got_hard is hard
    assert reason in got_reason
    assert advice in got_advice
    assert "stolen" not in got_reason, "a notice never spells out a suspicion"
