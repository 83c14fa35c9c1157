"""What `make run` does, end to end: `payportal serve --seed-demo` in a fresh directory
starts everything, prints where to go and working credentials, takes a real payment, and
stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

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


def _worker_of(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.headers["X-Payportal-Worker"])


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_seeds_the_demo_prints_where_to_go_and_takes_a_payment(
    tmp_path: Path, workers: int
) -> None:
    with serving(tmp_path, args=["--workers", str(workers)]) as served:
        text = served.banner
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
        after = _call("GET", f"{base}/v1/accounts/acct_demo_acme", **merchant)
        assert after["balance"]["outstanding"] == outstanding_minor - 1_000
    output = served.output()
    assert served.returncode == 0, output
    assert "payportal stopped" in output
    assert "4242424242424242" not in output
