"""Both accounting jobs on a timer, for ``payportal serve`` (one front-door process runs it).

Recognition runs at start and every ``RECOGNITION_INTERVAL_S`` through yesterday (UTC): a
run for a day already done writes nothing, so the hour only bounds how long after midnight
the report moves on. Reconciliation runs every ``RECONCILIATION_INTERVAL_S`` when there is
a processor to ask. A failed run is logged and tried again at the next tick; it never
stops the server, and each job is idempotent, so a half-finished run is simply redone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from .recognition import RECOGNITION_INTERVAL_S, recognize_revenue
from .reconciliation import RECONCILIATION_INTERVAL_S, SettlementSource, reconcile

__all__ = ["run_accounting_forever"]

log = logging.getLogger(__name__)


async def _every(interval_s: float, name: str, job: Any) -> None:
    while True:
        try:
            result = await job()
            log.info("%s: %s", name, result)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; trying again in %s s", name, interval_s)
        await asyncio.sleep(interval_s)


async def run_accounting_forever(
    router: Any,
    engine: AsyncEngine,
    *,
    source: SettlementSource | None,
    recognition_interval_s: float = RECOGNITION_INTERVAL_S,
    reconciliation_interval_s: float = RECONCILIATION_INTERVAL_S,
) -> None:
    jobs = [_every(recognition_interval_s, "revenue recognition",
                   lambda: recognize_revenue(router, engine))]  # fmt: skip
    if source is not None:
        jobs.append(_every(reconciliation_interval_s, "reconciliation",
                           lambda: reconcile(router, engine, source)))  # fmt: skip
    await asyncio.gather(*jobs)
