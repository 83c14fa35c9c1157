"""Shared fixtures: the real PostgreSQL and Redis, found on loopback or skipped with a reason.

On a laptop without them the tests that need them are skipped and say why; under
``CI=true`` a missing service fails those tests instead, so CI can never pass by
skipping the database.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

# Ray reads this when first imported: keep every test's Ray on loopback (see actors/cluster.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest

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
