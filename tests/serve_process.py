"""``payportal serve --seed-demo`` in a child process, as ``make run`` starts it, on free
loopback ports: for the end-to-end and browser tests that need the whole system."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests import artifacts

# Printed last by serve's banner: everything is up.
BANNER_END = "Ctrl-C stops everything"
# Ray and the shards start in seconds on an idle machine; a busy CI box needs longer.
STARTUP_S_MAX = 180
STOP_S_MAX = 60
# Settings that would point serve away from its embedded defaults.
_EXTERNAL = ("PAYPORTAL_DATABASE_URL", "PAYPORTAL_SMTP_URL", "PAYPORTAL_PUBLIC_URL",
             "PAYPORTAL_REDIS_URL", "PAYPORTAL_RAY_ADDRESS")  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    port: int
    sandbox_port: int
    mail_port: int
    mail_ui_port: int
    log: Path
    # Set when serve was given a certificate: the front door answers HTTPS only.
    tls: bool = False
    banner: str = ""
    pid: int = 0  # serve's process
    returncode: int | None = None  # set once serve has stopped

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def sandbox(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.sandbox_port}"

    @property
    def inbox(self) -> str:
        return f"http://127.0.0.1:{self.mail_ui_port}"

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def serving(
    workdir: Path, *, args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """Start serve in ``workdir``, wait for its banner, stop it with Ctrl-C (SIGINT) on
    leaving. Its output goes to a file: a pipe nobody reads would fill and stall it."""
    served = Served(port=free_port(), sandbox_port=free_port(), mail_port=free_port(),
                    mail_ui_port=free_port(), log=workdir / "serve.log",
                    tls="PAYPORTAL_TLS_CERT_FILE" in (env or {}))  # fmt: skip
    environment = {
        **os.environ,
        "PAYPORTAL_PORT": str(served.port),
        "PAYPORTAL_SANDBOX_PORT": str(served.sandbox_port),
        "PAYPORTAL_MAIL_CATCHER_PORT": str(served.mail_port),
        "PAYPORTAL_MAIL_UI_PORT": str(served.mail_ui_port),
        "PAYPORTAL_SHARDS": "2",
    }
    for name in _EXTERNAL:
        environment.pop(name, None)
    environment.update(env or {})
    with served.log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "payportal", "serve", "--seed-demo", *args],
            cwd=workdir, env=environment, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    served.pid = process.pid
    try:
        deadline = time.monotonic() + STARTUP_S_MAX
        while BANNER_END not in served.output():
            assert process.poll() is None, served.output()
            assert time.monotonic() < deadline, "serve did not start:\n" + served.output()
            time.sleep(0.2)
        served.banner = served.output()
        # The key the banner shows once is a needle of the final scan; the database is
        # read by it.
        for key in re.findall(r"\bsk_[A-Za-z0-9_-]+", served.banner):
            artifacts.remember_secret(key)
        if "PAYPORTAL_DATABASE_URL" not in environment:
            artifacts.register_database(workdir / "var" / "payportal.db")
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_S_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        served.returncode = process.returncode
        # serve's log after the banner (which shows the new API key once, on purpose).
        artifacts.keep(artifacts.CAPTURED, f"serve-{workdir.name}",
                       served.output()[len(served.banner):])
