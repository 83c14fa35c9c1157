"""The origin the pay and methods pages give the processor's card fields (where they post
the token back): the browser's, which behind a TLS-terminating proxy is
PAYPORTAL_PUBLIC_URL's, not the plain-http request's (README, PAYPORTAL_TRUSTED_PROXIES)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from payportal.config import load_settings
from payportal.web import _config
from payportal.web.security import WEB_CONFIG, page_origin


def _request(settings: object, host: str = "10.0.0.7:8080") -> web.Request:
    app = web.Application()
    app[WEB_CONFIG] = _config(settings, None)  # type: ignore[arg-type]
    return make_mocked_request("GET", "/pay", headers={"Host": host}, app=app)


def test_behind_a_proxy_the_card_fields_answer_to_the_public_origin(tmp_path: Path) -> None:
    settings = load_settings({"PAYPORTAL_PUBLIC_URL": "https://pay.example.com/portal/",
                              "PAYPORTAL_SECRET_KEY": "k" * 40}, cwd=tmp_path)  # fmt: skip
    assert page_origin(_request(settings)) == "https://pay.example.com"


def test_without_a_public_url_it_is_the_requests_own_origin(tmp_path: Path) -> None:
    settings = load_settings({"PAYPORTAL_SECRET_KEY": "k" * 40}, cwd=tmp_path)
    assert page_origin(_request(settings, "127.0.0.1:8080")) == "http://127.0.0.1:8080"
    assert page_origin(_request(None, "localhost:9999")) == "http://localhost:9999"
