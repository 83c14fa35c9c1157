"""A bounded schemathesis run against the live `/openapi.json`: generated requests to every
operation, as a merchant, must never get a 5xx and every response must match the schema."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path

import pytest

from .api_harness import Api

# Examples per operation: enough to reach the error paths of each body and query type,
# small enough that the run stays well under a minute.
EXAMPLES_PER_OPERATION = 12
SEED = 20261123


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_generated_requests_get_no_5xx_and_match_the_schema(api: Api, tmp_path: Path) -> None:
    account_id = await api.account()
    await api.invoice(account_id, 5_000, dt.date(2026, 1, 31))
    base = str(api.client.server.make_url("")).rstrip("/")
    report = tmp_path / "schemathesis.log"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
        "--url", base,
        "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED),
        "--header", api.merchant["Authorization"].join(("Authorization: ", "")),
        "--request-timeout", "20", "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = output.decode(errors="replace")
    report.write_text(text)
    print(text[-1500:])
    assert process.returncode == 0, text[-6000:]
    assert "operations" in text.lower() or "passed" in text.lower(), text[-2000:]
