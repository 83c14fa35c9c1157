"""Test doubles of what an account shard runs on."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from payportal.engine import AccountState

__all__ = ["RecordingStore"]


class RecordingStore:
    """Keeps committed changes in memory; can be told to fail the next commit."""

    def __init__(self) -> None:
        self.commits: list[list[Any]] = []
        self.fail_next = False
        self.durable: dict[str, AccountState] = {}

    async def load_account(self, account_id: str) -> AccountState | None:
        state = self.durable.get(account_id)
        return msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=AccountState | None)

    async def commit(self, shard_id: int, changes: list[Any]) -> None:
        await asyncio.sleep(0)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database went away")
        self.commits.append(changes)
        for change in changes:
            self.durable[change.account_id] = msgspec.msgpack.decode(
                msgspec.msgpack.encode(change.state), type=AccountState
            )
