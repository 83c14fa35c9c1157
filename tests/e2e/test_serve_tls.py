"""``payportal serve`` terminating TLS with a certificate from ``payportal dev-cert``: the
API over HTTPS with HSTS, a client that does not trust the CA refused, a forward-secret
suite for TLS 1.2, plain HTTP on the redirect port sent to HTTPS (method kept), the
embedded sandbox over HTTPS with the same certificate, and a payment whose processor
callback reached the front door over HTTPS."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from payportal.tls import make_dev_cert
from tests.serve_process import free_port, serving

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# The processor's callback follows its answer by milliseconds; a loaded box, more.
CALLBACK_WAIT_S = 30.0


def _https(port: int, context: ssl.SSLContext, method: str, path: str, body: Any = None,
           **headers: str) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        named = {name.replace("_", "-"): value for name, value in headers.items()}
        connection.request(method, path, body=payload,
                           headers={"content-type": "application/json", **named})
        response = connection.getresponse()
        raw = response.read()
        return response.status, dict(response.getheaders()), (json.loads(raw) if raw else None)
    finally:
        connection.close()


def _plain(port: int, method: str, path: str) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=b"{}" if method == "POST" else None)
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def test_serve_over_https_with_a_development_certificate(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "payportal", "dev-cert", "--directory", str(tmp_path / "tls")],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert "PAYPORTAL_TLS_CERT_FILE=" in made.stdout
    ca, cert, key = (tmp_path / "tls" / name for name in ("ca.pem", "cert.pem", "key.pem"))
    assert key.stat().st_mode & 0o077 == 0, "the private key is readable by its owner only"
    redirect_port = free_port()
    env = {"PAYPORTAL_TLS_CERT_FILE": str(cert), "PAYPORTAL_TLS_KEY_FILE": str(key),
           "PAYPORTAL_TLS_CA_FILE": str(ca), "PAYPORTAL_HTTP_REDIRECT_PORT": str(redirect_port),
           "PAYPORTAL_BILLING_INTERVAL_S": "0"}  # fmt: skip
    with serving(tmp_path, env=env) as served:
        port = served.port
        assert f"https://127.0.0.1:{port}" in served.banner
        trusting = ssl.create_default_context(cafile=str(ca))

        status, headers, body = _https(port, trusting, "GET", "/healthz")
        assert status == 200, body
        assert headers["Strict-Transport-Security"] == "max-age=31536000"

        # A client with only the system's CAs refuses the development certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            _https(port, ssl.create_default_context(), "GET", "/healthz")

        # A TLS 1.2 client is given a forward-secret AEAD suite.
        twelve = ssl.create_default_context(cafile=str(ca))
        twelve.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                twelve.wrap_socket(raw, server_hostname="127.0.0.1") as secured:  # fmt: skip
            suite, version, _ = secured.cipher()
        assert version == "TLSv1.2"
        assert suite.startswith(("ECDHE-ECDSA-AES", "ECDHE-ECDSA-CHACHA20")), suite

        # Plain HTTP on the HTTPS port gets no answer, never the API in clear.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = raw.recv(4096)
        assert b"200 OK" not in answer

        # The redirect port sends every request to HTTPS, a POST as a POST (308).
        status, headers = _plain(redirect_port, "POST", "/v1/payments?x=1")
        assert status == 308
        assert headers["Location"] == f"https://127.0.0.1:{port}/v1/payments?x=1"

        payer = re.search(r"payer login\s+(\S+) / (\S+)", served.banner)
        assert payer is not None, served.banner
        _, _, session = _https(port, trusting, "POST", "/v1/payer/sessions",
                               {"email": payer.group(1), "password": payer.group(2)})  # fmt: skip
        # The sandbox the portal's pages frame is HTTPS too, with the same certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            _sandbox_token(served.sandbox_port, ssl.create_default_context())
        card = json.loads(_sandbox_token(served.sandbox_port, trusting))
        status, _, payment = _https(
            port, trusting, "POST", "/v1/payments",
            {"account": "acct_demo_acme", "amount": 500, "currency": "USD",
             "token": card["token"]},
            Authorization=f"Bearer {session['token']}", Idempotency_Key="tls-1",
        )  # fmt: skip
        assert status in (200, 201), payment
        assert payment["status"] == "succeeded"

        # Its callback came back over HTTPS: the sandbox trusted the CA it was given.
        database = tmp_path / "var" / "payportal.db"
        deadline = time.monotonic() + CALLBACK_WAIT_S
        while not _callbacks_received(database):
            assert time.monotonic() < deadline, "no processor callback arrived over HTTPS"
            time.sleep(0.2)

        # A renewal: new files in place, then SIGHUP. The front door and the sandbox it
        # started both present the new certificate to new connections.
        renewed = make_dev_cert(tmp_path / "renewed")
        cert.write_bytes(renewed.cert_file.read_bytes())
        key.write_bytes(renewed.key_file.read_bytes())
        os.kill(served.pid, signal.SIGHUP)
        trusts_renewed = ssl.create_default_context(cafile=str(renewed.ca_file))
        deadline = time.monotonic() + CALLBACK_WAIT_S
        while True:
            try:
                assert _https(port, trusts_renewed, "GET", "/healthz")[0] == 200
                assert "token" in json.loads(_sandbox_token(served.sandbox_port, trusts_renewed))
                break
            except ssl.SSLCertVerificationError:
                assert time.monotonic() < deadline, "the renewed certificate was not served"
                time.sleep(0.2)
    assert "not delivered" not in served.output()


def _sandbox_token(sandbox_port: int, context: ssl.SSLContext) -> str:
    connection = http.client.HTTPSConnection("127.0.0.1", sandbox_port, context=context,
                                             timeout=30)  # fmt: skip
    try:
        connection.request("POST", "/v1/tokens", body=json.dumps({
            "type": "card", "number": "4242424242424242", "exp_month": 12, "exp_year": 2035,
            "cvc": "123"}), headers={"content-type": "application/json"})  # fmt: skip
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def _callbacks_received(database: Path) -> bool:
    connection = sqlite3.connect(database)
    try:
        return bool(connection.execute("SELECT count(*) FROM processor_callbacks").fetchone()[0])
    finally:
        connection.close()
