"""Scanning text for card data and secrets: the final artifacts scan's rules.

A finding is any of: a Luhn-valid run of 13-19 digits (alone, or in groups of four split
by spaces or dashes) that is not a Unix time; a CVC next to its name (``cvc: 123``); one
of the needles (the test passwords, API keys and session tokens the fixtures minted, the
test card numbers); a full ``sk_`` API key, ``pt_`` session token or ``whsec_`` webhook
secret of any value. Also readers for the artifacts' formats: PDF text (core-font
``Tj`` strings of Flate streams), SQLite databases (every row of every table, bytes as
Latin-1 and as decoded msgpack or JSON).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
from stdnum import luhn

# A whole word of 13-19 digits: not part of a hex or base64 token, nor either side of a
# decimal point.
_PLAIN_RUN = re.compile(r"(?<![A-Za-z0-9])(?<!\d\.)\d{13,19}(?![A-Za-z0-9])(?!\.\d)")
_GROUPED_RUN = re.compile(r"(?<![A-Za-z0-9])\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?(?![A-Za-z0-9])")
_SEPARATORS = re.compile(r"[ -]")
_CVC_TEXT = re.compile(r"(?i)\b(?:cvc|cvv|cvn|csc)\b[\"']?\s{0,2}[:=]\s{0,2}[\"']?(\d{3,4})(?!\d)")
_SEALED = re.compile(r"pp1\.[a-z]+\.[0-9]+\.[A-Za-z0-9_-]+")
_FULL_SECRET = re.compile(r"\b(?:sk|pt)_[A-Za-z0-9_\-]{16,}|whsec_[A-Za-z0-9+/=_\-]{8,}")
# Unix times in 2000-2039 as ms, µs or ns: no card network issues numbers that start
# with these digits' leading 09-22 (Mastercard's 2-series starts at 2221).
_EPOCH_S = range(946_684_800, 2_208_988_800)


def _is_timestamp(run: str) -> bool:
    return len(run) in (13, 16, 19) and int(run[:10]) in _EPOCH_S


@dataclass(frozen=True)
class Finding:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def findings(where: str, text: str, needles: Iterable[str],
             not_cards: frozenset[str] = frozenset()) -> list[Finding]:  # fmt: skip
    """What ``text`` holds that it must not; ``not_cards`` are digit runs known to be
    something else (the numbers a test sends as too large)."""
    # A sealed value (payportal.persistence.sealing) is random base64url: a run in it may
    # look like a key (``-pt_…``) or digits by chance, and it holds nothing readable.
    text = _SEALED.sub("pp1.sealed", text)
    found: list[str] = []
    for match in _PLAIN_RUN.finditer(text):
        if match.group() in not_cards:
            continue
        if luhn.is_valid(match.group()) and not _is_timestamp(match.group()):
            found.append(f"Luhn-valid digit run {match.group()[:6]}…")
    for match in _GROUPED_RUN.finditer(text):
        digits = _SEPARATORS.sub("", match.group())
        if 13 <= len(digits) <= 19 and luhn.is_valid(digits) and not _is_timestamp(digits):
            found.append(f"Luhn-valid grouped digits {match.group()[:7]}…")
    found += [f"CVC next to its name ({m.group()[:4]}…)" for m in _CVC_TEXT.finditer(text)]
    found += [f"a known test secret {n[:4]}…" for n in needles if n and n in text]
    found += [f"a full key, token or secret {m.group()[:8]}…" for m in _FULL_SECRET.finditer(text)]
    return [Finding(where, what) for what in dict.fromkeys(found)]


# -- readers ---------------------------------------------------------------------------------


def pdf_text(pdf: bytes) -> str:
    """The text a PDF of the core fonts shows: every ``(...) Tj`` of its Flate streams."""
    shown: list[str] = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            data = zlib.decompress(match.group(1))
        except zlib.error:
            data = match.group(1)
        for text in re.findall(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj", data):
            shown.append(re.sub(rb"\\(.)", rb"\1", text).decode("latin-1"))
    return "\n".join(shown)


def file_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".pdf":
        return pdf_text(raw)
    text = raw.decode("utf-8", errors="replace")
    if path.suffix == ".html":
        # The markup and, separately, the text a person reads (tags removed, so a number
        # split by markup is seen whole).
        text += "\n" + re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
    return text


def _decoded(value: bytes) -> str:
    out = [value.decode("latin-1")]
    for decode in (msgspec.msgpack.decode, msgspec.json.decode):
        with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError, ValueError):
            out.append(repr(decode(value)))
    return " ".join(out)


def sqlite_rows(path: Path) -> Iterator[tuple[str, str]]:
    """(table, row as text) of every row of every table of a SQLite file, read only."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]  # fmt: skip
        for name in names:
            for row in connection.execute(f'SELECT * FROM "{name}"'):
                yield name, " ".join(
                    _decoded(bytes(v)) if isinstance(v, bytes | memoryview) else repr(v)
                    for v in row
                )
    finally:
        connection.close()
