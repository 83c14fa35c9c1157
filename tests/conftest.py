"""Shared fixtures: the real PostgreSQL and Redis, found on loopback or skipped with a reason.

On a laptop without them the tests that need them are skipped and say why; under
``CI=true`` a missing service fails those tests instead, so CI can never pass by
skipping the database.

Also what the final secrets scan (``tests/zz_scan``) reads: every test's captured
output is written to ``test-artifacts/captured/`` and every password hashed in this
process is remembered as a needle (``tests.artifacts``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

# Ray reads this when first imported: keep every test's Ray on loopback (see actors/cluster.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest
from argon2 import PasswordHasher

from payportal.persistence.sealing import new_kek
from tests import artifacts

pytest_plugins = ["tests.hang_report"]

# The key encryption key of this run's databases, inherited by every process the tests start
# (serve, workers, Ray actors): sealed fields open everywhere, and nowhere after the run.
if not os.environ.get("PAYPORTAL_DATA_KEYS"):
    os.environ["PAYPORTAL_DATA_KEYS"] = new_kek()

POSTGRES_URL_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_URL_DEFAULT = "redis://127.0.0.1:6379/15"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
            return True
    except OSError:
        return False


def _require(name: str, url: str) -> str:
    if _reachable(url):
        return url
    reason = f"{name} is not reachable at {url}; start it or set the URL"
    if _in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of a PostgreSQL database the tests may write to."""
    url = os.environ.get("PAYPORTAL_TEST_POSTGRES_URL", POSTGRES_URL_DEFAULT)
    return _require("PostgreSQL", url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis database the tests may flush."""
    url = os.environ.get("PAYPORTAL_TEST_REDIS_URL", REDIS_URL_DEFAULT)
    return _require("Redis", url)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray for one test module (started on loopback, shut down after it)."""
    import ray

    from payportal.actors.cluster import connect_ray

    connect_ray(None)
    yield
    ray.shutdown()


# -- artifacts for the final scan --------------------------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    artifacts.clear()
    session.config.stash[_STARTED_AT] = time.time()


# -- Ray's orphaned agents --------------------------------------------------------------------

_STARTED_AT = pytest.StashKey[float]()
# Ray's per-node agents notice their raylet is gone ("Raylet is dead! Exiting") but stay
# alive (Ray 2.60) when a test kills a Ray driver outright. Orphans of a dead raylet serve
# nothing; a long suite run again and again on one machine would pile them up.
_RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def pytest_sessionfinish(session: pytest.Session) -> None:
    import psutil

    started_at = session.config.stash.get(_STARTED_AT, time.time())
    for process in psutil.process_iter(["name", "ppid", "create_time"]):
        info = process.info
        if (info["ppid"] == 1 and (info["name"] or "").startswith(_RAY_AGENTS)
                and info["create_time"] >= started_at):  # fmt: skip
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    # The teardown report carries every phase's captured sections.
    if report.when == "teardown" and item.get_closest_marker("plants_secrets") is None:
        sections = [f"--- {name}\n{text}" for name, text in report.sections if text]
        if sections:
            artifacts.keep(artifacts.CAPTURED, item.nodeid, "\n".join(sections))
    return report


def _a_password(value: object) -> str | None:
    """A password a test chose, worth looking for: generated ones (schemathesis,
    hypothesis) like "00000000" would be found everywhere by chance."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    letters = sum(c.isalpha() for c in text)
    return text if len(text) >= 8 and letters >= 4 and len(set(text)) >= 6 else None


@pytest.fixture(scope="session", autouse=True)
def _remember_hashed_passwords() -> Iterator[None]:
    """Every password set in this process (payers' accounts, resets) is a needle."""
    original = PasswordHasher.hash

    def remembering(self: PasswordHasher, password: str | bytes, **options: object) -> str:
        artifacts.remember_secret(_a_password(password))
        return original(self, password, **options)  # type: ignore[arg-type]

    PasswordHasher.hash = remembering  # type: ignore[method-assign]
    try:
        yield
    finally:
        PasswordHasher.hash = original  # type: ignore[method-assign]
