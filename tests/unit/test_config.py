"""Settings load with embedded defaults and reject every malformed value in one line naming
it; each test builds an explicit environment and a throwaway working directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from payportal.config import Settings, SettingsError, load_settings


def _load(tmp_path: Path, **environ: str) -> Settings:
    return load_settings(environ, cwd=tmp_path)


def test_empty_environment_runs_on_embedded_defaults(tmp_path: Path) -> None:
    settings = _load(tmp_path)

    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/var/payportal.db"
    assert settings.redis_url is None
    assert settings.ray_address is None
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.sandbox_port == 8081
    assert settings.smtp_url is None
    assert settings.shards == (os.cpu_count() or 1)
    assert settings.secret_key is None
    assert settings.processor == "sandbox"
    assert settings.batch_max_items == 256
    assert settings.batch_max_wait_ms == 2
    assert settings.queue_max == 10_000


def test_loading_settings_writes_nothing(tmp_path: Path) -> None:
    _load(tmp_path)

    assert list(tmp_path.iterdir()) == []


def test_every_setting_is_read_from_the_environment(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        PAYPORTAL_DATABASE_URL="postgresql+asyncpg://app:pw@db:5432/payportal",
        PAYPORTAL_REDIS_URL="redis://cache:6379/0",
        PAYPORTAL_RAY_ADDRESS="ray-head:6379",
        PAYPORTAL_HOST="0.0.0.0",
        PAYPORTAL_PORT="9000",
        PAYPORTAL_SANDBOX_PORT="9001",
        PAYPORTAL_SMTP_URL="smtp://mail:25",
        PAYPORTAL_SHARDS="16",
        PAYPORTAL_SECRET_KEY="k" * 40,
        PAYPORTAL_PROCESSOR="sandbox",
        PAYPORTAL_BATCH_MAX_ITEMS="64",
        PAYPORTAL_BATCH_MAX_WAIT_MS="0",
        PAYPORTAL_QUEUE_MAX="500",
    )

    assert settings.database_url == "postgresql+asyncpg://app:pw@db:5432/payportal"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.ray_address == "ray-head:6379"
    assert settings.host == "0.0.0.0"
    assert (settings.port, settings.sandbox_port) == (9000, 9001)
    assert settings.smtp_url == "smtp://mail:25"
    assert settings.shards == 16
    assert settings.secret_key == "k" * 40
    assert (settings.batch_max_items, settings.batch_max_wait_ms) == (64, 0)
    assert settings.queue_max == 500


def test_bare_database_schemes_get_the_async_driver(tmp_path: Path) -> None:
    postgres = _load(tmp_path, PAYPORTAL_DATABASE_URL="postgres://u@db/payportal")
    sqlite = _load(tmp_path, PAYPORTAL_DATABASE_URL="sqlite:////data/p.db")

    assert postgres.database_url == "postgresql+asyncpg://u@db/payportal"
    assert sqlite.database_url == "sqlite+aiosqlite:////data/p.db"


def test_empty_value_means_the_default(tmp_path: Path) -> None:
    settings = _load(tmp_path, PAYPORTAL_PORT="", PAYPORTAL_REDIS_URL="  ")

    assert settings.port == 8080
    assert settings.redis_url is None


MALFORMED = [
    ("PAYPORTAL_DATABASE_URL", "mysql://db/payportal"),
    ("PAYPORTAL_DATABASE_URL", "postgresql+asyncpg:///nohost"),
    ("PAYPORTAL_DATABASE_URL", "sqlite+aiosqlite://relative.db"),
    ("PAYPORTAL_REDIS_URL", "http://cache:6379"),
    ("PAYPORTAL_REDIS_URL", "redis://cache:port"),
    ("PAYPORTAL_RAY_ADDRESS", "ray-head"),
    ("PAYPORTAL_RAY_ADDRESS", "http://ray-head:6379"),
    ("PAYPORTAL_HOST", "local host"),
    ("PAYPORTAL_PORT", "abc"),
    ("PAYPORTAL_PORT", "0"),
    ("PAYPORTAL_PORT", "65536"),
    ("PAYPORTAL_PORT", "80.5"),
    ("PAYPORTAL_SANDBOX_PORT", "-1"),
    ("PAYPORTAL_SMTP_URL", "mail:25"),
    ("PAYPORTAL_SMTP_URL", "smtp://"),
    ("PAYPORTAL_SHARDS", "0"),
    ("PAYPORTAL_SHARDS", "many"),
    ("PAYPORTAL_SECRET_KEY", "short"),
    ("PAYPORTAL_PROCESSOR", "adyen"),
    ("PAYPORTAL_BATCH_MAX_ITEMS", "0"),
    ("PAYPORTAL_BATCH_MAX_WAIT_MS", "2.5"),
    ("PAYPORTAL_BATCH_MAX_WAIT_MS", "-1"),
    ("PAYPORTAL_QUEUE_MAX", "10"),
    ("PAYPORTAL_DATABSE_URL", "postgresql://db/payportal"),
    ("PAYPORTAL_TRUSTED_PROXIES", "10.0.0.1/8"),
    ("PAYPORTAL_TRUSTED_PROXIES", "proxy.internal"),
    ("PAYPORTAL_TRUSTED_PROXIES", "10.0.0.1,,10.0.0.2"),
    ("PAYPORTAL_HEADER_TIMEOUT_MS", "0"),
    ("PAYPORTAL_HEADER_TIMEOUT_MS", "10s"),
    ("PAYPORTAL_BODY_TIMEOUT_MS", "49"),
    ("PAYPORTAL_BODY_TIMEOUT_MS", "3600001"),
    ("PAYPORTAL_CONNECTIONS_PER_ADDRESS", "0"),
    ("PAYPORTAL_HEADER_TIMEOUT", "10000"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED)
def test_malformed_setting_is_one_line_naming_it(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        _load(tmp_path, **{name: value})

    message = str(raised.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_trusted_proxies_are_addresses_and_networks_and_none_by_default(tmp_path: Path) -> None:
    default = _load(tmp_path)
    configured = _load(tmp_path, PAYPORTAL_TRUSTED_PROXIES=" 10.0.0.0/8, 192.0.2.7,2001:db8::/32")

    assert default.trusted_proxies == ()
    assert [str(n) for n in configured.trusted_proxies] == [
        "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32",
    ]  # fmt: skip


def test_malformed_trusted_proxy_names_the_setting_and_the_bad_entry(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        _load(tmp_path, PAYPORTAL_TRUSTED_PROXIES="10.0.0.0/8, proxy.internal")

    assert str(raised.value) == (
        "PAYPORTAL_TRUSTED_PROXIES: must be comma-separated IP addresses or CIDR networks, "
        "got 'proxy.internal'"
    )


def test_with_tls_the_embedded_sandbox_is_https_too_and_an_external_one_is_kept(
    tmp_path: Path,
) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("read when serve starts, not here")
    tls = {"PAYPORTAL_TLS_CERT_FILE": "cert.pem", "PAYPORTAL_TLS_KEY_FILE": "key.pem"}

    settings = _load(tmp_path, **tls)
    assert settings.local_url == "https://127.0.0.1:8080"
    assert settings.sandbox_url == "https://127.0.0.1:8081"
    assert _load(tmp_path).sandbox_url == "http://127.0.0.1:8081"
    external = _load(tmp_path, **tls, PAYPORTAL_SANDBOX_URL="http://sandbox.internal:9000/")
    assert external.sandbox_url == "http://sandbox.internal:9000"


def test_malformed_port_message_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        _load(tmp_path, PAYPORTAL_PORT="abc")

    assert str(raised.value) == "PAYPORTAL_PORT: must be an integer 1-65535, got 'abc'"


def test_queue_must_hold_one_batch(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="at least PAYPORTAL_BATCH_MAX_ITEMS"):
        _load(tmp_path, PAYPORTAL_BATCH_MAX_ITEMS="100", PAYPORTAL_QUEUE_MAX="99")


def test_sandbox_port_must_differ_from_port(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^PAYPORTAL_SANDBOX_PORT: must differ"):
        _load(tmp_path, PAYPORTAL_PORT="9000", PAYPORTAL_SANDBOX_PORT="9000")


def test_misspelt_setting_suggests_the_real_name(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="did you mean PAYPORTAL_SHARDS"):
        _load(tmp_path, PAYPORTAL_SHARD="4")


def test_test_and_benchmark_variables_are_not_settings(tmp_path: Path) -> None:
    _load(
        tmp_path,
        PAYPORTAL_TEST_POSTGRES_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        PAYPORTAL_BENCH_POSTGRES_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    )


def test_errors_never_show_a_password_or_the_secret_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as url_error:
        _load(tmp_path, PAYPORTAL_DATABASE_URL="mysql://app:hunter2@db/payportal")
    with pytest.raises(SettingsError) as key_error:
        _load(tmp_path, PAYPORTAL_SECRET_KEY="hunter2")

    assert "hunter2" not in str(url_error.value)
    assert "hunter2" not in str(key_error.value)


def test_secret_key_is_not_in_the_repr(tmp_path: Path) -> None:
    settings = _load(tmp_path, PAYPORTAL_SECRET_KEY="s3cret" * 8)

    assert "s3cret" not in repr(settings)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# local overrides\n"
        "\n"
        "PAYPORTAL_PORT=9100\n"
        "export PAYPORTAL_SHARDS=3\n"
        "PAYPORTAL_REDIS_URL='redis://cache:6379/1'\n"
        'PAYPORTAL_HOST="localhost"  \n'
        "PAYPORTAL_QUEUE_MAX=20000 # roomier\n"
        "UNRELATED=ignored\n"
    )

    settings = _load(tmp_path)

    assert settings.port == 9100
    assert settings.shards == 3
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.host == "localhost"
    assert settings.queue_max == 20_000


def test_environment_overrides_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PAYPORTAL_PORT=9100\nPAYPORTAL_SHARDS=3\n")

    settings = _load(tmp_path, PAYPORTAL_PORT="9200")

    assert settings.port == 9200
    assert settings.shards == 3


def test_malformed_dotenv_line_names_the_line_not_its_content(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PAYPORTAL_PORT=9100\nhunter2\n")

    with pytest.raises(SettingsError) as raised:
        _load(tmp_path)

    assert str(raised.value) == ".env line 2: expected KEY=VALUE"


def test_malformed_value_in_dotenv_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PAYPORTAL_SHARDS=lots\n")

    with pytest.raises(SettingsError, match=r"^PAYPORTAL_SHARDS: "):
        _load(tmp_path)


def test_configured_secret_key_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    settings = _load(tmp_path, PAYPORTAL_SECRET_KEY="k" * 40)

    assert settings.resolve_secret_key() == "k" * 40
    assert not (tmp_path / "var").exists()


def test_generated_secret_key_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    key_first = _load(tmp_path).resolve_secret_key()
    key_after_restart = _load(tmp_path).resolve_secret_key()

    key_path = tmp_path / "var" / "secret_key"
    assert key_first == key_after_restart
    assert len(key_first) >= 32
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert [path.name for path in key_path.parent.iterdir()] == ["secret_key"]


def test_secret_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    settings = _load(tmp_path)
    settings.resolve_secret_key()
    (tmp_path / "var" / "secret_key").chmod(0o644)

    with pytest.raises(SettingsError, match=r"^PAYPORTAL_SECRET_KEY: .*chmod 600"):
        settings.resolve_secret_key()


def test_slow_client_limits_default_to_ten_and_thirty_seconds_and_256_connections(
    tmp_path: Path,
) -> None:
    default = _load(tmp_path)
    assert (default.header_timeout_ms, default.body_timeout_ms) == (10_000, 30_000)
    assert default.connections_per_address == 256
    tight = _load(tmp_path, PAYPORTAL_HEADER_TIMEOUT_MS="250", PAYPORTAL_BODY_TIMEOUT_MS="500",
                  PAYPORTAL_CONNECTIONS_PER_ADDRESS="8")  # fmt: skip
    assert (tight.header_timeout_ms, tight.body_timeout_ms) == (250, 500)
    assert tight.connections_per_address == 8


def test_rate_limits_scale_defaults_to_one_and_rejects_zero(tmp_path: Path) -> None:
    assert load_settings({}, cwd=tmp_path).rate_limits_scale == 1
    scaled = load_settings({"PAYPORTAL_RATE_LIMITS_SCALE": "100"}, cwd=tmp_path)
    assert scaled.rate_limits_scale == 100
    with pytest.raises(SettingsError, match="PAYPORTAL_RATE_LIMITS_SCALE"):
        load_settings({"PAYPORTAL_RATE_LIMITS_SCALE": "0"}, cwd=tmp_path)


def test_without_data_keys_development_keys_are_made_once_and_handed_to_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYPORTAL_DATA_KEYS", raising=False)
    settings = load_settings({}, cwd=tmp_path)
    assert settings.data_keys is None
    assert settings.data_keys_generated
    first = settings.resolve_data_keys()
    path = tmp_path / "var" / "keys" / "data-keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.environ["PAYPORTAL_DATA_KEYS"] == f"file:{path}"
    assert load_settings({}, cwd=tmp_path).resolve_data_keys() == first
    assert len(first[1]) == 32


def test_configured_data_keys_are_checked_at_start_and_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    monkeypatch.delenv("PAYPORTAL_DATA_KEYS", raising=False)
    key = base64.b64encode(bytes(range(32))).decode()
    settings = load_settings({"PAYPORTAL_DATA_KEYS": f"2:{key}"}, cwd=tmp_path)
    assert settings.resolve_data_keys() == {2: bytes(range(32))}
    assert not (tmp_path / "var" / "keys").exists()
    (tmp_path / "keys.txt").write_text(f"3:{key}\n")
    from_file = load_settings({"PAYPORTAL_DATA_KEYS": "file:keys.txt"}, cwd=tmp_path)
    assert from_file.resolve_data_keys() == {3: bytes(range(32))}
    for bad in ("2:" + key[:-8], "correct-horse-battery-staple", "file:missing.txt"):
        with pytest.raises(SettingsError, match=r"^PAYPORTAL_DATA_KEYS") as raised:
            load_settings({"PAYPORTAL_DATA_KEYS": bad}, cwd=tmp_path)
        assert "\n" not in str(raised.value)
        assert key[:-8] not in str(raised.value)
        assert "correct-horse" not in str(raised.value)
