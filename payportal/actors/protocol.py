"""What crosses the hop between a front door and an account shard.

The model: the router sends a shard one msgpack-encoded list of commands per batch and
gets back one list of ``Reply`` in the same order. A reply carries the engine's outcome
and a snapshot of what the command touched, so a front door answers its client without
a second round trip. Everything is a msgspec Struct; the encoders are built once.
"""

from __future__ import annotations

import zlib

import msgspec

from payportal.engine import Command, Invoice, Outcome, Payment

__all__ = [
    "BATCH_DECODER",
    "BATCH_ENCODER",
    "REPLIES_DECODER",
    "REPLIES_ENCODER",
    "Balance",
    "Reply",
    "shard_for",
    "shard_name",
]

NAMESPACE = "payportal"


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    outstanding_minor: int
    credit_minor: int
    currency: str


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    payment: Payment | None = None
    invoice: Invoice | None = None
    balance: Balance | None = None
    # The account's version after the command: readers use it to wait for read models.
    version: int = 0


BATCH_ENCODER = msgspec.msgpack.Encoder()
BATCH_DECODER = msgspec.msgpack.Decoder(list[Command])
REPLIES_ENCODER = msgspec.msgpack.Encoder()
REPLIES_DECODER = msgspec.msgpack.Decoder(list[Reply])


def shard_for(account_id: str, shards: int) -> int:
    """Stable across processes and restarts (unlike ``hash``, which is salted per process)."""
    assert shards > 0
    return zlib.crc32(account_id.encode()) % shards


def shard_name(shard_id: int, deployment: str = "default") -> str:
    """Shards of different deployments (or test runs) sharing one Ray never collide."""
    return f"{deployment}/account-shard-{shard_id}"
