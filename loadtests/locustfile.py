"""Locust load test of the API: each simulated user is a merchant back office working one
account of its own — reading the balance and invoices, previewing allocations and paying
small amounts with a saved card — so every request exercises the shards and the journal.

Loopback only. Start the system with the limits raised for one machine's worth of users,
then run the test (it prints per-endpoint RPS and percentiles; add --csv for files):

    PAYPORTAL_RATE_LIMITS_SCALE=1000 make run        # prints the merchant API key
    PAYPORTAL_LOADTEST_API_KEY=sk_... make loadtest  # 50 users, 1 minute by default

Settings: PAYPORTAL_LOADTEST_API_KEY (required), PAYPORTAL_LOADTEST_SANDBOX (default
http://127.0.0.1:8081, the sandbox processor that tokenizes the test card).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from urllib.parse import urlsplit

from locust import FastHttpUser, between, events, task
from locust.env import Environment

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# The contract's always-approving Visa test card: the sandbox turns it into a token, so the
# portal under test never sees the number.
TEST_CARD = "4242424242424242"


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS and not host.startswith("127."):
        raise SystemExit(f"load tests only target loopback addresses, not {host!r}")


@events.init.add_listener
def _check_target(environment: Environment, **_: object) -> None:
    _require_loopback(environment.host or "")
    _require_loopback(os.environ.get("PAYPORTAL_LOADTEST_SANDBOX", "http://127.0.0.1:8081"))
    if not os.environ.get("PAYPORTAL_LOADTEST_API_KEY"):
        raise SystemExit("set PAYPORTAL_LOADTEST_API_KEY to the merchant key make run printed")


class MerchantBackOffice(FastHttpUser):
    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {os.environ['PAYPORTAL_LOADTEST_API_KEY']}"}
        account = self._post("/v1/accounts", {
            "name": f"Load {uuid.uuid4().hex[:8]}", "email": "load@example.com",
            "currency": "USD",
        })  # fmt: skip
        self.account_id = account["id"]
        today = dt.date.today()
        for n in range(3):
            due = (today + dt.timedelta(days=30 * n)).isoformat()
            self._post(f"/v1/accounts/{self.account_id}/invoices",
                       {"amount": 1_000_000, "due_date": due})  # fmt: skip
        sandbox = os.environ.get("PAYPORTAL_LOADTEST_SANDBOX", "http://127.0.0.1:8081")
        with self.rest("POST", f"{sandbox}/v1/tokens", json={
            "type": "card", "number": TEST_CARD, "exp_month": 12,
            "exp_year": today.year + 5, "cvc": "123",
        }) as response:  # fmt: skip
            card = response.js
        method = self._post(f"/v1/accounts/{self.account_id}/payment_methods", {
            "token": card["token"], "brand": card["brand"], "last4": card["last4"],
            "exp_month": card["exp_month"], "exp_year": card["exp_year"],
        })  # fmt: skip
        self.payment_method = method["id"]

    def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        with self.rest("POST", path, json=body, headers=headers) as response:
            if response.status_code != 200:
                response.failure(f"{path}: {response.status_code} {response.text[:200]}")
                raise SystemExit(f"set-up failed at {path}")
            return dict(response.js)

    @task(5)
    def balance(self) -> None:
        self.client.get(f"/v1/accounts/{self.account_id}", headers=self.headers,
                        name="/v1/accounts/{id}")  # fmt: skip

    @task(3)
    def open_invoices(self) -> None:
        self.client.get(f"/v1/accounts/{self.account_id}/invoices?status=open",
                        headers=self.headers, name="/v1/accounts/{id}/invoices")  # fmt: skip

    @task(2)
    def preview(self) -> None:
        self.client.get(
            f"/v1/payments/preview_allocation?account={self.account_id}&amount=2500",
            headers=self.headers, name="/v1/payments/preview_allocation",
        )  # fmt: skip

    @task(2)
    def pay(self) -> None:
        with self.rest("POST", "/v1/payments", headers={
            **self.headers, "Idempotency-Key": uuid.uuid4().hex,
        }, json={
            "account": self.account_id, "amount": 100, "currency": "USD",
            "payment_method": self.payment_method,
        }) as response:  # fmt: skip
            if response.status_code == 200 and response.js.get("status") != "succeeded":
                response.failure(f"payment ended {response.js.get('status')}")

    @task(1)
    def history(self) -> None:
        self.client.get(f"/v1/payments?account={self.account_id}&limit=10",
                        headers=self.headers, name="/v1/payments")  # fmt: skip
