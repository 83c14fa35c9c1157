"""Mail as processes of its own: ``payportal mail`` (the outbox sender) and ``payportal
mail-catcher`` (the built-in catcher and its inbox), and how ``serve`` starts them.

Why processes: rendering an email, the SMTP client's work and the SMTP server's work
cost CPU per message; in ``serve``'s own event loop that was taken from the request path.
A real mail server is another process in production, so the catcher is one here too,
and the sender runs beside the front door rather than in it.

``serve`` starts them as children (``payportal.children``): the catcher first when
``PAYPORTAL_SMTP_URL`` is unset, then the sender, which delivers to the SMTP URL or to
that catcher; it stops them with SIGTERM on its way out, and each asks to be ended if
``serve`` dies without stopping it. If the catcher cannot listen (a port is taken),
``serve`` still starts: no sender runs, the emails wait in the outbox, and the banner
says why. With ``--no-mail`` neither runs and emails likewise wait; ``payportal mail``
on its own sends them later. One sender is the default; more could run, since rows are
leased.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Final

from payportal.children import Child, ChildFailed, die_with_parent, start_child
from payportal.config import Settings

__all__ = ["run_sender_process", "start_mail_processes"]

log = logging.getLogger(__name__)

# On SIGTERM the round in progress finishes (so what it sent is marked sent, not resent
# later) for at most this long; ``serve`` kills a child that takes longer than 10 s.
STOP_GRACE_S: Final = 5.0


async def start_mail_processes(settings: Settings, *, mail: bool) -> tuple[list[str], list[Child]]:
    """Start what ``settings`` and ``--mail/--no-mail`` ask for: (banner lines, children)."""
    if not mail:
        return ["mail         not sent (--no-mail): emails wait in the outbox until "
                "`payportal mail` runs"], []  # fmt: skip
    lines: list[str] = []
    children: list[Child] = []
    smtp_port, ui_port = settings.mail_catcher_port, settings.mail_ui_port
    if settings.smtp_url is None:
        try:
            catcher = await start_child(
                "mail-catcher",
                [sys.executable, "-m", "payportal", "mail-catcher",
                 "--smtp-port", str(smtp_port), "--ui-port", str(ui_port)],
                port=smtp_port,  # bound after the inbox: accepting means both are up
            )  # fmt: skip
        except ChildFailed as error:
            log.warning("mail catcher did not start: %s", error)
            return [f"mail         catcher could not listen on 127.0.0.1:{smtp_port}/{ui_port} "
                    f"({error}); emails wait in the outbox (PAYPORTAL_MAIL_CATCHER_PORT, "
                    "PAYPORTAL_MAIL_UI_PORT move it)"], []  # fmt: skip
        children.append(catcher)
        lines.append(f"mail inbox   http://127.0.0.1:{ui_port}/  (every email the portal sends; "
                     f"SMTP catcher on 127.0.0.1:{smtp_port}, pid {catcher.pid})")  # fmt: skip
    from .sender import smtp_target

    target = smtp_target(settings.smtp_url, catcher_port=smtp_port,
                         ca_file=settings.smtp_ca_file)  # fmt: skip
    sender = await start_child(
        "mail",
        [sys.executable, "-m", "payportal", "mail", "--catcher-port", str(smtp_port),
         "--public-url", settings.public_url],
        port=None,  # it listens on nothing
    )  # fmt: skip
    children.append(sender)
    where = "the catcher" if settings.smtp_url is None else f"{target!r}"
    lines.append(f"mail sender  the outbox sent to {where}  (payportal mail, pid {sender.pid})")
    return lines, children


def run_sender_process(
    settings: Settings, *, catcher_port: int | None = None, public_url: str | None = None
) -> None:
    """``payportal mail``: the outbox sender in this process, on uvloop, until SIGINT or
    SIGTERM. It delivers to ``PAYPORTAL_SMTP_URL``, else to the catcher on this machine."""
    die_with_parent()
    with contextlib.suppress(ImportError):  # uvloop is a dependency; Windows lacks it
        import uvloop

        uvloop.install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_send_until_stopped(settings, catcher_port, public_url))


async def _send_until_stopped(
    settings: Settings, catcher_port: int | None, public_url: str | None
) -> None:
    from payportal.gc_tuning import tune_for_throughput
    from payportal.persistence._engine import create_engine_for
    from payportal.persistence.sealing import keep_fresh, open_keyring

    from ._outbox import configure_public_url
    from .sender import OutboxSender, smtp_target

    public_url = public_url or settings.public_url
    configure_public_url(public_url)
    target = smtp_target(settings.smtp_url, ca_file=settings.smtp_ca_file,
                         catcher_port=catcher_port or settings.mail_catcher_port)  # fmt: skip
    # One connection for the rounds, one for the odd concurrent read; LISTEN has its own.
    engine = create_engine_for(settings.database_url, pool_size=2)
    keyring = await open_keyring(engine, settings.resolve_data_keys())
    assert keyring is not None
    refresh = asyncio.create_task(keep_fresh(keyring, engine), name="data-keys-refresh")
    sender = OutboxSender(engine, smtp=target, base_url=public_url)
    print(f"mail sender: the outbox sent to {target!r}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    running = asyncio.create_task(sender.run())
    tune_for_throughput()
    try:
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        sender.stop()
        try:
            await asyncio.wait_for(running, STOP_GRACE_S)  # cancelled when it runs out
        except TimeoutError:
            log.warning("mail sender: stopped mid-round; its rows are sent again later")
    finally:
        refresh.cancel()
        await sender.close()
        await engine.dispose()
