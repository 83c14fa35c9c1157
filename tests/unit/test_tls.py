"""The front door's TLS context (payportal.tls): TLS 1.2 at least, no compression, and a
reload that refuses a broken pair while keeping the working one."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from payportal.tls import make_dev_cert, reload, server_context


def test_the_context_refuses_anything_below_tls_1_2(tmp_path: Path) -> None:
    made = make_dev_cert(tmp_path)
    context = server_context(str(made.cert_file), str(made.key_file))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    suites = {suite["name"] for suite in context.get_ciphers()}
    assert all(("ECDHE" in name or name.startswith("TLS_")) for name in suites), suites
    assert not any("CBC" in name or "SHA1" in name.split("-")[-1] for name in suites), suites


def test_a_broken_renewal_keeps_the_working_pair(tmp_path: Path) -> None:
    made = make_dev_cert(tmp_path)
    context = server_context(str(made.cert_file), str(made.key_file))
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    with pytest.raises(ssl.SSLError):
        reload(context, str(broken), str(made.key_file))
    other = make_dev_cert(tmp_path / "renewed")
    reload(context, str(other.cert_file), str(other.key_file))  # a good renewal loads


def test_the_certificate_names_this_machine(tmp_path: Path) -> None:
    from cryptography import x509

    made = make_dev_cert(tmp_path)
    cert = x509.load_pem_x509_certificate(made.cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert made.key_file.stat().st_mode & 0o077 == 0
