"""Fixtures of the API tests: ``api`` from ``api_harness``, ``database_url`` from
``tests.databases``."""

from tests.databases import database_url

from .api_harness import api

__all__ = ["api", "database_url"]
