"""The shards' retry janitor charges through the configured processor: with Stripe, a
Stripe adapter built from the shard process's own settings, which serve exports for its
local Ray workers (docs/processors.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from payportal.actors.cluster import ShardJanitor, _janitor_processor
from payportal.config import load_settings
from payportal.processors.sandbox_client import SandboxProcessor
from payportal.processors.stripe import StripeProcessor

STRIPE = {
    "PAYPORTAL_PROCESSOR": "stripe",
    "PAYPORTAL_STRIPE_SECRET_KEY": "sk_test_" + "a" * 24,
    "PAYPORTAL_STRIPE_PUBLISHABLE_KEY": "pk_test_" + "b" * 24,
    "PAYPORTAL_STRIPE_WEBHOOK_SECRETS": "whsec_" + "c" * 24 + ",whsec_" + "d" * 24,
    "PAYPORTAL_STRIPE_API_BASE": "http://127.0.0.1:9/",
}


async def test_a_stripe_deployments_janitor_builds_a_stripe_adapter_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in STRIPE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    # What serve does before starting Ray: its settings (a .env file's too) exported.
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in STRIPE.items()))
    load_settings().export_stripe_settings()
    (tmp_path / ".env").unlink()
    assert {k: os.environ[k] for k in STRIPE} == {
        **STRIPE, "PAYPORTAL_STRIPE_API_BASE": "http://127.0.0.1:9",
    }  # fmt: skip

    janitor = ShardJanitor(processor_url="http://127.0.0.1:8081", shards=1, processor="stripe")
    processor = _janitor_processor(janitor)
    try:
        assert isinstance(processor, StripeProcessor)
    finally:
        await processor.close()


async def test_a_sandbox_deployments_janitor_charges_the_sandbox() -> None:
    processor = _janitor_processor(ShardJanitor(processor_url="http://127.0.0.1:8081", shards=1))
    try:
        assert isinstance(processor, SandboxProcessor)
    finally:
        await processor.close()
