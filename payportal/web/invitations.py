"""Inviting a payer who was added without a password: one email with a one-time link to
``/invite/{token}`` where they choose their password (``pages_auth``).

Called by ``POST /v1/accounts/{id}/payers``. One invitation per payer and account
(the outbox's dedupe key), however often the merchant repeats the call: the link row and
the email are written in one transaction, and a repeat writes neither.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from . import sessions

__all__ = ["invite_payer"]


class _AlreadyInvited(Exception):
    pass


async def invite_payer(
    engine: AsyncEngine, *, payer_id: str, email: str, account_id: str, account_name: str,
    public_url: str,
) -> bool:  # fmt: skip
    """Send the invitation; False when this payer was already invited to this account."""
    from payportal.mail import enqueue_email

    try:
        async with engine.begin() as connection:
            token = await sessions.issue_link(connection, "invite", payer_id)
            sent = await enqueue_email(
                connection, dedupe_key=f"payer_invitation:{payer_id}:{account_id}", to=email,
                template="payer_invitation",
                context={"account_name": account_name,
                         "invite_url": f"{public_url.rstrip('/')}/invite/{token}",
                         "expires_days": sessions.INVITE_TTL.days},
            )  # fmt: skip
            if not sent:
                raise _AlreadyInvited  # rolls the unused link back
    except _AlreadyInvited:
        return False
    return True
