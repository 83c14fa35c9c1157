"""``make bench``: every benchmark on every database it supports, one after another."""

from __future__ import annotations

import subprocess
import sys

RUNS = (
    ["benchmarks.shards", "--db", "sqlite"],
    ["benchmarks.shards", "--db", "postgres"],
    ["benchmarks.checkpoints", "--db", "sqlite"],
    ["benchmarks.checkpoints", "--db", "postgres"],
)


def main() -> int:
    failed = 0
    for run in RUNS:
        print(f"\n$ python -m {' '.join(run)}", flush=True)
        failed += subprocess.call([sys.executable, "-m", *run]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
