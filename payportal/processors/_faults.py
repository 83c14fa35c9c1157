"""The sandbox's fault knobs: what it does wrong, on request, and deterministically.

A ``Faults`` value is set when the app is created and replaced at runtime by
``POST /v1/_faults`` with any subset of its fields (``FaultsPatch``). Every random
choice the sandbox makes (which request gets a 5xx, how held callbacks are shuffled)
is drawn from one ``random.Random`` seeded at creation or by ``seed`` in the patch,
so a run with the same seed and the same requests in the same order repeats exactly.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Faults", "FaultsPatch", "apply_patch"]

NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class Faults(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Added before a charge or refund is decided; an inquiry meanwhile sees ``processing``.
    latency_ms: NonNegativeInt = 0
    # Every charge is decided and captured, then its response is held for
    # ``capture_timeout_delay_ms`` (card 4000 0000 0000 3063 does this always).
    timeout_after_capture: bool = False
    # Long enough to outlast any sensible client timeout; tests set it short.
    capture_timeout_delay_ms: NonNegativeInt = 30_000
    # Share of charge and refund requests answered 503 before anything is done.
    error_rate_5xx: Probability = 0.0
    # Each callback is delivered this many times, with the same webhook-id.
    duplicate_callbacks: Annotated[int, msgspec.Meta(ge=1)] = 1
    # When ≥ 2: callbacks are held until this many are waiting (or
    # ``reorder_hold_ms`` passed) and then sent in a seeded-shuffled order.
    reorder_callbacks: NonNegativeInt = 0
    reorder_hold_ms: NonNegativeInt = 200
    # Every callback waits this long after its event before it is sent.
    callback_delay_ms: NonNegativeInt = 0


class FaultsPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/_faults``: only the fields given change."""

    latency_ms: NonNegativeInt | msgspec.UnsetType = msgspec.UNSET
    timeout_after_capture: bool | msgspec.UnsetType = msgspec.UNSET
    capture_timeout_delay_ms: NonNegativeInt | msgspec.UnsetType = msgspec.UNSET
    error_rate_5xx: Probability | msgspec.UnsetType = msgspec.UNSET
    duplicate_callbacks: Annotated[int, msgspec.Meta(ge=1)] | msgspec.UnsetType = msgspec.UNSET
    reorder_callbacks: NonNegativeInt | msgspec.UnsetType = msgspec.UNSET
    reorder_hold_ms: NonNegativeInt | msgspec.UnsetType = msgspec.UNSET
    callback_delay_ms: NonNegativeInt | msgspec.UnsetType = msgspec.UNSET
    # Reseeds the sandbox's random source.
    seed: int | msgspec.UnsetType = msgspec.UNSET


def apply_patch(faults: Faults, patch: FaultsPatch) -> Faults:
    changes = {
        name: getattr(patch, name)
        for name in Faults.__struct_fields__
        if getattr(patch, name) is not msgspec.UNSET
    }
    return msgspec.structs.replace(faults, **changes)
