"""Fixtures of the API tests (``api``, ``database_url``), from ``api_harness``."""

from .api_harness import api, database_url

__all__ = ["api", "database_url"]
