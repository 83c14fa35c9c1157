"""Garbage-collector settings for the processes on the payment path.

Every command allocates a few hundred short-lived container objects (commands, events,
replies, futures, coroutines), which CPython's default collector thresholds (700, 10, 10)
answer with a young-generation collection every few commands and repeated walks over the
long-lived objects. Measured with ``python -m benchmarks.shards``, that collector work
was about a third of the front door's CPU per payment. Almost all of this garbage is
freed by reference counting; the cyclic collector only has to find the occasional cycle
(an exception's traceback, a cancelled task), so running it far less often is safe.

``gc.freeze()`` moves everything alive at start-up (modules, classes, the app) out of the
collector's sight, so a full collection no longer walks it.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["THRESHOLDS", "tune_for_throughput"]

# Young generation collected every 50,000 net allocations instead of 700; the older
# generations after 20 younger collections each.
THRESHOLDS: Final = (50_000, 20, 20)


def tune_for_throughput() -> None:
    """Call once start-up is done (modules imported, long-lived objects built)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
