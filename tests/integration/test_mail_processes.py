"""Mail runs in processes of its own, as ``serve`` starts them: ``payportal mail-catcher``
and ``payportal mail`` deliver a committed email to the inbox page, say where in the
banner, and are gone once stopped; with an SMTP URL only the sender runs; a catcher port
already taken, or ``--no-mail``, leaves the emails waiting in the outbox and the banner
says so; ``mail-catcher`` run by hand on a taken port says so in one line. Checked with
real child processes on a SQLite database and free loopback ports."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa

from payportal.children import Child, stop_children
from payportal.config import load_settings
from payportal.mail import enqueue_email
from payportal.mail.catcher import MailCatcher, start_catcher
from payportal.mail.service import start_mail_processes
from payportal.persistence import migrate, tables
from payportal.persistence._engine import create_engine_for
from payportal.persistence.sealing import open_keyring

# Generous: child processes import payportal first, on a machine others share.
WAIT_S = 60.0
STOP_S = 10.0
CONTEXT: dict[str, Any] = {
    "account_name": "A", "amount_minor": 100, "currency": "USD", "method": None,
    "hard": False, "reason": "Soft.", "advice": "Wait.", "payment_id": "pay_x",
    "outstanding_minor": 0,
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite database and free mail ports, in the environment the children
    inherit; yields the database URL."""
    url = f"sqlite+aiosqlite:///{tmp_path}/var/payportal.db"
    migrate(url)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAYPORTAL_DATABASE_URL", url)
    monkeypatch.setenv("PAYPORTAL_MAIL_CATCHER_PORT", str(_free_port()))
    monkeypatch.setenv("PAYPORTAL_MAIL_UI_PORT", str(_free_port()))
    monkeypatch.delenv("PAYPORTAL_SMTP_URL", raising=False)
    return url


@pytest.fixture
async def stopped_at_the_end() -> AsyncIterator[list[Child]]:
    children: list[Child] = []
    yield children
    await stop_children(children, timeout_s=STOP_S)


async def _enqueue(url: str, key: str) -> None:
    engine = create_engine_for(url)
    await open_keyring(engine)
    try:
        async with engine.begin() as connection:
            await enqueue_email(connection, dedupe_key=key, to="ada@example.com",
                                template="payment_declined", context=CONTEXT)  # fmt: skip
    finally:
        await engine.dispose()


async def _pending(url: str) -> int:
    engine = create_engine_for(url)
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(
                sa.select(sa.func.count()).select_from(tables.outbox)
                .where(tables.outbox.c.sent_at.is_(None))
            )).scalar_one())  # fmt: skip
    finally:
        await engine.dispose()


def _inbox(ui_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/messages", timeout=10) as r:
        return dict(json.loads(r.read()))


async def _until(condition: Any, failure: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.1)


async def test_the_catcher_and_the_sender_run_as_children_deliver_and_are_gone_when_stopped(
    deployment: str, stopped_at_the_end: list[Child]
) -> None:
    settings = load_settings()

    lines, children = await start_mail_processes(settings, mail=True)
    stopped_at_the_end.extend(children)

    assert [c.name for c in children] == ["mail-catcher", "mail"]
    banner = "\n".join(lines)
    assert f"http://127.0.0.1:{settings.mail_ui_port}/" in banner
    assert f"127.0.0.1:{settings.mail_catcher_port}" in banner
    for child in children:
        assert f"pid {child.pid}" in banner
    await _enqueue(deployment, "children:1")

    async def delivered() -> bool:
        return len(_inbox(settings.mail_ui_port)["messages"]) == 1

    await _until(delivered, "the email did not reach the catcher's inbox")
    [message] = _inbox(settings.mail_ui_port)["messages"]
    assert message["to"] == "ada@example.com"

    killed = await stop_children(children, timeout_s=STOP_S)

    assert killed == [], "both stopped on SIGTERM"
    for child in children:
        assert child.process.returncode is not None
        assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() == "zombie"


async def test_with_an_smtp_url_only_the_sender_runs(
    deployment: str, stopped_at_the_end: list[Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    server: MailCatcher = await start_catcher(smtp_port=0, ui_port=None)
    try:
        monkeypatch.setenv("PAYPORTAL_SMTP_URL", f"smtp://127.0.0.1:{server.smtp_port}")
        settings = load_settings()

        lines, children = await start_mail_processes(settings, mail=True)
        stopped_at_the_end.extend(children)
        await _enqueue(deployment, "smtp:1")

        async def delivered() -> bool:
            return server.inbox.deliveries == 1

        await _until(delivered, "the email did not reach the SMTP server")
    finally:
        await stop_children(stopped_at_the_end, timeout_s=STOP_S)
        await server.close()

    assert [c.name for c in children] == ["mail"]
    assert f"127.0.0.1:{server.smtp_port}" in "\n".join(lines)
    assert "inbox" not in "\n".join(lines)


async def test_a_taken_catcher_port_leaves_the_emails_waiting_and_says_so(
    deployment: str, stopped_at_the_end: list[Child]
) -> None:
    settings = load_settings()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", settings.mail_catcher_port))
    squatter.listen()
    try:
        lines, children = await start_mail_processes(settings, mail=True)
        stopped_at_the_end.extend(children)
    finally:
        squatter.close()

    assert children == []
    [line] = lines
    assert f"could not listen on 127.0.0.1:{settings.mail_catcher_port}" in line
    assert "emails wait in the outbox" in line
    assert "PAYPORTAL_MAIL_CATCHER_PORT" in line


async def test_no_mail_starts_nothing_and_the_emails_wait(
    deployment: str, stopped_at_the_end: list[Child]
) -> None:
    settings = load_settings()

    lines, children = await start_mail_processes(settings, mail=False)
    await _enqueue(deployment, "nomail:1")

    assert children == []
    assert "emails wait in the outbox" in lines[0]
    assert await _pending(deployment) == 1


def test_mail_catcher_on_a_taken_port_says_so_in_one_line_and_exits_1(
    deployment: str,
) -> None:
    settings = load_settings()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", settings.mail_ui_port))
    squatter.listen()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "payportal", "mail-catcher"],
            capture_output=True, text=True, timeout=WAIT_S, check=False,
        )  # fmt: skip
    finally:
        squatter.close()

    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("payportal mail-catcher: ")
    assert str(settings.mail_ui_port) in line
    assert "address already in use" in line
