"""PAYPORTAL_PROCESSOR=stripe: each Stripe setting is required, checked, and never echoed."""

from __future__ import annotations

import pytest

from payportal.config import SettingsError, load_settings

SECRET_KEY = "sk_test_" + "settingsFakeKey0123456789"  # test-only
WEBHOOK_SECRETS = "whsec_" + "newFakeSecret01, whsec_" + "oldFakeSecret02"  # test-only
COMPLETE = {
    "PAYPORTAL_PROCESSOR": "stripe",
    "PAYPORTAL_STRIPE_SECRET_KEY": SECRET_KEY,
    "PAYPORTAL_STRIPE_PUBLISHABLE_KEY": "pk_test_settingsFake",
    "PAYPORTAL_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRETS,
}


def test_complete(tmp_path: object) -> None:
    settings = load_settings(COMPLETE, cwd=str(tmp_path))
    assert settings.stripe_secret_key == SECRET_KEY
    assert settings.stripe_webhook_secrets == (
        "whsec_newFakeSecret01", "whsec_oldFakeSecret02",
    )  # fmt: skip
    assert settings.stripe_api_base == "https://api.stripe.com"
    assert SECRET_KEY not in repr(settings)
    assert "whsec_" not in repr(settings)


@pytest.mark.parametrize("missing", [k for k in COMPLETE if k.startswith("PAYPORTAL_STRIPE")])
def test_a_missing_one_stops_start_up_naming_it(tmp_path: object, missing: str) -> None:
    environ = {k: v for k, v in COMPLETE.items() if k != missing}
    with pytest.raises(SettingsError) as raised:
        load_settings(environ, cwd=str(tmp_path))
    assert str(raised.value) == f"{missing}: needed with PAYPORTAL_PROCESSOR=stripe"


def test_a_value_in_the_wrong_setting_is_not_echoed(tmp_path: object) -> None:
    environ = {**COMPLETE, "PAYPORTAL_STRIPE_PUBLISHABLE_KEY": SECRET_KEY}
    with pytest.raises(SettingsError) as raised:
        load_settings(environ, cwd=str(tmp_path))
    assert "PAYPORTAL_STRIPE_PUBLISHABLE_KEY: must start with pk_" in str(raised.value)
    assert SECRET_KEY not in str(raised.value)


def test_ignored_with_the_sandbox(tmp_path: object) -> None:
    settings = load_settings({"PAYPORTAL_STRIPE_SECRET_KEY": "nonsense"}, cwd=str(tmp_path))
    assert settings.processor == "sandbox"
    assert settings.stripe_secret_key is None
