"""/metrics from `payportal serve --workers 2` (real Ray shards, two front-door processes
on one port): whichever process answers, the shard families cover every shard after a
real payment, and each process's own families carry its worker label."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_process import serving

from .test_serve_smoke import _call

pytestmark = [pytest.mark.ray, pytest.mark.slow]

WORKERS = 2
SHARDS = 2
# New connections are spread over the processes by the kernel; this many scrapes reach
# both with overwhelming likelihood (the chance of missing one is 2 * 2**-40).
SCRAPES = 40
# How long the processes' database figures may take to show the payment (projection lag
# plus each process's few seconds of cache).
PROJECTION_WAIT_S = 30.0


def _scrape(url: str, key: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        worker = str(response.headers["X-Payportal-Worker"])
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return worker, samples


def test_any_worker_reports_every_shard_and_its_own_requests(tmp_path: Path) -> None:
    with serving(tmp_path, args=["--workers", str(WORKERS)],
                 env={"PAYPORTAL_SHARDS": str(SHARDS)}) as served:  # fmt: skip
        text = served.banner
        port, sandbox_port = served.port, served.sandbox_port
        assert f"http://127.0.0.1:{port}/metrics" in text, text
        api_key = re.search(r"API key\s+(sk_\S+)", text)
        assert api_key is not None, text
        key = api_key.group(1)
        base = served.base

        card = _call("POST", f"http://127.0.0.1:{sandbox_port}/v1/tokens", {
            "type": "card", "number": "4242424242424242", "exp_month": 12, "exp_year": 2035,
            "cvc": "123",
        })  # fmt: skip
        method = _call("POST", f"{base}/v1/accounts/acct_demo_acme/payment_methods",
                       {"token": card["token"], "brand": "visa", "last4": "4242"},
                       Authorization=f"Bearer {key}")  # fmt: skip
        payment = _call("POST", f"{base}/v1/payments", {
            "account": "acct_demo_acme", "amount": 1_000, "currency": "USD",
            "payment_method": method["id"],
        }, Authorization=f"Bearer {key}", Idempotency_Key="metrics-serve-1")  # fmt: skip
        assert payment["status"] == "succeeded"

        # The read model is projected just after the commit and each process caches its
        # database figures for a few seconds: scrape until every process has seen it.
        by_worker: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        deadline = time.monotonic() + PROJECTION_WAIT_S
        scrapes = 0
        while scrapes < SCRAPES or time.monotonic() < deadline:
            worker, samples = _scrape(f"{base}/metrics", key)
            by_worker[worker] = samples
            scrapes += 1
            projected = [w.get(("payportal_payments", (("status", "succeeded"),)), 0) >= 1
                         for w in by_worker.values()]  # fmt: skip
            if scrapes >= SCRAPES and len(by_worker) == WORKERS and all(projected):
                break
            if scrapes >= SCRAPES:
                time.sleep(0.5)
        assert set(by_worker) == {str(n) for n in range(WORKERS)}
        for worker, samples in by_worker.items():
            up = {dict(labels)["shard"]: v for (name, labels), v in samples.items()
                  if name == "payportal_shard_up"}  # fmt: skip
            assert up == {str(n): 1.0 for n in range(SHARDS)}, (worker, up)
            finished = sum(v for (name, labels), v in samples.items()
                           if name == "payportal_payments_finished_total"
                           and ("status", "succeeded") in labels)  # fmt: skip
            assert finished >= 1, worker
            batches = sum(v for (name, _), v in samples.items()
                          if name == "payportal_shard_batch_commands_count")  # fmt: skip
            commits = sum(v for (name, _), v in samples.items()
                          if name == "payportal_journal_commit_seconds_count")  # fmt: skip
            assert batches >= 1
            assert commits >= 1
            workers_seen = {dict(labels).get("worker") for (name, labels) in samples
                            if name == "payportal_http_requests_total"}  # fmt: skip
            assert workers_seen == {worker}, (worker, workers_seen)
            assert samples[("payportal_payments", (("status", "succeeded"),))] >= 1
    assert served.returncode == 0, served.output()
