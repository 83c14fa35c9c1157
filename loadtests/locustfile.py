"""Locust load test of the API in peak season: payers checking what they owe and paying it,
merchants' back offices, and the processor's callbacks arriving (the sandbox sends one
for every charge; optionally a user replays them, as processors do).

User classes (weights):
- ``Payer`` (8): a payer with an account of their own (opened by the merchant with an
  overdue, a due and a future invoice) and a login. Signs in, saves a card tokenized at
  the sandbox, then looks at the balance and the open invoices, the payment history,
  previews an allocation, pays part of what is owed or the whole oldest invoice, and
  downloads PDF and CSV statements.
- ``MerchantBackOffice`` (2): the merchant's API key working one account: balance and
  invoice reads, allocation previews, small payments with the saved card, history.
- ``CallbackReplayer`` (1, only with ``PAYPORTAL_LOADTEST_WEBHOOK_SECRET``): takes a
  payment that succeeded in this run, finds its charge at the sandbox and sends the
  portal a correctly signed ``charge.succeeded`` for it again under a new event id — a
  processor retrying — which must change nothing.

Loopback only. Against a running portal (the limits raised for one machine's users):

    PAYPORTAL_RATE_LIMITS_SCALE=1000 make run        # prints the merchant API key
    PAYPORTAL_LOADTEST_API_KEY=sk_... make loadtest  # 50 users, 1 minute by default

or ``make loadtest-check``, which starts its own portal on a scratch PostgreSQL
database, runs this, and then checks the database (``loadtests/run_and_check.py``).

Settings: ``PAYPORTAL_LOADTEST_API_KEY`` (required); ``PAYPORTAL_LOADTEST_SANDBOX``
(default http://127.0.0.1:8081, the sandbox that tokenizes the test card);
``PAYPORTAL_LOADTEST_ACK_FILE`` (optional: every payment answered 2xx is appended
there as ``payment_id status``, for the invariant check);
``PAYPORTAL_LOADTEST_WEBHOOK_SECRET`` (optional: the sandbox's ``whsec_…`` secret,
enables ``CallbackReplayer``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import secrets
import threading
import uuid
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from locust import FastHttpUser, between, events, task
from locust.env import Environment

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# The contract's always-approving Visa test card: the sandbox turns it into a token, so the
# portal under test never sees the number.
TEST_CARD = "4242424242424242"
CALLBACK_PATH = "/v1/processors/sandbox/callbacks"
# A throwaway login on a scratch portal, not a credential.
PAYER_PASSWORD = "peak-season-payer"


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS and not host.startswith("127."):
        raise SystemExit(f"load tests only target loopback addresses, not {host!r}")


def _sandbox() -> str:
    return os.environ.get("PAYPORTAL_LOADTEST_SANDBOX", "http://127.0.0.1:8081")


@events.init.add_listener
def _check_target(environment: Environment, **_: object) -> None:
    _require_loopback(environment.host or "")
    _require_loopback(_sandbox())
    if not os.environ.get("PAYPORTAL_LOADTEST_API_KEY"):
        raise SystemExit("set PAYPORTAL_LOADTEST_API_KEY to the merchant key make run printed")


class _Acknowledged:
    """Payments the portal answered 2xx: appended to the ack file (if set) for the
    invariant check, and the succeeded ones kept for the callback replayer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file: Any = None
        self.succeeded: deque[dict[str, Any]] = deque(maxlen=2_000)

    def record(self, payment: dict[str, Any]) -> None:
        with self._lock:
            path = os.environ.get("PAYPORTAL_LOADTEST_ACK_FILE")
            if path and self._file is None:
                self._file = open(path, "a", buffering=1)  # noqa: SIM115 - open for the run
            if self._file is not None:
                self._file.write(f"{payment['id']} {payment.get('status', '?')}\n")
            if payment.get("status") == "succeeded":
                self.succeeded.append(payment)


ACKNOWLEDGED = _Acknowledged()


class _PortalUser(FastHttpUser):
    abstract = True

    def _merchant_headers(self, key: bool = False) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {os.environ['PAYPORTAL_LOADTEST_API_KEY']}"}
        if key:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        return headers

    def _setup_post(self, path: str, body: dict[str, Any], headers: dict[str, str],
                    name: str) -> dict[str, Any]:  # fmt: skip
        with self.rest("POST", path, json=body, headers=headers, name=name) as response:
            if response.status_code != 200:
                response.failure(f"{path}: {response.status_code} {response.text[:200]}")
                raise SystemExit(f"set-up failed at {path}")
            return dict(response.js)

    def _open_account(self, email: str) -> str:
        account = self._setup_post("/v1/accounts", {
            "name": f"Peak {uuid.uuid4().hex[:8]}", "email": email, "currency": "USD",
        }, self._merchant_headers(key=True), "/v1/accounts")  # fmt: skip
        account_id = str(account["id"])
        today = dt.date.today()
        # Overdue, due soon, next month: allocation goes oldest first.
        for n, days in enumerate((-20, 5, 35)):
            self._setup_post(f"/v1/accounts/{account_id}/invoices", {
                "amount": random.choice((12_500, 48_050, 99_900)) * (n + 1),
                "due_date": (today + dt.timedelta(days=days)).isoformat(),
            }, self._merchant_headers(key=True), "/v1/accounts/{id}/invoices")  # fmt: skip
        return account_id

    def _save_card(self, account_id: str, headers: dict[str, str]) -> str:
        with self.rest("POST", f"{_sandbox()}/v1/tokens", name="sandbox /v1/tokens", json={
            "type": "card", "number": TEST_CARD, "exp_month": 12,
            "exp_year": dt.date.today().year + 5, "cvc": "123",
        }) as response:  # fmt: skip
            card = response.js
        method = self._setup_post(f"/v1/accounts/{account_id}/payment_methods", {
            "token": card["token"], "brand": card["brand"], "last4": card["last4"],
            "exp_month": card["exp_month"], "exp_year": card["exp_year"],
        }, headers, "/v1/accounts/{id}/payment_methods")  # fmt: skip
        return str(method["id"])

    def _pay(self, headers: dict[str, str], account_id: str, method: str, amount: int,
             name: str) -> None:  # fmt: skip
        with self.rest("POST", "/v1/payments", name=name, headers={
            **headers, "Idempotency-Key": uuid.uuid4().hex,
        }, json={
            "account": account_id, "amount": amount, "currency": "USD", "payment_method": method,
        }) as response:  # fmt: skip
            if 200 <= response.status_code < 300 and response.js:
                ACKNOWLEDGED.record(response.js)
                if response.js.get("status") not in ("succeeded", "processing"):
                    response.failure(f"payment ended {response.js.get('status')}")


class Payer(_PortalUser):
    """A payer in peak season: looks, pays part or all, downloads statements."""

    weight = 8
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        email = f"payer-{uuid.uuid4().hex[:12]}@peak.example"
        self.account_id = self._open_account(email)
        self._setup_post(f"/v1/accounts/{self.account_id}/payers",
                         {"email": email, "password": PAYER_PASSWORD},
                         self._merchant_headers(), "/v1/accounts/{id}/payers")  # fmt: skip
        session = self._setup_post("/v1/payer/sessions",
                                   {"email": email, "password": PAYER_PASSWORD}, {},
                                   "/v1/payer/sessions")  # fmt: skip
        self.headers = {"Authorization": f"Bearer {session['token']}"}
        self.payment_method = self._save_card(self.account_id, self.headers)

    @task(6)
    def balance(self) -> None:
        self.client.get(f"/v1/accounts/{self.account_id}", headers=self.headers,
                        name="payer /v1/accounts/{id}")  # fmt: skip

    @task(4)
    def open_invoices(self) -> None:
        self.client.get(f"/v1/accounts/{self.account_id}/invoices?status=open",
                        headers=self.headers, name="payer /v1/accounts/{id}/invoices")  # fmt: skip

    @task(2)
    def history(self) -> None:
        self.client.get(f"/v1/payments?account={self.account_id}&limit=10",
                        headers=self.headers, name="payer /v1/payments")  # fmt: skip

    @task(1)
    def preview(self) -> None:
        amount = random.randint(1_000, 50_000)
        self.client.get(
            f"/v1/payments/preview_allocation?account={self.account_id}&amount={amount}",
            headers=self.headers, name="payer /v1/payments/preview_allocation",
        )  # fmt: skip

    @task(3)
    def pay_part(self) -> None:
        self._pay(self.headers, self.account_id, self.payment_method,
                  random.randint(500, 20_000), "payer pay part")  # fmt: skip

    @task(1)
    def pay_oldest_invoice_in_full(self) -> None:
        with self.rest("GET", f"/v1/accounts/{self.account_id}/invoices?status=open&limit=1",
                       headers=self.headers,
                       name="payer /v1/accounts/{id}/invoices") as response:  # fmt: skip
            invoices = (response.js or {}).get("data") or []
        if not invoices:
            return  # everything is paid: nothing is owed in full
        self._pay(self.headers, self.account_id, self.payment_method,
                  int(invoices[0]["amount_remaining"]), "payer pay invoice in full")  # fmt: skip

    @task(1)
    def statement_pdf(self) -> None:
        self.client.get(f"/v1/accounts/{self.account_id}/statement?format=pdf",
                        headers=self.headers, name="payer statement pdf")  # fmt: skip

    @task(1)
    def statement_csv(self) -> None:
        self.client.get(f"/v1/accounts/{self.account_id}/statement?format=csv",
                        headers=self.headers, name="payer statement csv")  # fmt: skip


class MerchantBackOffice(_PortalUser):
    """The merchant's API key on an account of its own: reads, previews, small payments."""

    weight = 2
    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        self.headers = self._merchant_headers()
        self.account_id = self._open_account("ap@merchant.example")
        self.payment_method = self._save_card(self.account_id, self.headers)

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
        self._pay(self.headers, self.account_id, self.payment_method, 100, "/v1/payments")

    @task(1)
    def history(self) -> None:
        self.client.get(f"/v1/payments?account={self.account_id}&limit=10",
                        headers=self.headers, name="/v1/payments")  # fmt: skip


if os.environ.get("PAYPORTAL_LOADTEST_WEBHOOK_SECRET"):
    from standardwebhooks import Webhook

    class CallbackReplayer(FastHttpUser):
        """A processor sending a success again under a new event id: the portal must
        answer 2xx and apply nothing (the charge is captured once, ever)."""

        weight = 1
        wait_time = between(0.2, 1.0)

        def on_start(self) -> None:
            self.webhook = Webhook(os.environ["PAYPORTAL_LOADTEST_WEBHOOK_SECRET"])

        @task
        def replay_success(self) -> None:
            if not ACKNOWLEDGED.succeeded:
                return
            payment = random.choice(list(ACKNOWLEDGED.succeeded))
            attempt = payment["attempts"][-1]["id"]
            with self.rest("GET", f"{_sandbox()}/v1/charges?idempotency_key={attempt}",
                           name="sandbox /v1/charges?idempotency_key") as response:  # fmt: skip
                charges = (response.js or {}).get("data") or []
            if not charges:
                return
            charge = charges[0]
            body = json.dumps({"type": "charge.succeeded", "data": {
                "charge": charge["id"], "attempt": attempt, "amount": charge["amount"],
                "currency": charge["currency"],
            }})  # fmt: skip
            event_id = f"evt_replay_{secrets.token_hex(10)}"
            now = dt.datetime.now(dt.UTC)
            headers = {
                "content-type": "application/json", "webhook-id": event_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self.webhook.sign(event_id, now, body),
            }  # fmt: skip
            with self.rest("POST", CALLBACK_PATH, data=body, headers=headers,
                           name="replayed callback") as response:  # fmt: skip
                if not 200 <= response.status_code < 300:
                    response.failure(f"replayed callback: {response.status_code}")
