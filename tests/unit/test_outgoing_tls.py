"""Outgoing TLS (payportal.outgoing_tls): every client payportal builds verifies what it
connects to. For PostgreSQL, Redis, SMTP and the processor, a small TLS server on
127.0.0.1 shows a certificate from a CA the client does not trust (refused, with the
certificate-verification error) and then one from the CA it was told to trust (the
handshake completes). The fakes speak just enough of each protocol to get past the
handshake; what is tested is our clients' TLS configuration, not the servers.

Also: the settings that carry TLS options are checked at start-up, STARTTLS required
is never a plain send, and a scan keeps verification-off switches out of payportal/."""

from __future__ import annotations

import asyncio
import re
import ssl
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiosmtplib
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from sqlalchemy.pool import NullPool

from payportal.config import SettingsError, load_settings
from payportal.http.ratelimit import RateLimits
from payportal.live._redis import RedisStatusStreams
from payportal.mail.sender import smtp_client, smtp_target
from payportal.outgoing_tls import postgres_ssl
from payportal.persistence._engine import asyncpg_connect_args, create_engine_for
from payportal.processors.sandbox_client import SandboxProcessor
from payportal.tls import make_dev_cert, server_context

PACKAGE = Path(__file__).resolve().parents[2] / "payportal"
# Every client here gives up quickly: the servers are on loopback and answer at once.
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Pki:
    server: ssl.SSLContext  # a certificate for localhost and 127.0.0.1, signed by `ca`
    ca: str
    stranger_ca: str  # a CA that signed nothing the servers show
    elsewhere: ssl.SSLContext  # a certificate for db.example.com only, signed by `elsewhere_ca`
    elsewhere_ca: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    made = make_dev_cert(base / "server")
    stranger = make_dev_cert(base / "stranger")
    elsewhere = make_dev_cert(base / "elsewhere", hosts=("db.example.com",))
    return Pki(
        server=server_context(str(made.cert_file), str(made.key_file)), ca=str(made.ca_file),
        stranger_ca=str(stranger.ca_file),
        elsewhere=server_context(str(elsewhere.cert_file), str(elsewhere.key_file)),
        elsewhere_ca=str(elsewhere.ca_file),
    )  # fmt: skip


def _verification_failed(error: BaseException | None) -> bool:
    """Whether ``error`` or anything it was raised from is a failed certificate check
    (libraries wrap it in their own connection errors)."""
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Fake:
    port: int
    handshakes: int = 0  # TLS handshakes the server completed
    commands: list[bytes] | None = None


async def _serve(handler: Handler, *, context: ssl.SSLContext | None = None
                 ) -> AsyncGenerator[int, None]:  # fmt: skip
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that refused the certificate hangs up mid-handshake
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# -- PostgreSQL ---------------------------------------------------------------------------

# The first message of a TLS connection to PostgreSQL: length 8, code 80877103.
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
HANDSHAKE_DONE = "fake server: TLS handshake completed"


def _pg_error(code: str, message: str) -> bytes:
    fields = b"".join(kind + value.encode() + b"\0"
                      for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code),
                                          (b"M", message)))  # fmt: skip
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


@pytest.fixture
async def fake_postgres(pki: Pki) -> AsyncIterator[Callable[[ssl.SSLContext], Awaitable[Fake]]]:
    """Answers asyncpg's SSLRequest with S, does the TLS handshake with the given
    certificate, then refuses the login with a message that says the handshake worked."""
    stack: list[AsyncGenerator[int, None]] = []

    async def start(context: ssl.SSLContext) -> Fake:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if await reader.readexactly(8) != SSL_REQUEST:
                writer.write(_pg_error("08P01", "fake server: TLS was not asked for"))
                await writer.drain()
                return
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(context)
            fake.handshakes += 1
            await reader.read(4096)  # the startup message, now encrypted
            writer.write(_pg_error("28000", HANDSHAKE_DONE))
            await writer.drain()

        served = _serve(handler)
        stack.append(served)
        fake = Fake(port=await anext(served))
        return fake

    yield start
    for served in stack:
        await served.aclose()


async def _postgres_connect(how: str, url: str) -> BaseException:
    """Connect the way payportal does (its engine, or a plain asyncpg connection as the
    store's pool and the mail sender's LISTEN open), and return what it raised."""
    try:
        if how == "engine":
            engine = create_engine_for(url, poolclass=NullPool)
            try:
                async with engine.connect():
                    pass
            finally:
                await engine.dispose()
        else:
            dsn, tls = asyncpg_connect_args(url)
            await asyncpg.connect(dsn, timeout=TIMEOUT_S, **tls)
    except Exception as error:
        return error
    raise AssertionError("the fake server refuses every login")


@pytest.mark.parametrize("how", ["engine", "asyncpg"])
async def test_postgres_verify_full_refuses_an_untrusted_certificate(
    pki: Pki, fake_postgres: Callable[[ssl.SSLContext], Awaitable[Fake]], how: str
) -> None:
    fake = await fake_postgres(pki.server)
    base = f"postgresql+asyncpg://app@127.0.0.1:{fake.port}/payportal?sslmode=verify-full"

    refused = await _postgres_connect(how, f"{base}&sslrootcert={pki.stranger_ca}")
    trusted = await _postgres_connect(how, f"{base}&sslrootcert={pki.ca}")

    assert _verification_failed(refused), repr(refused)
    assert HANDSHAKE_DONE in str(trusted), repr(trusted)
    assert fake.handshakes == 1


async def test_postgres_verify_full_checks_the_host_name_and_verify_ca_does_not(
    pki: Pki, fake_postgres: Callable[[ssl.SSLContext], Awaitable[Fake]]
) -> None:
    fake = await fake_postgres(pki.elsewhere)  # a certificate for db.example.com
    base = f"postgresql+asyncpg://app@127.0.0.1:{fake.port}/payportal?sslrootcert={pki.elsewhere_ca}"

    full = await _postgres_connect("engine", f"{base}&sslmode=verify-full")
    ca_only = await _postgres_connect("engine", f"{base}&sslmode=verify-ca")

    assert _verification_failed(full), repr(full)
    assert "match" in str(full) or "mismatch" in str(full.__cause__ or full), repr(full)
    assert HANDSHAKE_DONE in str(ca_only), repr(ca_only)


async def test_postgres_require_encrypts_without_verifying_as_libpq_does(
    pki: Pki, fake_postgres: Callable[[ssl.SSLContext], Awaitable[Fake]]
) -> None:
    fake = await fake_postgres(pki.server)
    base = f"postgresql+asyncpg://app@127.0.0.1:{fake.port}/payportal?sslmode=require"

    unverified = await _postgres_connect("engine", base)
    # With a root CA, require verifies it (libpq's rule, kept for old configurations).
    with_ca = await _postgres_connect("engine", f"{base}&sslrootcert={pki.stranger_ca}")

    assert HANDSHAKE_DONE in str(unverified), repr(unverified)
    assert _verification_failed(with_ca), repr(with_ca)


def test_libpq_modes_translate_to_asyncpg_arguments(pki: Pki) -> None:
    full = postgres_ssl("verify-full", pki.ca)
    ca_only = postgres_ssl("verify-ca", pki.ca)
    system = postgres_ssl(None, "system")

    assert isinstance(full, ssl.SSLContext)
    assert full.check_hostname
    assert full.verify_mode is ssl.CERT_REQUIRED
    assert isinstance(ca_only, ssl.SSLContext)
    assert not ca_only.check_hostname
    assert ca_only.verify_mode is ssl.CERT_REQUIRED
    assert isinstance(system, ssl.SSLContext)
    assert system.check_hostname
    # asyncpg implements these as libpq defines them; no sslmode keeps its default (prefer).
    assert [postgres_ssl(mode, None) for mode in ("disable", "allow", "prefer", "require")] == [
        "disable", "allow", "prefer", "require"]  # fmt: skip
    assert postgres_ssl(None, None) is None


@pytest.mark.parametrize(("query", "says"), [
    ("sslmode=verify-everything", "sslmode must be one of"),
    ("sslmode=verify-full", "needs sslrootcert"),
    ("sslrootcert=CA", "sslrootcert needs sslmode"),
    ("sslmode=prefer&sslrootcert=CA", "not used with sslmode=prefer"),
    ("sslmode=verify-ca&sslrootcert=system", "sslrootcert=system needs sslmode=verify-full"),
    ("sslmode=verify-full&sslrootcert=missing/ca.pem", "no readable file"),
    ("sslmode=verify-full&sslrootcert=NOT_PEM", "holds no PEM CA certificate"),
    ("ssl=require", "use sslmode="),
    ("sslmode=require&sslcert=client.pem", "sslcert is not supported"),
    ("sslmode=require&sslmode=disable", "given more than once"),
])  # fmt: skip
def test_a_database_url_with_bad_tls_parameters_stops_start_up(
    tmp_path: Path, pki: Pki, query: str, says: str
) -> None:
    (tmp_path / "not.pem").write_text("not a certificate\n")
    query = query.replace("=CA", f"={pki.ca}").replace("NOT_PEM", str(tmp_path / "not.pem"))
    url = f"postgresql://app@db.internal/payportal?{query}"

    with pytest.raises(SettingsError) as raised:
        load_settings({"PAYPORTAL_DATABASE_URL": url}, cwd=tmp_path)

    assert str(raised.value).startswith("PAYPORTAL_DATABASE_URL: "), raised.value
    assert says in str(raised.value)


def test_a_relative_root_certificate_is_made_absolute(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "ca.pem").write_bytes(Path(pki.ca).read_bytes())
    url = "postgres://app@db.internal/payportal?sslmode=verify-full&sslrootcert=ca.pem"

    settings = load_settings({"PAYPORTAL_DATABASE_URL": url}, cwd=tmp_path)

    assert settings.database_url == (
        "postgresql+asyncpg://app@db.internal/payportal?sslmode=verify-full"
        f"&sslrootcert={tmp_path.resolve() / 'ca.pem'}"
    )


# -- Redis --------------------------------------------------------------------------------


async def _redis_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RESP: PING is answered PONG, anything else (redis-py's CLIENT SETINFO) OK."""
    while line := await reader.readline():
        count = int(line[1:])
        words = []
        for _ in range(count):
            size = int((await reader.readline())[1:])
            words.append((await reader.readexactly(size + 2))[:-2])
        writer.write(b"+PONG\r\n" if words[0].upper() == b"PING" else b"+OK\r\n")
        await writer.drain()


@pytest.fixture
async def redis_tls_port(pki: Pki) -> AsyncIterator[int]:
    served = _serve(_redis_handler, context=pki.server)
    yield await anext(served)
    await served.aclose()


async def test_rediss_refuses_an_untrusted_certificate(
    tmp_path: Path, pki: Pki, redis_tls_port: int
) -> None:
    url = f"rediss://127.0.0.1:{redis_tls_port}/0?socket_connect_timeout={TIMEOUT_S}"
    refused = load_settings({"PAYPORTAL_REDIS_URL": url}, cwd=tmp_path).redis_url
    trusting = load_settings({"PAYPORTAL_REDIS_URL": f"{url}&ssl_ca_certs={pki.ca}"},
                             cwd=tmp_path).redis_url  # fmt: skip
    assert refused is not None
    assert trusting is not None

    streams = RedisStatusStreams.from_url(refused)
    try:
        with pytest.raises(Exception) as raised:
            await streams._redis.ping()
    finally:
        await streams._redis.aclose()
    assert _verification_failed(raised.value), repr(raised.value)

    streams = RedisStatusStreams.from_url(trusting)
    try:
        assert await streams._redis.ping() is True
    finally:
        await streams._redis.aclose()


async def test_rate_limits_on_rediss_verify_the_server(pki: Pki, redis_tls_port: int) -> None:
    url = f"rediss://127.0.0.1:{redis_tls_port}/0?socket_connect_timeout={TIMEOUT_S}"
    refused = RateLimits.on_redis(url)
    trusting = RateLimits.on_redis(f"{url}&ssl_ca_certs={pki.ca}")
    try:
        # The limits library's health check: False when it cannot talk to the server.
        assert await refused.storage.check() is False
        assert await trusting.storage.check() is True
    finally:
        await refused.close()
        await trusting.close()


@pytest.mark.parametrize(("url", "says"), [
    ("redis://cache:6379/0?ssl_ca_certs=CA", "ssl_ca_certs needs a rediss://"),
    ("rediss://cache:6380/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs must be one of"),
    ("rediss://cache:6380/0?ssl_ca_certs=missing/ca.pem", "no readable file"),
])  # fmt: skip
def test_a_redis_url_with_bad_tls_parameters_stops_start_up(
    tmp_path: Path, pki: Pki, url: str, says: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"PAYPORTAL_REDIS_URL": url.replace("=CA", f"={pki.ca}")}, cwd=tmp_path)

    assert str(raised.value).startswith("PAYPORTAL_REDIS_URL: "), raised.value
    assert says in str(raised.value)


# -- SMTP ---------------------------------------------------------------------------------


def _smtp_handler(fake: Fake, *, starttls: ssl.SSLContext | None) -> Handler:
    """Enough ESMTP for a client to connect: a greeting, EHLO (offering STARTTLS when
    ``starttls`` is given), STARTTLS, QUIT; every command is recorded."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if writer.get_extra_info("sslcontext") is not None:
            fake.handshakes += 1  # implicit TLS: the handshake is done before this runs
        writer.write(b"220 fake ESMTP\r\n")
        await writer.drain()
        while line := await reader.readline():
            verb = line.split(b" ")[0].strip().upper()
            assert fake.commands is not None
            fake.commands.append(verb)
            if verb == b"EHLO":
                offered = b"250-STARTTLS\r\n" if starttls is not None else b""
                writer.write(b"250-fake\r\n" + offered + b"250 8BITMIME\r\n")
            elif verb == b"STARTTLS" and starttls is not None:
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(starttls)
                fake.handshakes += 1
                continue
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 OK\r\n" if verb in (b"NOOP", b"RSET") else b"502 no\r\n")
            await writer.drain()

    return handler


@pytest.fixture
async def fake_smtp() -> AsyncIterator[Callable[..., Awaitable[Fake]]]:
    stack: list[AsyncGenerator[int, None]] = []

    async def start(*, implicit: ssl.SSLContext | None = None,
                    starttls: ssl.SSLContext | None = None) -> Fake:  # fmt: skip
        fake = Fake(port=0, commands=[])
        served = _serve(_smtp_handler(fake, starttls=starttls), context=implicit)
        stack.append(served)
        fake.port = await anext(served)
        return fake

    yield start
    for served in stack:
        await served.aclose()


async def _smtp_connect(url: str, ca_file: str | None) -> BaseException | None:
    smtp = smtp_client(smtp_target(url, ca_file=ca_file), timeout_s=TIMEOUT_S)
    try:
        await smtp.connect()
    except Exception as error:
        return error
    assert smtp.get_transport_info("peercert") is not None, "connected without TLS"
    await smtp.quit()
    return None


async def test_smtps_verifies_the_server(
    pki: Pki, fake_smtp: Callable[..., Awaitable[Fake]]
) -> None:
    fake = await fake_smtp(implicit=pki.server)
    url = f"smtps://127.0.0.1:{fake.port}"

    refused = await _smtp_connect(url, pki.stranger_ca)
    trusted = await _smtp_connect(url, pki.ca)

    assert _verification_failed(refused), repr(refused)
    assert trusted is None, repr(trusted)


async def test_starttls_required_verifies_the_server(
    pki: Pki, fake_smtp: Callable[..., Awaitable[Fake]]
) -> None:
    fake = await fake_smtp(starttls=pki.server)
    url = f"smtp://127.0.0.1:{fake.port}?starttls=required"

    refused = await _smtp_connect(url, pki.stranger_ca)
    trusted = await _smtp_connect(url, pki.ca)

    assert _verification_failed(refused), repr(refused)
    assert trusted is None, repr(trusted)
    assert fake.handshakes == 1


async def test_starttls_required_refuses_a_server_that_does_not_offer_it(
    pki: Pki, fake_smtp: Callable[..., Awaitable[Fake]]
) -> None:
    fake = await fake_smtp()  # plain, no STARTTLS in its EHLO

    refused = await _smtp_connect(f"smtp://127.0.0.1:{fake.port}?starttls=required", pki.ca)

    assert isinstance(refused, aiosmtplib.SMTPException), repr(refused)
    assert "STARTTLS" in str(refused)
    assert fake.commands == [b"EHLO"], "nothing but EHLO went out in the clear"


def test_a_password_for_another_machine_is_sent_only_after_starttls() -> None:
    remote = smtp_target("smtp://mailer:secret@smtp.example.com:587")
    local = smtp_target("smtp://mailer:secret@127.0.0.1:2525")
    anonymous = smtp_target("smtp://smtp.example.com:25")
    required = smtp_target("smtp://smtp.example.com:25?starttls=required", ca_file="ca.pem")

    assert remote.start_tls is True
    assert local.start_tls is None
    assert anonymous.start_tls is None
    assert (required.start_tls, required.ca_file) == (True, "ca.pem")
    assert "secret" not in repr(remote)


@pytest.mark.parametrize(("environ", "key", "says"), [
    ({"PAYPORTAL_SMTP_URL": "smtp://mail:25?starttls=yes"}, "SMTP_URL",
     "starttls must be required"),
    ({"PAYPORTAL_SMTP_URL": "smtps://mail:465?starttls=required"}, "SMTP_URL",
     "starttls is for smtp://"),
    ({"PAYPORTAL_SMTP_URL": "smtp://mail:25?tls=1"}, "SMTP_URL", "unknown parameter tls"),
    ({"PAYPORTAL_SMTP_CA_FILE": "ca.pem"}, "SMTP_CA_FILE", "SMTP_URL's server, which is unset"),
    ({"PAYPORTAL_SMTP_URL": "smtps://mail:465", "PAYPORTAL_SMTP_CA_FILE": "missing.pem"},
     "SMTP_CA_FILE", "no readable file"),
])  # fmt: skip
def test_bad_smtp_tls_settings_stop_start_up(
    tmp_path: Path, environ: dict[str, str], key: str, says: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ, cwd=tmp_path)

    assert str(raised.value).startswith(f"PAYPORTAL_{key}: "), raised.value
    assert says in str(raised.value)


# -- the processor ------------------------------------------------------------------------


@pytest.fixture
async def https_processor(pki: Pki) -> AsyncIterator[int]:
    app = web.Application()
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _processor_get(processor: SandboxProcessor, url: str) -> BaseException | int:
    try:
        async with processor._client().get(url, timeout=aiohttp.ClientTimeout(TIMEOUT_S)) as r:
            return r.status
    except Exception as error:
        return error
    finally:
        await processor.close()


async def test_an_https_processor_is_verified(
    tmp_path: Path, pki: Pki, https_processor: int
) -> None:
    url = f"https://localhost:{https_processor}"
    settings = load_settings({"PAYPORTAL_SANDBOX_URL": url, "PAYPORTAL_TLS_CA_FILE": pki.ca},
                             cwd=tmp_path)  # fmt: skip

    refused = await _processor_get(SandboxProcessor(url), f"{url}/healthz")
    wrong_ca = await _processor_get(SandboxProcessor(url, ca_file=pki.stranger_ca),
                                    f"{url}/healthz")  # fmt: skip
    trusted = await _processor_get(SandboxProcessor.from_settings(settings), f"{url}/healthz")

    assert isinstance(refused, aiohttp.ClientConnectorCertificateError), repr(refused)
    assert isinstance(wrong_ca, aiohttp.ClientConnectorCertificateError), repr(wrong_ca)
    assert trusted == 200


async def test_the_processor_honours_ssl_cert_file(
    pki: Pki, https_processor: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca)
    url = f"https://127.0.0.1:{https_processor}"

    assert await _processor_get(SandboxProcessor(url), f"{url}/healthz") == 200


# -- nothing turns verification off ---------------------------------------------------------

# Ways to switch certificate verification off in the libraries payportal uses.
VERIFICATION_OFF = re.compile(
    r"\bssl\s*=\s*False\b|CERT_NONE|CERT_OPTIONAL|verify_ssl\s*=\s*False|_create_unverified"
    r"|check_hostname\s*=\s*False|validate_certs\s*=\s*False|ssl_cert_reqs\s*=\s*\S*none"
    r"|verify_mode\s*=|PYTHONHTTPSVERIFY"
)


def test_nothing_in_payportal_turns_certificate_verification_off() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if VERIFICATION_OFF.search(line)
    ]
    assert found == [], "certificate verification turned off:\n" + "\n".join(found)
