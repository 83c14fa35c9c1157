"""What `make run` does, end to end: `payportal serve --seed-demo` in a fresh directory
starts everything, prints where to go and working credentials, takes a real payment whose
confirmation reaches the mail catcher's inbox, and stops cleanly on Ctrl-C, its mail
processes (catcher and sender, children of its own) gone with it."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.serve_process import serving

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _call(method: str, url: str, body: dict[str, Any] | None = None, **headers: str) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# The confirmation passes projection, the sender's next look (1 s on SQLite) and SMTP:
# seconds; generous for a machine others share.
MAIL_WAIT_S = 60.0
# The balance feed brings another process's writes within 50 ms; generous for a busy box.
FEED_CATCH_UP_S = 5.0


def _mail_pids(banner: str) -> dict[str, int]:
    """The mail processes serve says it started: {"mail-catcher": pid, "mail": pid}."""
    catcher = re.search(r"mail inbox .*\(.*pid (\d+)\)", banner)
    sender = re.search(r"mail sender .*\(payportal mail, pid (\d+)\)", banner)
    assert catcher is not None, banner
    assert sender is not None, banner
    return {"mail-catcher": int(catcher.group(1)), "mail": int(sender.group(1))}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _worker_of(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.headers["X-Payportal-Worker"])


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_seeds_the_demo_prints_where_to_go_and_takes_a_payment(
    tmp_path: Path, workers: int
) -> None:
    # No billing run: its invoices would change the balance this test reads between reads.
    with serving(tmp_path, args=["--workers", str(workers)],
                 env={"PAYPORTAL_BILLING_INTERVAL_S": "0"}) as served:  # fmt: skip
        text = served.banner
        mail_pids = _mail_pids(text)
        assert f"{served.inbox}/" in text, text
        children = {c.pid for c in psutil.Process(served.pid).children()}
        assert children >= set(mail_pids.values()), "the mail processes are serve's children"
        port, sandbox_port = served.port, served.sandbox_port
        assert f"http://127.0.0.1:{port}" in text, text
        api_key = re.search(r"API key\s+(sk_\S+)", text)
        payer = re.search(r"payer login\s+(\S+) / (\S+)", text)
        assert api_key is not None, text
        assert payer is not None, text
        assert (tmp_path / "var" / "payportal.db").exists()

        base = f"http://127.0.0.1:{port}"
        merchant = {"Authorization": f"Bearer {api_key.group(1)}"}
        assert _call("GET", f"{base}/readyz")["status"] == "ok"
        # Each request is a new connection; the kernel spreads them over the processes.
        seen = {_worker_of(f"{base}/healthz") for _ in range(40)}
        assert seen == {str(n) for n in range(workers)}
        accounts = _call("GET", f"{base}/v1/accounts", **merchant)["data"]
        assert {a["id"] for a in accounts} >= {"acct_demo_acme", "acct_demo_globex"}
        session = _call(
            "POST", f"{base}/v1/payer/sessions",
            {"email": payer.group(1), "password": payer.group(2)},
        )  # fmt: skip
        assert session["token"].startswith("pt_")

        card = _call(
            "POST", f"http://127.0.0.1:{sandbox_port}/v1/tokens",
            {"type": "card", "number": "4242424242424242", "exp_month": 12,
             "exp_year": 2035, "cvc": "123"},
        )  # fmt: skip
        acme = next(a for a in accounts if a["id"] == "acct_demo_acme")
        outstanding_minor = acme["balance"]["outstanding"]
        payment = _call(
            "POST", f"{base}/v1/payments",
            {"account": "acct_demo_acme", "amount": 1_000, "currency": "USD",
             "token": card["token"]},
            Authorization=f"Bearer {session['token']}", Idempotency_Key="smoke-1",
        )  # fmt: skip
        assert payment["status"] == "succeeded"
        # Another process learns of the payment through its shard's balance feed, within
        # the feed's interval (actors/feed.py): with several workers a read is exact
        # once that has passed, and never shows a balance that was not committed.
        deadline = time.monotonic() + FEED_CATCH_UP_S
        while True:
            after = _call("GET", f"{base}/v1/accounts/acct_demo_acme", **merchant)
            if after["balance"]["outstanding"] != outstanding_minor or workers == 1:
                break
            assert time.monotonic() < deadline, "the payment never showed in the balance"
            time.sleep(0.05)
        assert after["balance"]["outstanding"] == outstanding_minor - 1_000

        deadline = time.monotonic() + MAIL_WAIT_S
        while not (received := [m for m in _call("GET", f"{served.inbox}/api/messages")["messages"]
                                if payment["id"] in m["text"]]):  # fmt: skip
            assert time.monotonic() < deadline, "no confirmation in the inbox"
            time.sleep(0.2)
        assert received[0]["subject"] == "Payment received: 10.00 USD"
    output = served.output()
    assert served.returncode == 0, output
    assert "payportal stopped" in output
    for name, pid in mail_pids.items():
        assert _gone(pid), f"{name} (pid {pid}) outlived serve"
    assert "4242424242424242" not in output
