"""What the test suite leaves behind for the final secrets scan (``tests/zz_scan``), under
``test-artifacts/``:

- ``captured/``: each test's captured stdout, stderr and log records (``conftest``'s
  report hook);
- ``documents/``: every PDF, CSV and HTML page an in-process app answered
  (``keep_documents`` on the harnesses' apps), and the browser tests' pages and the mail
  catcher's inbox;
- the databases: SQLite files are registered (``register_database``) and read at the
  end; a PostgreSQL scratch database is dumped as text to ``databases/`` before it is
  dropped.

``remember_secret`` collects the secrets the fixtures mint or use (API keys, session
tokens, passwords), in this process only: they are the scan's needles and are never
written anywhere. Everything is cleared when a session starts (``clear``), except the
screenshots and CI's own log, which other code owns.
"""

from __future__ import annotations

import itertools
import re
import shutil
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1] / "test-artifacts"
CAPTURED = ROOT / "captured"
DOCUMENTS = ROOT / "documents"
DATABASES = ROOT / "databases"
OURS = (CAPTURED, DOCUMENTS, DATABASES)
# Kept from every in-process app: what people download or read.
DOCUMENT_TYPES = {"application/pdf": "pdf", "text/csv": "csv", "text/html": "html"}

_lock = threading.Lock()
_counter = itertools.count()
_secrets: set[str] = set()
_sqlite_files: set[Path] = set()


def clear() -> None:
    for folder in OURS:
        shutil.rmtree(folder, ignore_errors=True)
    with _lock:
        _secrets.clear()
        _sqlite_files.clear()


def _name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:150]


def keep(folder: Path, label: str, data: bytes | str, suffix: str = "txt") -> Path:
    """Write one artifact; names are unique within the session."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{next(_counter):06d}-{_name(label)}.{suffix}"
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", errors="backslashreplace")
    else:
        path.write_bytes(data)
    return path


def remember_secret(value: str | None) -> None:
    if value:
        with _lock:
            _secrets.add(value)


def secrets() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets)


def register_database(url_or_path: str | Path) -> None:
    """A SQLite database (URL or file) the scan reads at the end, if it still exists."""
    text = str(url_or_path)
    path = Path(text.split(":///", 1)[1]) if ":///" in text else Path(text)
    with _lock:
        _sqlite_files.add(path)


def sqlite_files() -> list[Path]:
    with _lock:
        return sorted(p for p in _sqlite_files if p.exists())


def keep_documents(app: web.Application) -> None:
    """Keep every PDF, CSV and HTML page ``app`` answers (not streams, not JSON)."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        suffix = DOCUMENT_TYPES.get(response.content_type)
        body = getattr(response, "body", None)
        if suffix is None or not isinstance(body, bytes | bytearray):
            return
        keep(DOCUMENTS, f"{request.method}-{request.path}", bytes(body), suffix)

    app.on_response_prepare.append(on_prepare)


def dump_rows(label: str, tables: dict[str, list[dict[str, Any]]]) -> None:
    """A database's rows as text, for one dropped at the end of its test."""
    lines = [f"{table}: {row!r}" for table, rows in tables.items() for row in rows]
    keep(DATABASES, label, "\n".join(lines))
