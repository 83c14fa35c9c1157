"""Every regex that validates input matches the whole value: Python's ``$`` also matches
before a final newline, so ``x@y.io\\n`` passed a ``^…$`` pattern. Each pattern of the
OpenAPI document (the ones msgspec checks requests with) and of the engine, sandbox and
settlement types is given a value it accepts, then that value with a newline after it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from payportal.engine import money
from payportal.http.openapi import openapi_document
from payportal.http.routes import ROUTE_TABLE
from payportal.processors import _settlement, sandbox
from payportal.web.pages import parse_amount


def _patterns(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str):
            yield schema["pattern"]
        for value in schema.values():
            yield from _patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _patterns(value)


def _type_patterns(*types: Any) -> list[str]:
    _, components = msgspec.json.schema_components(types)
    return list(_patterns(components))


PATTERNS = sorted(set(
    list(_patterns(openapi_document(ROUTE_TABLE)))
    + _type_patterns(_settlement.Discrepancy, sandbox.ChargeRequest)
    + [money.Currency.__metadata__[0].pattern]
))  # fmt: skip


def test_the_patterns_under_test_include_the_ones_that_let_newlines_through() -> None:
    assert len(PATTERNS) >= 6, PATTERNS
    joined = " ".join(PATTERNS)
    for part in ("[A-Z]{3}", "[A-Za-z]{3}", "@", "[0-9]{4}", "[mhd]", "[ -~]"):
        assert part in joined, (part, PATTERNS)


@pytest.mark.parametrize("pattern", PATTERNS)
@given(data=st.data())
def test_a_value_a_pattern_accepts_is_refused_with_a_newline_after_it(
    pattern: str, data: st.DataObject
) -> None:
    value = data.draw(st.from_regex(pattern, fullmatch=True))
    assert re.search(pattern, value) is not None
    assert re.search(pattern, value + "\n") is None, (pattern, value)


@pytest.mark.parametrize("typed", ["١٢٣", "12.00\u0660", "1,234.5²"])
def test_an_amount_in_other_digits_than_ascii_is_not_an_amount(typed: str) -> None:
    assert parse_amount(typed, "USD") is None
    assert parse_amount("1,234.50", "USD") == 123_450


@pytest.mark.parametrize("typed", ["10000000000.01", "92233720368547758.08", "1" + "0" * 30])
def test_an_amount_past_the_apis_largest_is_not_an_amount(typed: str) -> None:
    # 2^63 cents and more could not even be sent to a shard: the payment page was a 500.
    assert parse_amount(typed, "USD") is None
    assert parse_amount("10000000000.00", "USD") == 10**12
