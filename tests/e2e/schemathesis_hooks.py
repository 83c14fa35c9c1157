"""schemathesis hooks for ``test_api_schemathesis``: its ``positive_data_acceptance`` and
``use_after_free`` checks, with the API's deliberate differences let through.

Loaded by the schemathesis CLI through ``SCHEMATHESIS_HOOKS``; it imports nothing of the
test suite.

``positive_data_acceptance`` says a request the schema allows must not be refused. The
API refuses some such requests on purpose, each with a 400 or 422 in the contract's error
shape that names why; the check below is schemathesis's own, except that a refusal of
exactly one of these kinds passes:

- a business rule: the schema describes a request's shape, not the state it meets (an
  invoice that is no longer open, a refund larger than what is left, a service period
  that ends before it starts). The error's ``code`` is the engine's rule, or
  ``parameter_invalid`` with the rule's name leading the message;
- a payment with neither or both of ``payment_method`` and ``token``: exactly one is
  required, which the generated schema cannot say;
- a range given the wrong way round (a report's ``from`` after its ``to``);
- a currency that is well-formed but not one the portal supports;
- a metrics ``window`` longer than 366 days;
- an integer sent as a JSON float (``2048.0``): JSON Schema counts it an integer; the
  API's decoder (msgspec, strict) wants integers spelled as integers, and amounts are
  never floats;
- ``idempotency_key_reused`` (422): schemathesis sends one generated key with different
  bodies, which the contract refuses on purpose.

Anything else — a 400 for a shape the schema allows, a 404 for a route, a 5xx — still
fails.

``use_after_free`` says a deleted resource must be 404 afterwards. ``DELETE
/v1/payment_methods/{id}`` detaches a method and keeps it in history (the operation's
summary says so): reading it afterwards is 200 with ``deleted: true``, and only that
passes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData, UseAfterFree
from schemathesis.specs.openapi.checks import positive_data_acceptance, use_after_free

from payportal.engine import Rejection

_RULES = frozenset(rule.name for rule in Rejection)
_FLOAT_FOR_INT = re.compile(r"Expected `int( \| null)?`, got `float`")


def _deliberate(status: int, error: dict[str, Any]) -> bool:
    code, param, message = error.get("code"), error.get("param"), str(error.get("message", ""))
    if status == 422:
        return code == "idempotency_key_reused"
    if status != 400:
        return False
    if code in _RULES or message.split(":", 1)[0] in _RULES:
        return True
    if param in ("payment_method", "token") and message.startswith("Send a payment_method"):
        return True
    if code != "parameter_invalid":
        return False
    if param == "currency" and "not a supported ISO 4217 code" in message:
        return True
    if param == "window" and message.startswith("window is at most"):
        return True
    if param == "from" and message == "from must not be after to.":
        return True
    return _FLOAT_FOR_INT.search(message) is not None


@schemathesis.check
def positive_data_acceptance_but_rules(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's positive_data_acceptance, letting through the refusals listed in
    this module's docstring."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData as rejected:
        try:
            error = json.loads(response.content)["error"]
        except (ValueError, KeyError, TypeError):
            raise rejected from None
        if isinstance(error, dict) and _deliberate(response.status_code, error):
            return None
        raise


@schemathesis.check
def use_after_free_but_detached_methods(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's use_after_free, letting a detached payment method be read (200,
    ``deleted: true``)."""
    try:
        return use_after_free(ctx, response, case)
    except UseAfterFree as used:
        try:
            body = json.loads(response.content)
        except ValueError:
            raise used from None
        if isinstance(body, dict) and body.get("object") == "payment_method" and (
            body.get("deleted") is True
        ):
            return None
        raise
