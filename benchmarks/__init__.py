"""Benchmarks that print numbers (never tests that assert time). Run one with
``python -m benchmarks.<name> --help``, or all with ``make bench``."""

import os as _os

# The databases a benchmark fills hold sealed fields like any other: one key encryption key
# per run, inherited by the processes it starts (unless the caller brings its own).
if not _os.environ.get("PAYPORTAL_DATA_KEYS"):
    from payportal.persistence.sealing import new_kek as _new_kek

    _os.environ["PAYPORTAL_DATA_KEYS"] = _new_kek()
