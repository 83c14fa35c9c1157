"""Settings: every knob of a deployment, read once at start-up from the environment.

Model: a frozen `Settings` built by `load_settings` from the process environment laid over
an optional `.env` file in the working directory (the environment wins). Every setting has
an embedded default, so an empty environment runs the whole system on one machine; setting
the database, Redis and Ray addresses turns the same code into a cluster deployment.

Rules:
- A setting is valid or start-up stops: a malformed value raises `SettingsError`, whose
  message is one line naming the setting and what is wrong. Nothing is silently clamped.
- An empty value (``PAYPORTAL_REDIS_URL=``) means "unset, use the default", because that
  is what an empty line in a `.env` or compose file is written to mean.
- A ``PAYPORTAL_*`` name that is not a setting but is one typo away from one is rejected:
  a misspelt database URL would otherwise quietly run on the embedded SQLite.
- Secrets never appear in messages or reprs: the secret key is not shown and passwords in
  URLs are masked.
- Loading has no side effects. The secret key, when not configured, is generated and
  persisted only when something first asks for it (`Settings.resolve_secret_key`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import os
import secrets
import ssl
import stat
import tempfile
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit

from payportal.outgoing_tls import POSTGRES_TLS_PARAMS, SYSTEM_CAS, ca_file_check, postgres_ssl

__all__ = ["PROCESSORS", "Settings", "SettingsError", "load_settings"]

PREFIX = "PAYPORTAL_"

# Processor adapters that exist. Real adapters add their name here when they land.
PROCESSORS = frozenset({"sandbox", "stripe"})

# 32 characters of a URL-safe token is 192 bits; shorter keys are guessable enough to
# forge session cookies offline.
SECRET_KEY_LENGTH_MIN = 32

# A batch bigger than this is one multi-megabyte Ray message and one very long group
# commit; the measured gain flattens far below it.
BATCH_MAX_ITEMS_LIMIT = 65_536
# Waiting longer than a second to fill a batch is latency no payer would accept.
BATCH_MAX_WAIT_MS_LIMIT = 1_000
# Shards are fixed when a deployment is created; beyond this a typo is likelier than intent.
SHARDS_LIMIT = 4_096
# Billing runs at least daily: a longer interval would leave periods unbilled past their day.
BILLING_INTERVAL_S_LIMIT = 86_400
# Enough to lift every request limit out of a loopback load test's way.
RATE_LIMITS_SCALE_LIMIT = 1_000_000
# A client allowed an hour to send its headers, or to pause its body, is not cut off.
CLIENT_TIMEOUT_MS_LIMIT = 3_600_000
# Past this a cap per address is no cap (a process has far fewer file descriptors).
CONNECTIONS_PER_ADDRESS_LIMIT = 1_000_000
# Systemd and Kubernetes give a stopping service 90 s and 30 s by default; ten minutes
# is past any orchestrator's patience.
SHUTDOWN_TIMEOUT_S_LIMIT = 600

# Names in these families belong to the test suite and benchmarks, not to the server.
NON_SETTING_PREFIXES = ("PAYPORTAL_TEST_", "PAYPORTAL_BENCH_")
# difflib ratio above which an unknown name is taken for a misspelt setting.
TYPO_SIMILARITY_MIN = 0.85

VALUE_SHOWN_CHARS_MAX = 60


class SettingsError(Exception):
    """A setting is missing or malformed. `str(error)` is one line naming it."""

    def __init__(self, message: str) -> None:
        assert "\n" not in message, "a settings error must be one line"
        super().__init__(message)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The validated configuration of one process. Build it with `load_settings`."""

    database_url: str
    redis_url: str | None  # None: in-process stand-in for streams, rate limits, sessions
    ray_address: str | None  # None: start Ray locally
    host: str
    port: int
    sandbox_port: int
    smtp_url: str | None  # None: the built-in mail catcher
    shards: int
    # None: generated on first use and kept in <var_dir>/secret_key. Never in the repr.
    secret_key: str | None = dataclasses.field(repr=False)
    processor: str
    batch_max_items: int
    batch_max_wait_ms: int
    queue_max: int
    var_dir: Path  # runtime state of the embedded defaults: SQLite, the secret key
    # Peers whose X-Forwarded-For is believed (a load balancer in front of the front
    # door). Empty: the TCP peer is the client, and the header is ignored.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Multiplies every request-rate limit (never the login lockout): a load test on
    # loopback sends far more than one client would.
    rate_limits_scale: int = 1
    # Where payers reach the portal, for links in emails; None: http://{host}:{port}.
    public_url_configured: str | None = None
    # The built-in mail catcher (used when smtp_url is None): SMTP, and its inbox page.
    mail_catcher_port: int = 8025
    mail_ui_port: int = 8026
    # How often `serve` runs billing (seconds; 0: never), and the IANA time zone whose
    # calendar dates subscription periods follow.
    billing_interval_s: int = 60
    billing_timezone: str = "UTC"
    # A sandbox processor run on its own (`payportal sandbox`); None: serve starts one on
    # sandbox_port.
    sandbox_url_configured: str | None = None
    # Slow clients (payportal.http.connections): a request's line and headers must arrive
    # within header_timeout_ms, a body may pause at most body_timeout_ms, and one address
    # may hold connections_per_address connections at a time (per front-door process).
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 30_000
    connections_per_address: int = 256
    # A stop (SIGINT/SIGTERM) ends within this many seconds (payportal.shutdown): every
    # step gets what is left of it, and a step that hangs is named and abandoned.
    shutdown_timeout_s: int = 30
    # PAYPORTAL_DATA_KEYS: key encryption keys, or file:<path> (see resolve_data_keys);
    # None: development keys generated under var/keys/.
    data_keys: str | None = None
    # TLS at the front door (payportal.tls): both files, or neither (plain HTTP). With TLS,
    # the embedded sandbox serves HTTPS with the same pair, http_redirect_port (if set)
    # answers plain HTTP with a redirect to HTTPS, and tls_ca_file is a CA that serve,
    # the processes it starts and the commands that call the sandbox trust besides the
    # system's.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    http_redirect_port: int | None = None
    # A CA the mail sender trusts, besides the system's, for PAYPORTAL_SMTP_URL's server.
    smtp_ca_file: str | None = None
    # Stripe (PAYPORTAL_PROCESSOR=stripe; docs/processors.md): the API's secret key, the
    # publishable key Stripe.js gets, and the webhook signing secrets, newest first (two
    # during a rotation). Required with stripe, ignored otherwise. Never in the repr.
    stripe_secret_key: str | None = dataclasses.field(default=None, repr=False)
    stripe_publishable_key: str | None = None
    stripe_webhook_secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    # Where the SDK sends its requests: Stripe's API, or a Stripe-shaped test server.
    stripe_api_base: str = "https://api.stripe.com"

    def export_stripe_settings(self) -> None:
        """Put the Stripe settings into this process's environment, for the processes it
        starts (local Ray's shard workers run the retry janitor, which charges too)."""
        values = {
            "PROCESSOR": self.processor, "STRIPE_SECRET_KEY": self.stripe_secret_key,
            "STRIPE_PUBLISHABLE_KEY": self.stripe_publishable_key,
            "STRIPE_WEBHOOK_SECRETS": ",".join(self.stripe_webhook_secrets) or None,
            "STRIPE_API_BASE": self.stripe_api_base,
        }  # fmt: skip
        for key, value in values.items():
            if value is not None:
                os.environ[PREFIX + key] = value

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def local_url(self) -> str:
        """The front door as a process on this machine reaches it (callbacks, checks)."""
        # A wildcard listen address is where it listens, not an address to call.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def public_url(self) -> str:
        """The portal's base URL for links in emails, without a trailing slash."""
        if self.public_url_configured is not None:
            return self.public_url_configured.rstrip("/")
        return self.local_url

    @property
    def sandbox_url(self) -> str:
        """Where the server side reaches the sandbox processor, without a trailing slash."""
        if self.sandbox_url_configured is not None:
            return self.sandbox_url_configured.rstrip("/")
        # A wildcard listen address is where the sandbox listens, not an address to call.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        # With TLS the embedded sandbox serves HTTPS with the front door's certificate: the
        # portal's HTTPS pages frame its card fields, and browsers block an HTTP frame in
        # an HTTPS page (loopback excepted, so a test on 127.0.0.1 alone would not see it).
        return f"{self.scheme}://{host}:{self.sandbox_port}"

    @property
    def sandbox_external(self) -> bool:
        """The sandbox runs on its own: serve starts none and calls this one."""
        return self.sandbox_url_configured is not None

    def resolve_secret_key(self) -> str:
        """Return the configured key, or the persisted one, creating it on first use.

        Persisted so that a restart keeps sessions valid. Safe when several processes
        start at once: the key file appears atomically, and every process reads the
        one that won.
        """
        if self.secret_key is not None:
            return self.secret_key
        return _secret_key_file_load_or_create(self.var_dir / "secret_key")

    @property
    def data_keys_generated(self) -> bool:
        return self.data_keys is None

    def resolve_data_keys(self) -> dict[int, bytes]:
        """The key encryption keys that wrap the database's data keys
        (``payportal.persistence.sealing``): the configured ones, or, with none configured
        (development), ones kept in ``var/keys/data-keys``, created on first use. Either
        way exported as ``PAYPORTAL_DATA_KEYS`` so that this process's children (mail,
        workers, local Ray actors) open the same data."""
        from payportal.persistence.sealing import SealingError, new_kek, read_keks

        value = self.data_keys
        if value is None:
            path = self.var_dir / "keys" / "data-keys"
            if not path.exists():
                _private_file_create(path, new_kek() + "\n")
            value = f"file:{path}"
        os.environ[PREFIX + "DATA_KEYS"] = value
        try:
            return read_keks(value)
        except SealingError as error:
            raise SettingsError(str(error)) from None


def load_settings(
    environ: Mapping[str, str] | None = None, *, cwd: str | os.PathLike[str] | None = None
) -> Settings:
    """Read settings from `environ` (default: the process environment) over `cwd`/.env."""
    directory = Path.cwd() if cwd is None else Path(cwd)
    directory = directory.resolve()
    values = _dotenv_read(directory / ".env")
    values.update(os.environ if environ is None else environ)
    # Empty means unset (module rules); strip so a stray space is not a value either.
    raw = {
        name: value.strip()
        for name, value in values.items()
        if name.startswith(PREFIX) and value.strip()
    }
    _reject_misspelt_names(raw)
    var_dir = directory / "var"

    batch_max_items = _int(raw, "BATCH_MAX_ITEMS", 256, 1, BATCH_MAX_ITEMS_LIMIT)
    queue_max = _int(raw, "QUEUE_MAX", 10_000, 1, 10_000_000)
    if queue_max < batch_max_items:
        raise SettingsError(
            f"{PREFIX}QUEUE_MAX: must be at least {PREFIX}BATCH_MAX_ITEMS "
            f"({batch_max_items}), got {queue_max}"
        )
    port = _int(raw, "PORT", 8080, 1, 65_535)
    processor = _processor(raw)
    smtp_url = _smtp_url(raw)
    sandbox_port = _int(raw, "SANDBOX_PORT", 8081, 1, 65_535)
    if sandbox_port == port:
        raise SettingsError(
            f"{PREFIX}SANDBOX_PORT: must differ from {PREFIX}PORT (both are {port})"
        )

    return Settings(
        database_url=_database_url(
            raw, f"sqlite+aiosqlite:///{var_dir / 'payportal.db'}", directory
        ),
        redis_url=_redis_url(raw, directory),
        ray_address=_ray_address(raw),
        host=_host(raw),
        port=port,
        sandbox_port=sandbox_port,
        smtp_url=smtp_url,
        shards=_int(raw, "SHARDS", os.cpu_count() or 1, 1, SHARDS_LIMIT),
        secret_key=_secret_key(raw),
        processor=processor,
        batch_max_items=batch_max_items,
        batch_max_wait_ms=_int(raw, "BATCH_MAX_WAIT_MS", 2, 0, BATCH_MAX_WAIT_MS_LIMIT),
        queue_max=queue_max,
        var_dir=var_dir,
        trusted_proxies=_trusted_proxies(raw),
        rate_limits_scale=_int(raw, "RATE_LIMITS_SCALE", 1, 1, RATE_LIMITS_SCALE_LIMIT),
        public_url_configured=_url(raw, "PUBLIC_URL", ("http", "https"), host_required=True),
        mail_catcher_port=_int(raw, "MAIL_CATCHER_PORT", 8025, 1, 65_535),
        mail_ui_port=_int(raw, "MAIL_UI_PORT", 8026, 1, 65_535),
        billing_interval_s=_int(raw, "BILLING_INTERVAL_S", 60, 0, BILLING_INTERVAL_S_LIMIT),
        billing_timezone=_billing_timezone(raw),
        sandbox_url_configured=_url(raw, "SANDBOX_URL", ("http", "https"), host_required=True),
        header_timeout_ms=_int(raw, "HEADER_TIMEOUT_MS", 10_000, 50, CLIENT_TIMEOUT_MS_LIMIT),
        body_timeout_ms=_int(raw, "BODY_TIMEOUT_MS", 30_000, 50, CLIENT_TIMEOUT_MS_LIMIT),
        connections_per_address=_int(
            raw, "CONNECTIONS_PER_ADDRESS", 256, 1, CONNECTIONS_PER_ADDRESS_LIMIT
        ),
        shutdown_timeout_s=_int(raw, "SHUTDOWN_TIMEOUT_S", 30, 1, SHUTDOWN_TIMEOUT_S_LIMIT),
        data_keys=_data_keys(raw, directory),
        **_tls(raw, directory, port),
        smtp_ca_file=_smtp_ca_file(raw, directory, smtp_url),
        **_stripe(raw, processor),
    )


# -- the .env file --------------------------------------------------------------------


def _dotenv_read(path: Path) -> dict[str, str]:
    """Parse simple ``KEY=VALUE`` lines: comments, ``export``, quotes; no interpolation."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f".env: cannot be read ({type(error).__name__})") from error
    values: dict[str, str] = {}
    for line_number, line_raw in enumerate(text.splitlines(), start=1):
        line = line_raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        name, equals, value = line.partition("=")
        name = name.strip()
        # The line itself is not echoed: it may hold a secret.
        if not equals or not name.isidentifier():
            raise SettingsError(f".env line {line_number}: expected KEY=VALUE")
        values[name] = _dotenv_value(value.strip())
    return values


def _dotenv_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    # As in python-dotenv: an unquoted value ends at " #"; quote a value that holds one.
    comment_at = value.find(" #")
    return value if comment_at < 0 else value[:comment_at].rstrip()


# -- names ------------------------------------------------------------------------------

SETTING_NAMES = frozenset(
    PREFIX + name
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "RAY_ADDRESS",
        "HOST",
        "PORT",
        "SANDBOX_PORT",
        "SANDBOX_URL",
        "SMTP_URL",
        "SMTP_CA_FILE",
        "SHARDS",
        "SECRET_KEY",
        "PROCESSOR",
        "BATCH_MAX_ITEMS",
        "BATCH_MAX_WAIT_MS",
        "QUEUE_MAX",
        "TRUSTED_PROXIES",
        "RATE_LIMITS_SCALE",
        "PUBLIC_URL",
        "MAIL_CATCHER_PORT",
        "MAIL_UI_PORT",
        "BILLING_INTERVAL_S",
        "BILLING_TIMEZONE",
        "HEADER_TIMEOUT_MS",
        "BODY_TIMEOUT_MS",
        "CONNECTIONS_PER_ADDRESS",
        "SHUTDOWN_TIMEOUT_S",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "TLS_CA_FILE",
        "HTTP_REDIRECT_PORT",
        "DATA_KEYS",
        "STRIPE_SECRET_KEY",
        "STRIPE_PUBLISHABLE_KEY",
        "STRIPE_WEBHOOK_SECRETS",
        "STRIPE_API_BASE",
    )
)


def _reject_misspelt_names(raw: Mapping[str, str]) -> None:
    for name in sorted(raw):
        if name in SETTING_NAMES or name.startswith(NON_SETTING_PREFIXES):
            continue
        close = difflib.get_close_matches(name, SETTING_NAMES, n=1, cutoff=TYPO_SIMILARITY_MIN)
        if close:
            raise SettingsError(f"{name}: not a setting; did you mean {close[0]}?")


# -- values -----------------------------------------------------------------------------


def _shown(value: str) -> str:
    """The value as quoted in an error: repr keeps it on one line, and long ones are cut."""
    if len(value) > VALUE_SHOWN_CHARS_MAX:
        value = value[:VALUE_SHOWN_CHARS_MAX] + "…"
    return repr(value)


def _int(raw: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(PREFIX + key)
    if value is None:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise SettingsError(f"{PREFIX}{key}: must be an integer {low}-{high}, got {_shown(value)}")
    return number


def _url_masked(parts: SplitResult) -> str:
    """The URL with its password replaced, safe to print."""
    if parts.password is None:
        return parts.geturl()
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{userinfo}@{host}").geturl()


def _url(
    raw: Mapping[str, str], key: str, schemes: tuple[str, ...], host_required: bool
) -> str | None:
    value = raw.get(PREFIX + key)
    if value is None:
        return None
    expected = " or ".join(f"{scheme}://" for scheme in schemes)
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as error:
        raise SettingsError(f"{PREFIX}{key}: must be a {expected} URL ({error})") from error
    shown = _shown(_url_masked(parts))
    if parts.scheme not in schemes:
        raise SettingsError(f"{PREFIX}{key}: must be a {expected} URL, got {shown}")
    if host_required and not parts.hostname:
        raise SettingsError(f"{PREFIX}{key}: must name a host, got {shown}")
    return value


# Bare driver names are accepted and given the async driver the persistence layer uses,
# because that is how hosting providers and other tools hand out database URLs.
DATABASE_SCHEMES_ASYNC = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def _query(key: str, url: str) -> dict[str, str]:
    """The URL's query parameters; a parameter given twice is an error (which one wins
    differs between the libraries that read it)."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name in values:
            raise SettingsError(f"{PREFIX}{key}: {name} is given more than once")
        values[name] = value
    return values


def _query_set(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    pairs = [(k, value if k == name else v) for k, v in pairs]
    return parts._replace(query=urlencode(pairs, quote_via=quote, safe="/")).geturl()


def _ca_file(key: str, value: str, directory: Path, what: str = "") -> str:
    """The absolute path of a readable file of PEM CA certificates."""
    where = f"{PREFIX}{key}: {what}" if what else f"{PREFIX}{key}:"
    path = (directory / value).resolve()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise SettingsError(f"{where} no readable file at {_shown(value)}")
    try:
        ca_file_check(str(path))
    except (OSError, ssl.SSLError):
        raise SettingsError(f"{where} {_shown(value)} holds no PEM CA certificate") from None
    return str(path)


def _postgres_tls(url: str, directory: Path) -> str:
    """The URL with its TLS parameters checked (libpq's names, see payportal.outgoing_tls)
    and a relative ``sslrootcert`` made absolute, so every process reads the same file."""
    key = "DATABASE_URL"
    query = _query(key, url)
    for name in sorted(query):
        if name == "ssl":
            raise SettingsError(f"{PREFIX}{key}: use sslmode= (libpq's name), not ssl=")
        if name.startswith("ssl") and name not in POSTGRES_TLS_PARAMS:
            known = ", ".join(POSTGRES_TLS_PARAMS)
            raise SettingsError(f"{PREFIX}{key}: {name} is not supported; the TLS parameters "
                                f"are {known}")  # fmt: skip
    root = query.get("sslrootcert")
    if root is not None and root != SYSTEM_CAS:
        root = _ca_file(key, root, directory, "sslrootcert:")
        url = _query_set(url, "sslrootcert", root)
    try:
        postgres_ssl(query.get("sslmode"), root)
    except ValueError as error:
        raise SettingsError(f"{PREFIX}{key}: {error}") from None
    return url


def _database_url(raw: Mapping[str, str], default: str, directory: Path) -> str:
    url = _url(raw, "DATABASE_URL", tuple(DATABASE_SCHEMES_ASYNC), host_required=False)
    if url is None:
        return default
    scheme, _, rest = url.partition("://")
    if scheme.startswith("postgres") and not urlsplit(url).hostname:
        raise SettingsError(
            f"{PREFIX}DATABASE_URL: must name a host, got {_shown(_url_masked(urlsplit(url)))}"
        )
    if scheme.startswith("sqlite") and not rest.startswith("/"):
        raise SettingsError(
            f"{PREFIX}DATABASE_URL: must be sqlite+aiosqlite:///<path to a file>, got {_shown(url)}"
        )
    url = f"{DATABASE_SCHEMES_ASYNC[scheme]}://{rest}"
    return _postgres_tls(url, directory) if scheme.startswith("postgres") else url


# redis-py's spellings of its ``ssl_cert_reqs`` values; anything else fails at connect.
REDIS_CERT_REQS = ("required", "optional", "none")


def _redis_url(raw: Mapping[str, str], directory: Path) -> str | None:
    key = "REDIS_URL"
    url = _url(raw, key, ("redis", "rediss", "unix"), host_required=False)
    if url is None:
        return None
    if not url.startswith("unix") and not urlsplit(url).hostname:
        raise SettingsError(
            f"{PREFIX}{key}: must name a host, got {_shown(_url_masked(urlsplit(url)))}"
        )
    # redis-py reads its TLS options (ssl_ca_certs, ssl_cert_reqs, …) from the URL itself.
    query = _query(key, url)
    tls_names = sorted(name for name in query if name.startswith("ssl"))
    if tls_names and not url.startswith("rediss://"):
        raise SettingsError(f"{PREFIX}{key}: {tls_names[0]} needs a rediss:// (TLS) URL")
    reqs = query.get("ssl_cert_reqs")
    if reqs is not None and reqs not in REDIS_CERT_REQS:
        raise SettingsError(f"{PREFIX}{key}: ssl_cert_reqs must be one of "
                            f"{', '.join(REDIS_CERT_REQS)}, got {_shown(reqs)}")  # fmt: skip
    if "ssl_ca_certs" in query:
        ca_file = _ca_file(key, query["ssl_ca_certs"], directory, "ssl_ca_certs:")
        url = _query_set(url, "ssl_ca_certs", ca_file)
    return url


# What ``starttls=`` in an smtp:// URL may say: the one way to stop a silent plain send.
SMTP_STARTTLS = ("required",)


def _smtp_url(raw: Mapping[str, str]) -> str | None:
    key = "SMTP_URL"
    url = _url(raw, key, ("smtp", "smtps"), host_required=True)
    if url is None:
        return None
    for name, value in _query(key, url).items():
        if name != "starttls":
            raise SettingsError(f"{PREFIX}{key}: unknown parameter {name}; "
                                "the one known is starttls=required")  # fmt: skip
        if value not in SMTP_STARTTLS:
            raise SettingsError(f"{PREFIX}{key}: starttls must be required, got {_shown(value)}")
        if url.startswith("smtps://"):
            raise SettingsError(f"{PREFIX}{key}: starttls is for smtp:// URLs; "
                                "smtps:// is TLS from the first byte")  # fmt: skip
    return url


def _smtp_ca_file(raw: Mapping[str, str], directory: Path, smtp_url: str | None) -> str | None:
    key = "SMTP_CA_FILE"
    value = raw.get(PREFIX + key)
    if value is None:
        return None
    if smtp_url is None:
        raise SettingsError(f"{PREFIX}{key}: is for {PREFIX}SMTP_URL's server, which is unset")
    return _ca_file(key, value, directory)


def _ray_address(raw: Mapping[str, str]) -> str | None:
    value = raw.get(PREFIX + "RAY_ADDRESS")
    if value is None or value == "auto":
        return value
    # host:port of a Ray head's GCS, or ray://host:port for Ray Client.
    parts = urlsplit(value if "://" in value else f"gcs://{value}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("gcs", "ray") or not parts.hostname or port is None:
        raise SettingsError(
            f"{PREFIX}RAY_ADDRESS: must be host:port, ray://host:port or auto, got {_shown(value)}"
        )
    return value


def _host(raw: Mapping[str, str]) -> str:
    value = raw.get(PREFIX + "HOST", "127.0.0.1")
    if any(character.isspace() or character in "/@" for character in value):
        raise SettingsError(f"{PREFIX}HOST: must be a host name or IP address, got {_shown(value)}")
    return value


def _readable_file(raw: Mapping[str, str], key: str, directory: Path) -> str | None:
    value = raw.get(PREFIX + key)
    if value is None:
        return None
    path = (directory / value).resolve()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise SettingsError(f"{PREFIX}{key}: no readable file at {_shown(value)}")
    return str(path)


def _tls(raw: Mapping[str, str], directory: Path, port: int) -> dict[str, Any]:
    cert = _readable_file(raw, "TLS_CERT_FILE", directory)
    key = _readable_file(raw, "TLS_KEY_FILE", directory)
    if (cert is None) != (key is None):
        missing = "TLS_KEY_FILE" if key is None else "TLS_CERT_FILE"
        raise SettingsError(f"{PREFIX}{missing}: needed with the other TLS file")
    redirect = None
    if PREFIX + "HTTP_REDIRECT_PORT" in raw:
        if cert is None:
            raise SettingsError(f"{PREFIX}HTTP_REDIRECT_PORT: redirects to HTTPS, which needs "
                                f"{PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE")  # fmt: skip
        redirect = _int(raw, "HTTP_REDIRECT_PORT", 0, 1, 65_535)
        if redirect == port:
            raise SettingsError(f"{PREFIX}HTTP_REDIRECT_PORT: must differ from {PREFIX}PORT")
    return {"tls_cert_file": cert, "tls_key_file": key,
            "tls_ca_file": _readable_file(raw, "TLS_CA_FILE", directory),
            "http_redirect_port": redirect}  # fmt: skip


def _data_keys(raw: Mapping[str, str], directory: Path) -> str | None:
    from payportal.persistence.sealing import SealingError, read_keks

    value = raw.get(PREFIX + "DATA_KEYS")
    if value is None:
        return None
    if value.startswith("file:"):
        path = Path(value[len("file:"):]).expanduser()
        value = f"file:{path if path.is_absolute() else directory / path}"
    try:
        read_keks(value)  # checked now: a bad key stops start-up with one line
    except SealingError as error:
        raise SettingsError(str(error)) from None
    return value


def _secret_key(raw: Mapping[str, str]) -> str | None:
    value = raw.get(PREFIX + "SECRET_KEY")
    if value is not None and len(value) < SECRET_KEY_LENGTH_MIN:
        # The length is safe to say; the value is not.
        raise SettingsError(
            f"{PREFIX}SECRET_KEY: must be at least {SECRET_KEY_LENGTH_MIN} characters, "
            f"got {len(value)}"
        )
    return value


def _processor(raw: Mapping[str, str]) -> str:
    value = raw.get(PREFIX + "PROCESSOR", "sandbox")
    if value not in PROCESSORS:
        raise SettingsError(
            f"{PREFIX}PROCESSOR: must be one of {', '.join(sorted(PROCESSORS))}, "
            f"got {_shown(value)}"
        )
    return value


# What each Stripe credential starts with: a secret or restricted key, a publishable key,
# a webhook signing secret. A value in the wrong setting is caught at start-up.
_STRIPE_PREFIXES = {
    "STRIPE_SECRET_KEY": ("sk_", "rk_"),
    "STRIPE_PUBLISHABLE_KEY": ("pk_",),
    "STRIPE_WEBHOOK_SECRETS": ("whsec_",),
}


def _stripe(raw: Mapping[str, str], processor: str) -> dict[str, Any]:
    """The Stripe settings; with PAYPORTAL_PROCESSOR=stripe each one is required. Errors
    name the setting and what it should start with, never the value (a secret)."""
    if processor != "stripe":
        return {}
    values: dict[str, Any] = {}
    for key, prefixes in _STRIPE_PREFIXES.items():
        value = raw.get(PREFIX + key)
        if value is None:
            raise SettingsError(f"{PREFIX}{key}: needed with {PREFIX}PROCESSOR=stripe")
        items = [item.strip() for item in value.split(",")] if key.endswith("S") else [value]
        for item in items:
            if not item.startswith(prefixes) or len(item) <= len(prefixes[0]) or any(
                c.isspace() for c in item
            ):
                raise SettingsError(
                    f"{PREFIX}{key}: must start with {' or '.join(prefixes)} "
                    f"(the value is not shown)"
                )
        values[key.lower()] = tuple(items) if key.endswith("S") else value
    url = _url(raw, "STRIPE_API_BASE", ("http", "https"), host_required=True)
    if url is not None:
        values["stripe_api_base"] = url.rstrip("/")
    return values


def _billing_timezone(raw: Mapping[str, str]) -> str:
    value = raw.get(PREFIX + "BILLING_TIMEZONE", "UTC")
    try:
        zoneinfo.ZoneInfo(value)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise SettingsError(
            f"{PREFIX}BILLING_TIMEZONE: must be an IANA time zone such as Europe/Berlin, "
            f"got {_shown(value)}"
        ) from None
    return value


def _trusted_proxies(
    raw: Mapping[str, str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated addresses or CIDR networks (``10.0.0.0/8, 192.0.2.7``)."""
    value = raw.get(PREFIX + "TRUSTED_PROXIES")
    if value is None:
        return ()
    networks = []
    for item in value.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError:
            raise SettingsError(
                f"{PREFIX}TRUSTED_PROXIES: must be comma-separated IP addresses or CIDR "
                f"networks, got {_shown(item.strip())}"
            ) from None
    return tuple(networks)


# -- the persisted secret key ---------------------------------------------------------


def _secret_key_file_load_or_create(path: Path) -> str:
    try:
        return _secret_key_file_load(path)
    except FileNotFoundError:
        pass
    _private_file_create(path, secrets.token_urlsafe(48) + "\n")
    return _secret_key_file_load(path)


def _private_file_create(path: Path, content: str) -> None:
    """``content`` at ``path`` (mode 600) unless another process created it first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written whole to a private temporary file, then linked into place: a concurrent
    # reader sees no file or the complete key, never a half-written one, and link()
    # refuses to replace a key another process linked first.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="ascii") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _secret_key_file_load(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError(f"{PREFIX}SECRET_KEY: {path} is readable by other users; chmod 600 it")
    key = path.read_text(encoding="ascii").strip()
    if len(key) < SECRET_KEY_LENGTH_MIN:
        raise SettingsError(
            f"{PREFIX}SECRET_KEY: {path} holds a key shorter than "
            f"{SECRET_KEY_LENGTH_MIN} characters; delete it to generate a new one"
        )
    return key
