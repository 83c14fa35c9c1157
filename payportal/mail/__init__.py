"""Emails: the outbox, the templates, the sender worker and the built-in mail catcher.

- ``enqueue_email(connection, dedupe_key=, to=, template=, context=)`` renders
  ``templates/{template}.subject.txt``, ``.txt`` and ``.html`` and writes one outbox row
  in the caller's transaction (a repeated ``dedupe_key`` writes nothing, returns False).
- Payment confirmations and decline notices are written by the journal's group commit
  itself (``payportal.persistence._rows``) and rendered here when sent
  (``payportal.mail.payments``).
- ``payportal.mail.sender``: the worker that delivers due rows over SMTP (aiosmtplib),
  in batches over a kept connection; ``_mime`` writes its messages.
- ``payportal.mail.catcher``: an aiosmtpd SMTP server and an inbox page for development.
- ``payportal.mail.service``: both as processes of their own (``payportal mail``,
  ``payportal mail-catcher``), and how ``serve`` starts them.
"""

from ._outbox import (
    KIND_EMAIL,
    OutboxEmail,
    configure_public_url,
    decode_email,
    encode_email,
    enqueue_email,
    public_url,
)
from ._render import RenderedEmail, render_email

__all__ = [
    "KIND_EMAIL",
    "OutboxEmail",
    "RenderedEmail",
    "configure_public_url",
    "decode_email",
    "encode_email",
    "enqueue_email",
    "public_url",
    "render_email",
]
