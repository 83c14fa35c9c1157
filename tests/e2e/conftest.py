"""Fixtures of the API tests: ``api`` from ``api_harness``, ``front_door`` from
``front_door``, ``database_url`` from ``tests.databases``."""

from tests.databases import database_url

from .api_harness import api
from .front_door import front_door

__all__ = ["api", "database_url", "front_door"]
