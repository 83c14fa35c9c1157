"""Nothing the test suite left behind holds card data or a secret: a scan, run last, of
every artifact the suite produced in this session (``tests.artifacts``).

What is scanned, under ``test-artifacts/``:

- ``captured/``: every test's captured stdout, stderr and log records, and the log of
  every ``payportal serve`` the tests started (after its banner, which shows the new API
  key once on purpose);
- ``documents/``: every PDF (its text), CSV and HTML page the in-process apps answered
  (statements, portal and console pages), the browser tests' pages, and the mail
  catcher's inbox (every email the browser tests' serve sent);
- the databases: every SQLite file the tests made (registered by ``tests.databases`` and
  ``tests.serve_process``), every row of every table (outbox emails included, bytes
  decoded as msgpack and JSON), and every PostgreSQL scratch database, dumped as text
  before it was dropped (``databases/``).

Findings (``tests.secret_scan``): a Luhn-valid run of 13-19 digits (but the numbers the
bad-input suite sends as too large, which pages show back: 2^63 passes Luhn); a CVC next
to its name; a full ``sk_`` API key, ``pt_`` session token or ``whsec_`` secret of any value;
and the needles: the test card numbers, and every API key, session token and password
the fixtures minted or set in this process (remembered, never written).

The folder ``tests/zz_scan`` sorts last, so pytest runs this after every other test of
a whole-suite run; run alone, it finds nothing of this session to scan and skips. The
findings (never the secrets themselves) are written to ``test-artifacts/scan.txt``.
"""

from __future__ import annotations

import re

import pytest

from tests import artifacts
from tests.e2e.api_harness import CARDS
from tests.e2e.bad_input import HUGE_NUMBERS
from tests.secret_scan import Finding, file_text, findings, sqlite_rows

REPORT = artifacts.ROOT / "scan.txt"
# Above this many, the report lists only the first ones (they repeat).
SHOWN_MAX = 60
# The bad-input suite sends 2^63 and its kin as too-large numbers, and pages show them
# back in the form; 2^63 happens to pass Luhn's check.
NOT_CARDS = frozenset(str(abs(n)) for n in HUGE_NUMBERS)


def _needles() -> list[str]:
    return sorted({*CARDS.values(), *artifacts.secrets()})


def _scan(needles: list[str]) -> tuple[dict[str, int], list[Finding]]:
    counts = {"files": 0, "sqlite databases": 0, "rows": 0}
    found: list[Finding] = []
    for folder in artifacts.OURS:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if path.is_file():
                counts["files"] += 1
                found += findings(str(path.relative_to(artifacts.ROOT)), file_text(path),
                                  needles, NOT_CARDS)
    for database in artifacts.sqlite_files():
        counts["sqlite databases"] += 1
        for table, row in sqlite_rows(database):
            counts["rows"] += 1
            found += findings(f"{database} {table}", row, needles, NOT_CARDS)
    return counts, found


def test_the_scanner_finds_card_data_and_secrets_and_lets_the_harmless_through() -> None:
    needles = ["4242424242424242", "correct horse battery"]

    def count(text: str) -> int:
        return len(findings("planted", text, needles))

    assert count("charging 4242424242424242") > 0
    assert count("amex 378282246310005") > 0  # Luhn-valid, not a needle
    assert count("card 4000 0000 0000 0002") > 0
    assert count('{"cvc": "123"}') > 0
    assert count("cvv=4096") > 0
    assert count("login with correct horse battery") > 0
    assert count("key sk_live_abcdefghijklmnop1234") > 0
    assert count("session pt_abcdefghijklmnopqrstuvwx") > 0
    assert count("secret whsec_c2VjcmV0LWtleQ==") > 0
    assert count("card 4242424242424241, at 1795447977079 ms, key sk_[redacted]") == 0
    # Ciphertext is random base64url: what looks like a key inside it is not one.
    assert count("token pp1.token.1.q7-pt_si6v6Xk2mN3bV9cL0zQ1wE4rT") == 0
    assert count("inv_1a24535afd318c3a003fa and 0.1795447977079 s, cvc field") == 0


def test_nothing_the_suite_left_holds_card_data_or_a_secret() -> None:
    needles = _needles()
    counts, found = _scan(needles)
    if counts["files"] == 0 and counts["sqlite databases"] == 0:
        pytest.skip("no artifacts of this session to scan: run it after the suite (pytest)")
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    lines = [f"scanned {summary} for {len(needles)} needles and the generic patterns",
             f"{len(found)} findings", *map(str, found[:SHOWN_MAX])]  # fmt: skip
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    print(lines[0])
    assert found == [], "\n".join(lines[1:])


# -- personal data at rest ---------------------------------------------------------------------

# What the database must hold only sealed (docs/design.md decision 12), found by its shape:
# an email address and a processor token (the sandbox's ``tok_…``). Names have no shape;
# tests/e2e/test_sealed_at_rest.py looks for its customers' names in its own dumps.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_TOKEN = re.compile(r"\btok_[A-Za-z0-9]{8,}")
# Sealed values are random base64url: a run in one may look like anything.
_SEALED = re.compile(r"pp1\.[a-z]+\.[0-9]+\.[A-Za-z0-9_-]+")


def personal_data(text: str) -> list[str]:
    """The kinds of personal data ``text`` holds in clear (never the values)."""
    text = _SEALED.sub("pp1.sealed", text)
    kinds = []
    if _EMAIL.search(text):
        kinds.append("an email address")
    if _TOKEN.search(text):
        kinds.append("a processor token")
    return kinds


def test_the_personal_data_finder_finds_addresses_and_tokens() -> None:
    assert personal_data("to ada@example.com") == ["an email address"]
    assert personal_data("charged tok_4f9a8b7c6d5e") == ["a processor token"]
    assert personal_data("pp1.contact.1.Qm9ndXMtZGF0YQ-tok_abcdefghij pay_1a2b tok_ short") == []


def test_no_database_the_suite_left_holds_an_email_address_or_a_token_in_clear() -> None:
    """Every SQLite file and PostgreSQL dump of this session, row by row."""
    found: list[str] = []
    scanned = 0
    for database in artifacts.sqlite_files():
        for table, row in sqlite_rows(database):
            scanned += 1
            found += [f"{database.name} {table}: {k}" for k in personal_data(row)]
    for path in sorted(artifacts.DATABASES.rglob("*")) if artifacts.DATABASES.exists() else []:
        if path.is_file():
            for number, line in enumerate(file_text(path).splitlines(), 1):
                scanned += 1
                found += [f"{path.name} line {number}: {k}" for k in personal_data(line)]
    if scanned == 0:
        pytest.skip("no databases of this session to scan: run it after the suite (pytest)")
    print(f"scanned {scanned} rows for personal data in clear: {len(found)} found")
    assert found == [], "\n".join(sorted(set(found))[:SHOWN_MAX])
