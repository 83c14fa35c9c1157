"""The sandbox's outbound callbacks: signed, retried, and on request duplicated,
reordered and delayed.

The model (Standard Webhooks v1): each event gets an id once (``evt_…``) that stays the
same across retries and duplicates, so the receiver can dedupe on ``webhook-id``; the
body bytes are fixed at creation; every delivery attempt is signed afresh with its own
``webhook-timestamp`` by ``standardwebhooks.Webhook(secret).sign``. One worker sends
events in the order they become due; a delivery answered with anything but 2xx (or not
answered) is retried in the background on ``retry_delays_ms``, so one failing event
never holds up the others. Undelivered events are lost when the sandbox stops: it keeps
everything in memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import msgspec
from standardwebhooks import Webhook

from ._faults import Faults

__all__ = ["STANDARD_RETRY_DELAYS_MS", "CallbackEvent", "CallbackSender"]

log = logging.getLogger("payportal.processors.sandbox")

# The Standard Webhooks example schedule after the immediate first attempt:
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
STANDARD_RETRY_DELAYS_MS: Final[tuple[int, ...]] = (
    5_000,
    300_000,
    1_800_000,
    7_200_000,
    18_000_000,
    36_000_000,
    36_000_000,
)


class CallbackEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    charge_id: str
    body: bytes


class _Delivery(msgspec.Struct, frozen=True, kw_only=True):
    event: CallbackEvent
    due: float  # loop time


# Callbacks in flight to the receiver at once (as a processor's webhook workers would).
DELIVERIES_MAX: Final = 128

class CallbackSender:
    """Sends the sandbox's events to one URL. ``start`` and ``close`` bracket its life."""

    def __init__(
        self,
        *,
        url: str | None,
        secret: str,
        clock: Callable[[], float],
        faults: Callable[[], Faults],
        rng: Callable[[], random.Random],
        retry_delays_ms: tuple[int, ...] = STANDARD_RETRY_DELAYS_MS,
        timeout_ms: int = 10_000,
    ) -> None:
        self._url = url
        self._webhook = Webhook(secret)
        self._clock = clock
        self._faults = faults
        self._rng = rng
        self._retry_delays_ms = retry_delays_ms
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._session: aiohttp.ClientSession | None = None
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._held: list[_Delivery] = []
        self._release_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(DELIVERIES_MAX)
        # Every event emitted, in order; the sandbox's own record, for operators and tests.
        self.events: list[CallbackEvent] = []

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=DELIVERIES_MAX)
        self._session = aiohttp.ClientSession(connector=connector)
        self._spawn(self._run())

    async def close(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def emit(self, type_: str, data: dict[str, Any]) -> CallbackEvent:
        event = CallbackEvent(
            id=f"evt_{secrets.token_hex(12)}",
            type=type_,
            charge_id=data["charge"],
            body=msgspec.json.encode({"type": type_, "data": data}),
        )
        self.events.append(event)
        if self._url is None:
            return event
        faults = self._faults()
        loop = asyncio.get_running_loop()
        delivery = _Delivery(event=event, due=loop.time() + faults.callback_delay_ms / 1000)
        copies = [delivery] * faults.duplicate_callbacks
        if faults.reorder_callbacks < 2:
            for copy in copies:
                self._queue.put_nowait(copy)
            return event
        self._held.extend(copies)
        if len(self._held) >= faults.reorder_callbacks:
            self._release_held()
        elif self._release_timer is None:
            self._release_timer = loop.call_later(faults.reorder_hold_ms / 1000, self._release_held)
        return event

    def _release_held(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        held, self._held = self._held, []
        self._rng().shuffle(held)
        for delivery in held:
            self._queue.put_nowait(delivery)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while True:
            delivery = await self._queue.get()
            self._spawn(self._deliver_when_due(delivery))

    async def _deliver_when_due(self, delivery: _Delivery) -> None:
        # Each on its own, at most DELIVERIES_MAX at once: one at a time, a busy
        # processor's callbacks would queue behind each other's round trips.
        wait_s = delivery.due - asyncio.get_running_loop().time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        async with self._slots:
            await self._deliver(delivery.event, attempt=1)

    async def _deliver(self, event: CallbackEvent, *, attempt: int) -> None:
        status = await self._post(event)
        if status is not None and 200 <= status < 300:
            # Debug: one line per delivered callback is the processor's cost, not news.
            log.debug(
                "callback %s %s for %s delivered (attempt %d)",
                event.id,
                event.type,
                event.charge_id,
                attempt,
            )
            return
        if attempt > len(self._retry_delays_ms):
            log.warning(
                "callback %s %s for %s given up after %d attempts",
                event.id,
                event.type,
                event.charge_id,
                attempt,
            )
            return
        log.info("callback %s answered %s; retrying", event.id, status)
        self._spawn(self._retry(event, attempt=attempt))

    async def _retry(self, event: CallbackEvent, *, attempt: int) -> None:
        await asyncio.sleep(self._retry_delays_ms[attempt - 1] / 1000)
        await self._deliver(event, attempt=attempt + 1)

    async def _post(self, event: CallbackEvent) -> int | None:
        """The receiver's status, or None when it could not be reached in time."""
        assert self._session is not None
        assert self._url is not None
        timestamp = dt.datetime.fromtimestamp(int(self._clock()), tz=dt.UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": self._webhook.sign(event.id, timestamp, event.body.decode()),
        }
        try:
            async with self._session.post(
                self._url, data=event.body, headers=headers, timeout=self._timeout
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            log.info("callback %s not delivered: %s", event.id, type(error).__name__)
            return None
