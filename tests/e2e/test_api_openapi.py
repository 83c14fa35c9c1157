"""The OpenAPI document is generated from the route table and the msgspec types and is a
valid OpenAPI 3.1 document; /docs renders it without any external asset; the health
endpoints answer — checked over HTTP with openapi-spec-validator."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from payportal.http.routes import ROUTE_TABLE

from .api_harness import Api


async def test_openapi_json_is_valid_and_covers_every_route(api: Api) -> None:
    document = await api.ok("GET", "/openapi.json", headers={})

    validate(document)
    assert document["openapi"] == "3.1.0"
    served = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert served == {(r.method, r.path) for r in ROUTE_TABLE}
    create = document["paths"]["/v1/payments"]["post"]
    assert {p["name"] for p in create["parameters"]} == {"Idempotency-Key"}
    assert "PaymentCreate" in document["components"]["schemas"]


async def test_docs_page_lists_operations_and_loads_nothing_external(api: Api) -> None:
    response = await api.client.get("/docs")
    page = await response.text()

    assert response.status == 200
    assert "/v1/payments/{id}/refunds" in page
    assert "PaymentCreate" in page
    assert "events of StatusEvent" in page  # what an event stream sends
    assert "<script" not in page
    assert "https://" not in page


async def test_health_and_readiness(api: Api) -> None:
    assert await api.ok("GET", "/healthz", headers={}) == {"status": "ok"}
    ready = await api.ok("GET", "/readyz", headers={})
    assert ready == {"status": "ok", "checks": {"shards": "ok", "database": "ok"}}


async def test_a_method_a_route_does_not_answer_is_405_naming_the_ones_it_does(api: Api) -> None:
    response = await api.client.request("TRACE", "/v1/payments", headers=api.merchant)
    body = await response.json()

    assert response.status == 405
    assert body["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) == {"GET", "POST"}


async def test_sign_in_documents_its_401_and_the_probes_none(api: Api) -> None:
    document = await api.ok("GET", "/openapi.json", headers={})
    paths = document["paths"]

    status, _, _ = await api.call(
        "POST", "/v1/payer/sessions", headers={},
        json={"email": "nobody@example.com", "password": "wrong"},
    )  # fmt: skip

    assert status == 401
    assert "401" in paths["/v1/payer/sessions"]["post"]["responses"]
    assert "401" not in paths["/healthz"]["get"]["responses"]


async def test_a_body_is_required_in_the_document_exactly_when_an_empty_one_is_refused(
    api: Api,
) -> None:
    document = await api.ok("GET", "/openapi.json", headers={})
    account = await api.account()
    payment = (await api.pay(account, 500, await api.payment_method(account)))[1]["id"]
    refunds = document["paths"]["/v1/payments/{id}/refunds"]["post"]["requestBody"]
    accounts = document["paths"]["/v1/accounts"]["post"]["requestBody"]

    refunded = await api.ok("POST", f"/v1/payments/{payment}/refunds",
                            headers={**api.merchant, "Idempotency-Key": "whole"})  # fmt: skip
    refused, _, _ = await api.call("POST", "/v1/accounts")

    assert refunds["required"] is False
    assert refunded["amount"] == 500
    assert accounts["required"] is True
    assert refused == 400


async def test_the_idempotency_key_pattern_is_the_one_the_api_checks(api: Api) -> None:
    document = await api.ok("GET", "/openapi.json", headers={})
    [header] = document["paths"]["/v1/payments"]["post"]["parameters"]
    pattern = re.compile(header["schema"]["pattern"])

    for key in ("plain-key_1 ~!", "caf\u00e9", "tab\there", "\u00a0"):
        status, body, _ = await api.call("POST", "/v1/accounts", headers={
            **api.merchant, "Idempotency-Key": key}, json={
            "name": "A", "email": "a@example.com", "currency": "USD"})  # fmt: skip
        matches = pattern.search(key) is not None
        assert matches is (status == 200), (key, status, body)
    assert pattern.search("end\n") is None


async def test_the_path_ids_pattern_is_the_one_routes_match(api: Api) -> None:
    document = await api.ok("GET", "/openapi.json", headers={})
    [param] = document["paths"]["/v1/payments/{id}"]["get"]["parameters"]
    pattern = re.compile(param["schema"]["pattern"])

    for segment, routed in (("pay_1a2b_3c4d", True), ("x" * 64, True), ("x" * 65, False),
                            ("pay.1", False), ("pay%201", False)):  # fmt: skip
        response = await api.client.get(f"/v1/payments/{segment}", headers=api.merchant)
        body = await response.json()
        # Routed: the handler's "no such payment"; not routed: "no such route".
        assert (body["error"]["message"] == "No such payment.") is routed, (segment, body)
        assert (pattern.search(segment) is not None) is routed, segment
