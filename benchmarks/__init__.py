"""Benchmarks that print numbers (never tests that assert time). Run one with
``python -m benchmarks.<name> --help``, or all with ``make bench``."""
