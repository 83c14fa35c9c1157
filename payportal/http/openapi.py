"""The OpenAPI 3.1 document, generated from the route table and the msgspec types, and a
plain server-side HTML rendering of it for ``/docs`` (no CDN: nothing loads from the
internet, for us or for users)."""

from __future__ import annotations

import html
import re
from typing import Any, Final

import msgspec

from .schemas import ErrorResponse

__all__ = ["openapi_document", "render_docs"]

REF_TEMPLATE: Final = "#/components/schemas/{name}"
_PATH_PARAM: Final = re.compile(r"{([^}]+)}")

# An {id} is routed only when it looks like an id (``ids.ID_SEGMENT``); anything else is
# a 404 for an unknown route.
_PATH_SCHEMAS: Final = {
    "id": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}$(?!\n)"},
}

_ERROR_STATUSES: Final = {
    "400": "Invalid request (param names the field)",
    "401": "Missing or bad credentials",
    "404": "No such object (or another principal's)",
    "429": "Too many requests; see Retry-After",
    "500": "Our fault; safe to retry with the same Idempotency-Key",
}
_IDEMPOTENT_ERRORS: Final = {
    "402": "The card was declined (error.payment holds the payment)",
    "409": "The same Idempotency-Key is still being processed",
    "422": "The Idempotency-Key was used with a different request",
}


def _json_content(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def _event_stream_content(data_ref: dict[str, Any]) -> dict[str, Any]:
    """``text/event-stream`` whose every event carries ``data_ref`` as JSON.

    OpenAPI 3.1 has no way to say "each item of a stream"; 3.2 added ``itemSchema`` for
    it. Until the document moves to 3.2, ``schema`` describes one event as the HTML
    standard parses it (the fields ``event``, ``data``, ``id``, ``retry``), which is how
    3.2 describes an item and how validators (schemathesis among them) read ``schema``
    of an event stream in a 3.1 document. ``data`` is a string of JSON:
    ``contentMediaType`` and ``contentSchema`` say of what."""
    event = {
        "type": "object",
        "description": (
            "One Server-Sent Event. Comments (': ping', every 15 s) keep the connection "
            "open and carry no event."
        ),
        "required": ["data", "id"],
        "properties": {
            "event": {
                "type": "string", "enum": ["message"],
                "description": "Not sent: every event is of the default type.",
            },
            "id": {
                # As the schemas' patterns: "$(?!\n)" is the end in Python and ECMA-262.
                "type": "string", "pattern": r"^[0-9]{1,19}$(?!\n)",
                "description": "Grows with every event of the account; send the last one "
                "seen as the Last-Event-ID header to resume after it.",
            },
            "data": {
                "type": "string", "contentMediaType": "application/json",
                "contentSchema": data_ref,
            },
            "retry": {"type": "integer", "minimum": 0},
        },
    }  # fmt: skip
    return {"text/event-stream": {"schema": event}}


def openapi_document(routes: list[Any], *, version: str = "0.1.0") -> dict[str, Any]:
    types: list[Any] = [ErrorResponse]
    for route in routes:
        types.extend(
            t for t in (route.body, route.query, route.response, getattr(route, "events", None))
            if t is not None
        )
    schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    by_type = dict(zip(types, schemas, strict=True))
    error_ref = by_type[ErrorResponse]
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not route.in_openapi:
            continue
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": [route.tag],
        }
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS.get(
                name, {"type": "string"})}
            for name in _PATH_PARAM.findall(route.path)
        ]  # fmt: skip
        if route.query is not None:
            query = components[route.query.__name__]
            required = set(query.get("required", ()))
            for name, schema in query["properties"].items():
                parameters.append(
                    {"name": name, "in": "query", "required": name in required, "schema": schema}
                )
        if route.idempotency is not None:
            parameters.append({
                "name": "Idempotency-Key", "in": "header",
                "required": route.idempotency == "required",
                "description": "1-255 printable ASCII; scoped to (principal, account).",
                # Printable ASCII, as ``idempotency.idempotency_key`` checks; "$(?!\n)"
                # is the end in Python and ECMA-262, as the schemas' patterns.
                "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                           "pattern": r"^[ -~]+$(?!\n)"},
            })  # fmt: skip
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            body = _json_content(by_type[route.body])
            # A missing body is read as {} (``codec.decode_body``): it is optional exactly
            # when every field is, e.g. a refund of the whole payment.
            required = bool(components[route.body.__name__].get("required"))
            operation["requestBody"] = {"required": required, "content": body}
        events = getattr(route, "events", None)
        if route.response is not None:
            ok = {"description": "OK", "content": _json_content(by_type[route.response])}
        elif events is not None:
            ok = {"description": "An event stream, open until the client closes it",
                  "content": _event_stream_content(by_type[events])}  # fmt: skip
        elif route.response_content_type != "application/json":
            content = {route.response_content_type: {"schema": {"type": "string"}}}
            ok = {"description": "OK", "content": content}
        else:
            ok = {"description": "OK"}
        for content_type in getattr(route, "response_alternatives", ()):
            ok.setdefault("content", {})[content_type] = {"schema": {"type": "string"}}
        responses: dict[str, Any] = {"200": ok}
        errors = dict(_ERROR_STATUSES)
        if route.idempotency is not None:
            errors.update(_IDEMPOTENT_ERRORS)
        if route.auth == "none" and not getattr(route, "credentials_in_body", False):
            errors.pop("401")
        for status, description in sorted(errors.items()):
            responses[status] = {"description": description, "content": _json_content(error_ref)}
        operation["responses"] = responses
        if route.auth != "none":
            operation["security"] = [{"bearer": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "payportal",
            "version": version,
            "description": (
                "Accounts-receivable payment portal. Amounts are integers of minor units; "
                "times are unix seconds; errors are {error: {type, code, message, param?, "
                "decline_code?}}."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http", "scheme": "bearer",
                    "description": "Merchant API key (sk_...) or payer session token (pt_...).",
                }
            },
        },
    }  # fmt: skip


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type_of(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    if schema.get("type") == "array":
        return f"list[{_type_of(schema.get('items', {}))}]"
    return str(schema.get("type", "any"))


def render_docs(document: dict[str, Any]) -> str:
    """The document as one readable HTML page: operations, then schemas."""
    e = html.escape
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>payportal API</title><style>body{font:15px/1.5 system-ui,sans-serif;"
        "max-width:960px;margin:2em auto;padding:0 1em}code,td{font-family:ui-monospace,"
        "monospace;font-size:13px}table{border-collapse:collapse;width:100%}td,th{border-bottom:"
        "1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}"
        ".m{font-weight:bold}</style></head><body>",
        f"<h1>{e(document['info']['title'])} API {e(document['info']['version'])}</h1>",
        f"<p>{e(document['info']['description'])} Machine-readable: "
        "<a href=/openapi.json>/openapi.json</a>.</p><h2>Operations</h2>",
        "<table><tr><th>method</th><th>path</th><th>summary</th><th>body</th><th>answer</th></tr>",
    ]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            content = operation["responses"]["200"].get("content", {})
            answer = content.get("application/json")
            stream = content.get("text/event-stream", {}).get("schema", {})
            data = stream.get("properties", {}).get("data", {}).get("contentSchema")
            if data is not None:
                answer = {"schema": {"type": f"events of {_type_of(data)}"}}
            out.append(
                f"<tr><td class=m>{e(method.upper())}</td><td><code>{e(path)}</code></td>"
                f"<td>{e(operation['summary'])}</td>"
                f"<td>{e(_type_of(body['schema'])) if body else ''}</td>"
                f"<td>{e(_type_of(answer['schema'])) if answer else ''}</td></tr>"
            )
    out.append("</table><h2>Schemas</h2>")
    for name, schema in sorted(document["components"]["schemas"].items()):
        out.append(f"<h3 id={e(name)}>{e(name)}</h3>")
        if schema.get("description"):
            out.append(f"<p>{e(schema['description'])}</p>")
        properties = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", ()))
            out.append("<table><tr><th>field</th><th>type</th><th>required</th></tr>")
            for field, field_schema in properties.items():
                out.append(
                    f"<tr><td>{e(field)}</td><td>{e(_type_of(field_schema))}</td>"
                    f"<td>{'yes' if field in required else ''}</td></tr>"
                )
            out.append("</table>")
    out.append("</body></html>")
    return "".join(out)
