"""Card processors: the adapter interface the gateway calls, and the sandbox processor.

``adapter`` holds the interface (``ProcessorAdapter``, ``ChargeResult``,
``RefundResult``); ``sandbox`` is the sandbox service (its own aiohttp app, run alone
with ``python -m payportal.processors.sandbox``); ``sandbox_client`` is the adapter that
talks to it. The sandbox modules are not imported here, so importing the interface
does not pull in the service.
"""

from .adapter import (
    ChargeResult,
    InquiryStatus,
    ProcessorAdapter,
    ProcessorRequestError,
    RefundResult,
)

__all__ = [
    "ChargeResult",
    "InquiryStatus",
    "ProcessorAdapter",
    "ProcessorRequestError",
    "RefundResult",
]
