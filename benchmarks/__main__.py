"""``make bench``: the end-to-end benchmark (``benchmarks.end_to_end``), which also runs
the shard benchmark on PostgreSQL; ``--quick`` is ``make bench-quick``.

The other benchmarks run on their own, e.g. ``python -m benchmarks.shards --db sqlite``,
``python -m benchmarks.checkpoints --db postgres`` (a hot account over a long run),
``python -m benchmarks.metrics``, ``python -m benchmarks.mail_outbox``.
"""

from __future__ import annotations

import sys

from .end_to_end import main

if __name__ == "__main__":
    sys.exit(main())
