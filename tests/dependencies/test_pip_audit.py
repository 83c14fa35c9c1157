"""The installed dependencies have no known vulnerability: ``pip-audit`` over this
virtualenv (what ``make venv`` installed from pyproject.toml, dev extras included; the
editable payportal itself is not a published package and is left out).

pip-audit asks PyPI's JSON API which advisories name each installed version, so the
test needs the network. Where the service cannot be reached, or answers for none of
the packages (a mirror that serves the index but not the per-version documents, as some
build machines have), the test is skipped with the reason: a machine without the
network says nothing about the dependencies, and must not fail CI. Anything it reports
is upgraded in pyproject.toml, or listed in ``NOT_APPLICABLE`` with why it does not
apply to payportal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

# Advisory id → why it does not apply to payportal (none so far).
NOT_APPLICABLE: dict[str, str] = {}
# One run: the JSON API answers each package in well under a second.
TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 20


def _audit() -> dict[str, object]:
    command = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner",
               "off", "--skip-editable", "--timeout", str(REQUEST_TIMEOUT_S)]  # fmt: skip
    for advisory in NOT_APPLICABLE:
        command += ["--ignore-vuln", advisory]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip-audit: the PyPI advisory service did not answer in {TIMEOUT_S} s")
    try:
        report = json.loads(done.stdout)
    except ValueError:
        # No report at all: pip-audit stopped on an error, a connection failure here.
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"pip-audit could not query the PyPI advisory service: {last[:300]}")
    assert isinstance(report, dict), report
    return report


def findings(dependencies: list[dict[str, Any]]) -> list[str]:
    """One line per advisory pip-audit reported for an installed version."""
    return [
        f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v['fix_versions']) or '-'})"
        for d in dependencies if "skip_reason" not in d for v in d.get("vulns", [])
    ]  # fmt: skip


def test_no_installed_dependency_has_a_known_vulnerability() -> None:
    dependencies = _audit()["dependencies"]
    assert isinstance(dependencies, list), dependencies
    assert dependencies, "pip-audit listed no installed package"
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        pytest.skip(
            f"pip-audit: the PyPI advisory service answered for none of the "
            f"{len(dependencies)} installed packages, so nothing was audited "
            f"(first: {dependencies[0].get('skip_reason')})"
        )
    print(f"audited {len(audited)} of {len(dependencies)} installed packages")
    found = findings(dependencies)
    assert found == [], "\n".join(found)


def test_a_reported_advisory_is_a_finding_and_a_skipped_package_is_not() -> None:
    # pip-audit's JSON report, as it writes one: the check above fails on the first.
    report = [
        {"name": "aiohttp", "version": "3.9.0", "vulns": [
            {"id": "PYSEC-2024-24", "fix_versions": ["3.9.2"], "aliases": []}]},
        {"name": "yarl", "version": "1.9.4", "vulns": []},
        {"name": "private-thing", "skip_reason": "Dependency not found on PyPI"},
    ]  # fmt: skip
    assert findings(report) == ["aiohttp 3.9.0: PYSEC-2024-24 (fixed in 3.9.2)"]
