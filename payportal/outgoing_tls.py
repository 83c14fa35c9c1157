"""TLS for the connections payportal opens: PostgreSQL, Redis, SMTP and the processor.

The rule: a connection that uses TLS verifies the certificate of what it connects to,
with each client library's own TLS options, and nothing in payportal turns verification
off. Where a URL or setting says which CA to trust, only the deployment's own words can
weaken that, never a default:

- PostgreSQL: libpq's ``sslmode`` and ``sslrootcert`` in the database URL, translated by
  ``postgres_ssl`` into the ``ssl`` argument of asyncpg (which SQLAlchemy would otherwise
  pass through as keywords asyncpg does not know). ``verify-full`` checks the CA and the
  host name, ``verify-ca`` the CA only; ``require`` encrypts without verifying, exactly
  as libpq does (and, as in libpq, verifies the CA when ``sslrootcert`` is given);
  ``disable``, ``allow`` and ``prefer`` keep libpq's meanings (asyncpg implements them).
  No ``sslmode`` leaves asyncpg's default, which is libpq's: ``prefer``, or ``PGSSLMODE``.
- Redis: ``rediss://`` is TLS with redis-py's defaults (certificate required, host name
  checked); ``ssl_ca_certs=<file>`` in the URL adds a CA for a private server. redis-py
  reads the URL itself, so every process that opens the URL trusts the same CA.
- SMTP: ``smtps://`` is TLS from the first byte; ``smtp://…?starttls=required`` fails
  when the server does not offer STARTTLS instead of sending in the clear (plain
  ``smtp://`` upgrades when offered). A CA file for a private relay is a setting.
- The processor: HTTPS with the system's CAs (``SSL_CERT_FILE`` honoured) plus an
  optional CA file; plain HTTP is for the sandbox on this machine.

Ray's traffic between machines is Ray's own, with Ray's settings (docs/operations.md).
"""

from __future__ import annotations

import ssl
from typing import Final

__all__ = [
    "POSTGRES_SSL_MODES",
    "POSTGRES_TLS_PARAMS",
    "SYSTEM_CAS",
    "ca_file_check",
    "https_context",
    "postgres_ssl",
]

# libpq's modes, weakest first.
POSTGRES_SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# The URL parameters translated here; removed before the rest reach asyncpg.
POSTGRES_TLS_PARAMS: Final = ("sslmode", "sslrootcert")
# ``sslrootcert=system``: the operating system's CAs (PostgreSQL 16's libpq spelling).
SYSTEM_CAS: Final = "system"


def postgres_ssl(sslmode: str | None, sslrootcert: str | None) -> ssl.SSLContext | str | None:
    """asyncpg's ``ssl`` argument for libpq's ``sslmode``/``sslrootcert``: a verifying
    context, one of asyncpg's own mode names, or None for asyncpg's default.

    ``ValueError`` (one line) for a mode libpq does not know, and for a combination that
    would quietly verify less than it reads as if it does."""
    if sslmode is None:
        if sslrootcert is None:
            return None
        if sslrootcert != SYSTEM_CAS:
            # libpq would connect with prefer and ignore the file: not what it reads as.
            raise ValueError("sslrootcert needs sslmode=verify-full (or verify-ca)")
        sslmode = "verify-full"  # what libpq 16 makes of sslrootcert=system alone
    if sslmode not in POSTGRES_SSL_MODES:
        raise ValueError(f"sslmode must be one of {', '.join(POSTGRES_SSL_MODES)}, "
                         f"got {sslmode!r}")  # fmt: skip
    if sslrootcert == SYSTEM_CAS and sslmode != "verify-full":
        # Any public CA vouches for some name: only the host name check makes it ours.
        raise ValueError(f"sslrootcert=system needs sslmode=verify-full, got {sslmode}")
    if sslmode in ("verify-ca", "verify-full"):
        if sslrootcert is None:
            raise ValueError(f"sslmode={sslmode} needs sslrootcert=<CA file> "
                             "(or sslrootcert=system)")  # fmt: skip
        return _verifying(sslrootcert, host_name=sslmode == "verify-full")
    if sslrootcert is not None:
        if sslmode == "require":
            return _verifying(sslrootcert, host_name=False)  # libpq's rule for require + CA
        raise ValueError(f"sslrootcert is not used with sslmode={sslmode}; "
                         "use verify-full or verify-ca")  # fmt: skip
    return sslmode


def _verifying(ca_file: str, *, host_name: bool) -> ssl.SSLContext:
    if ca_file == SYSTEM_CAS:
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(cafile=ca_file)
    # create_default_context requires a certificate; verify-ca alone skips the name.
    context.check_hostname = host_name
    return context


def ca_file_check(path: str) -> None:
    """Raise ``OSError``/``ssl.SSLError`` unless ``path`` holds PEM CA certificates."""
    ssl.create_default_context(cafile=path)


def https_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context for HTTPS: the system's CAs (``SSL_CERT_FILE`` honoured, as
    OpenSSL does), plus ``ca_file`` when given, e.g. a development CA."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context
