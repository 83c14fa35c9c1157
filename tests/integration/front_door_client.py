"""A second front-door process for the serialization test: joins a running Ray, finds the
shards by name and pays one account concurrently. Prints one JSON line of what it saw."""

from __future__ import annotations

import asyncio
import json
import sys

from payportal.actors import ShardRouter
from payportal.actors.cluster import connect_ray, get_shards

from .shard_support import pay_and_capture


async def main(
    address: str, deployment: str, shards: int, account_id: str, tag: str, n: int
) -> None:
    connect_ray(address)
    router = ShardRouter(get_shards(shards, deployment))
    replies = await asyncio.gather(
        *(pay_and_capture(router, account_id, f"pay_{tag}_{i}", 100 + i) for i in range(n))
    )
    print(json.dumps({"tag": tag, "acknowledged": len(replies)}))


if __name__ == "__main__":
    address, deployment, shards, account_id, tag, n = sys.argv[1:7]
    asyncio.run(main(address, deployment, int(shards), account_id, tag, int(n)))
