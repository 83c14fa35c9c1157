"""Mail in ``payportal serve``: the catcher (when no SMTP server is configured) and the
sender worker, started together and stopped together.

One process (``serve``'s worker 0) runs the sender; more could, since rows are leased.
Without ``PAYPORTAL_SMTP_URL`` the sender delivers to the built-in catcher. If the catcher
cannot listen (its port is taken), ``serve`` still starts: no sender runs, the emails
wait in the outbox, and the banner says why. With ``--no-mail`` and no SMTP URL neither
runs, and emails likewise wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from payportal.config import Settings

from ._outbox import configure_public_url
from .catcher import MailCatcher, start_catcher
from .sender import OutboxSender, smtp_target

__all__ = ["MailService", "start_mail"]

log = logging.getLogger(__name__)


class MailService:
    def __init__(
        self, banner: list[str], catcher: MailCatcher | None, sender: OutboxSender | None
    ) -> None:
        self.banner = banner
        self.catcher = catcher
        self.sender = sender
        self._task = asyncio.create_task(sender.run()) if sender is not None else None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.catcher is not None:
            await self.catcher.close()


async def start_mail(settings: Settings, engine: AsyncEngine, *, catcher: bool) -> MailService:
    """Start what ``settings`` and the ``--mail`` flag ask for; ``banner`` says what ran."""
    configure_public_url(settings.public_url)
    if settings.smtp_url is not None:
        target = smtp_target(settings.smtp_url)
        sender = OutboxSender(engine, smtp=target, base_url=settings.public_url)
        return MailService([f"mail         emails sent to {target!r}"], None, sender)
    if not catcher:
        return MailService(
            ["mail         not sent (--no-mail and no PAYPORTAL_SMTP_URL): emails wait in "
             "the outbox"], None, None,
        )  # fmt: skip
    try:
        running = await start_catcher(
            smtp_port=settings.mail_catcher_port, ui_port=settings.mail_ui_port
        )
    except OSError as error:
        log.warning("mail catcher did not start: %s", error)
        return MailService(
            [f"mail         catcher could not listen on 127.0.0.1:{settings.mail_catcher_port}"
             f"/{settings.mail_ui_port} ({error.strerror or error}); emails wait in the "
             "outbox (PAYPORTAL_MAIL_CATCHER_PORT, PAYPORTAL_MAIL_UI_PORT move it)"],
            None, None,
        )  # fmt: skip
    sender = OutboxSender(
        engine, smtp=smtp_target(None, catcher_port=running.smtp_port),
        base_url=settings.public_url,
    )  # fmt: skip
    banner = [
        f"mail inbox   http://127.0.0.1:{running.ui_port}/  (every email the portal sends; "
        f"SMTP catcher on 127.0.0.1:{running.smtp_port})"
    ]
    return MailService(banner, running, sender)
