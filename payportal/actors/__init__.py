"""Ray actors: account shards and the front door's router to them. Thin by design: they
call the engine and the persistence layer and add ordering, batching and supervision."""

from .protocol import Balance, Reply, shard_for, shard_name
from .router import Overloaded, ShardRouter
from .shard import AccountShardCore, ShardOptions

__all__ = [
    "AccountShardCore",
    "Balance",
    "Overloaded",
    "Reply",
    "ShardOptions",
    "ShardRouter",
    "shard_for",
    "shard_name",
]
