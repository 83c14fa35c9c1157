"""A bounded schemathesis run, with every check it has, against the live `/openapi.json`:
generated requests to every operation, as a merchant, must never get a 5xx, every
response (status, content type, headers, body) must be one the document describes, and
the event streams' events must match their schema.

How: the whole front door (``front_door``: API, live status streams, pages, callbacks) on
SQLite, seeded with an account, an invoice, a payment method and a succeeded payment so
the streams have events to send. The run is the schemathesis CLI in a subprocess with a
fixed seed and a bounded number of examples per operation; a config file caps how long
it reads an event stream (a stream without news only pings every 15 s) and how many
events it reads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from payportal.http.routes import ROUTE_TABLE

from .front_door import FrontDoor

# Examples per operation: enough to reach the error paths of each body and query type,
# small enough that the run stays well under two minutes on two cores.
EXAMPLES_PER_OPERATION = 10
SEED = 20261123
# An event stream is read for this long, or until this many events came: a stream
# starting "now" sends nothing but pings, so only the time bounds it.
STREAM_READ_S = 0.5
STREAM_EVENTS_MAX = 3
# Each example of a stream costs up to STREAM_READ_S: fewer of them (a stream takes one
# path id and no body, so a few reach every answer it has).
STREAM_EXAMPLES = 4

HOOKS = "tests.e2e.schemathesis_hooks"
REPOSITORY = Path(__file__).resolve().parents[2]

CONFIG = f"""
[[operations]]
include-tag = "events"
request-timeout = {STREAM_READ_S}
max-stream-events = {STREAM_EVENTS_MAX}
generation.max-examples = {STREAM_EXAMPLES}
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_generated_requests_get_no_5xx_and_match_the_schema(
    front_door: FrontDoor, tmp_path: Path
) -> None:
    api = front_door.api
    account_id = await api.account()
    await api.invoice(account_id, 5_000, dt.date(2026, 1, 31))
    method = await api.payment_method(account_id)
    status, payment, _ = await api.pay(account_id, 1_000, method)
    assert status == 200, payment
    await front_door.settle()

    base = str(front_door.server.make_url("")).rstrip("/")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    report = tmp_path / "schemathesis.log"
    junit = tmp_path / "schemathesis.xml"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", f"{base}/openapi.json", "--url", base, "--checks", "all",
        # Replaced by schemathesis_hooks' versions, which let the deliberate differences
        # listed there through and are otherwise the same checks.
        "--exclude-checks", "positive_data_acceptance,use_after_free",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED),
        "--header", api.merchant["Authorization"].join(("Authorization: ", "")),
        "--request-timeout", "20", "--phases", "examples,coverage,fuzzing,stateful",
        "--suppress-health-check", "all", "--workers", "1",
        "--report", "junit", "--report-junit-path", str(junit),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": HOOKS}, cwd=REPOSITORY,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = output.decode(errors="replace")
    report.write_text(text)
    print(text[-3000:])
    assert process.returncode == 0, text[-12000:]
    # Every operation ran, the event streams included, and none failed.
    cases = {case.get("name"): case for case in ElementTree.parse(junit).iter("testcase")}
    for route in ROUTE_TABLE:
        if route.path == "/openapi.json":
            continue  # the document schemathesis reads, not one of the operations it tests
        label = f"{route.method} {route.path}"
        assert label in cases, (label, sorted(cases))
        assert cases[label].find("failure") is None, label
