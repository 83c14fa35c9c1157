"""TLS for the front door: the server context, its reload, and a local development CA.

The model: ``serve`` terminates TLS itself when ``PAYPORTAL_TLS_CERT_FILE`` and
``PAYPORTAL_TLS_KEY_FILE`` are set (a proxy in front stays possible, see the README's
``PAYPORTAL_TRUSTED_PROXIES``). The context accepts TLS 1.2 and 1.3 only, with forward
secret AEAD suites for 1.2 (1.3's suites are all of that kind), no compression, and the
server's preference order. ``reload`` loads the files again into the same context, so
new connections get a renewed certificate (SIGHUP) while open ones keep theirs.

``payportal dev-cert`` makes a local CA and a certificate it signed for localhost and
127.0.0.1 with the ``cryptography`` package, so HTTPS can be tried in one step; the CA's
certificate is what a client (curl ``--cacert``, the sandbox's callbacks) must trust.

The embedded sandbox serves HTTPS with the front door's pair (a browser frames its card
fields in the portal's pages), so the certificate must name the address serve calls it
on, as it must for the sandbox's callbacks to the front door;
``payportal.outgoing_tls.https_context`` is how the server side trusts
``PAYPORTAL_TLS_CA_FILE`` when calling it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["DevCert", "make_dev_cert", "reload", "server_context"]

# TLS 1.2 suites with forward secrecy and an AEAD cipher; 1.3 needs no list.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
# A development certificate outlives a laptop's project, not a year of browsers' limits.
DEV_CERT_DAYS: Final = 397
DEV_CA_DAYS: Final = 3650


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The front door's context; raises ``ssl.SSLError``/``OSError`` for unusable files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(cert_file, key_file)
    return context


def reload(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load renewed files into ``context``; the old pair stays if the new one is broken."""
    server_context(cert_file, key_file)  # refuses a broken pair before touching the live one
    context.load_cert_chain(cert_file, key_file)


@dataclass(frozen=True)
class DevCert:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_dev_cert(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
                  ) -> DevCert:  # fmt: skip
    """A new CA and a server certificate it signed for ``hosts``, written to
    ``directory`` (keys readable by their owner only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payportal development CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DEV_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DEV_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    files = DevCert(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca_file.write_bytes(ca.public_bytes(pem))
    files.cert_file.write_bytes(cert.public_bytes(pem))
    _write_private(files.key_file, key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    # The CA's key is not kept: nothing else is ever signed with it.
    return files


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
