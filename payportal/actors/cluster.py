"""Starting Ray and finding the shards, locally or on a cluster.

The model: shards are named actors in the ``payportal`` namespace, so any front-door
process connected to the same Ray finds the same shards by name. Creation is
get-or-create, so many front doors may race to start them and still share one set.
On a cluster the shards are detached, so they outlive the process that created them.
Ray supervises them: ``max_restarts=-1`` restarts a crashed shard, and
``max_task_retries=-1`` re-sends the calls it had in flight, which the engine's
idempotency makes safe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import msgspec

# Ray binds an embedded instance to every interface and advertises the host's public
# address unless told otherwise before it is imported; this flag is Ray's own switch to
# loopback-only. A deployment on a real cluster sets PAYPORTAL_RAY_ADDRESS and keeps Ray's
# default.
if not os.environ.get("PAYPORTAL_RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # after the flag above, deliberately

from payportal.gc_tuning import tune_for_throughput
from payportal.logs import configure_logging

from .protocol import NAMESPACE, shard_name
from .shard import AccountShardCore, ShardOptions

__all__ = [
    "AccountShard",
    "ShardJanitor",
    "advertise_local_ray",
    "connect_ray",
    "connect_ray_for_command",
    "ensure_shards",
    "get_shards",
]

# Where `payportal serve` on the embedded local Ray leaves its Ray address, so a command
# run beside it (billing run, reconcile, demo seed) joins its shards instead of starting
# a second set that would write the same accounts.
LOCAL_RAY_ADDRESS_FILE = "ray_address"
# How long a command waits for an advertised Ray to answer before treating it as gone.
LOCAL_RAY_PROBE_S = 1.0


class ShardJanitor(msgspec.Struct, frozen=True, kw_only=True):
    """Where a shard's retry janitor charges and how it finds the shards (its own too)."""

    processor_url: str
    # PAYPORTAL_TLS_CA_FILE for an https processor; the path must exist where shards run.
    processor_ca_file: str | None = None
    shards: int
    # PAYPORTAL_PROCESSOR. For "stripe" the shard process reads its keys from its own
    # settings (serve exports them to the environment local Ray workers inherit; on a
    # cluster every node sets them): a secret never travels in an actor's arguments.
    processor: str = "sandbox"
    deployment: str = "default"
    interval_ms: int = 1_000


# A janitor that fails waits this long before it starts again, so a database outage is
# not turned into a busy loop.
JANITOR_RESTART_MS = 5_000


def _janitor_processor(janitor: ShardJanitor) -> Any:
    if janitor.processor == "stripe":
        from payportal.config import load_settings
        from payportal.processors.stripe import StripeProcessor

        return StripeProcessor.from_settings(load_settings())
    from payportal.processors.sandbox_client import SandboxProcessor

    return SandboxProcessor(janitor.processor_url, ca_file=janitor.processor_ca_file)


@ray.remote
class AccountShard:
    """The Ray actor around ``AccountShardCore``; it connects its store on first use.

    With a ``ShardJanitor`` each shard also runs the retry janitor for its own accounts:
    due retries and unknown outcomes, read from the durable schedule. It lives and
    restarts with the shard, so a restarted shard resumes its retries by itself."""

    def __init__(
        self,
        shard_id: int,
        database_url: str,
        options: ShardOptions,
        janitor: ShardJanitor | None = None,
    ) -> None:
        configure_logging()
        self._shard_id = shard_id
        self._database_url = database_url
        self._options = options
        self._core: AccountShardCore | None = None
        self._ready_lock = asyncio.Lock()
        self._clock_offset_ms = 0
        self._janitor_task: asyncio.Task[None] | None = None
        self._janitor: Any = None  # the running RetryJanitor
        # A shard process does nothing but apply batches: collect cycles rarely.
        tune_for_throughput()
        if janitor is not None:
            # An async actor's constructor runs on its event loop.
            self._janitor_task = asyncio.get_running_loop().create_task(
                self._run_janitor(janitor)
            )

    async def _run_janitor(self, janitor: ShardJanitor) -> None:
        from .janitor import RetryJanitor
        from .router import ShardRouter

        log = logging.getLogger(__name__)
        while True:
            try:
                core = await self._ready()
                router = ShardRouter(get_shards(janitor.shards, janitor.deployment))
                processor = _janitor_processor(janitor)
                self._janitor = RetryJanitor(
                    router, core.store, processor, clock_ms=self._now_ms,
                    shard_ids=[self._shard_id],
                )  # fmt: skip
                # Commits that schedule work wake it; idle, it looks seldom.
                core.on_janitor_work = self._janitor.wake_at
                try:
                    await self._janitor.run_forever(janitor.interval_ms)
                finally:
                    core.on_janitor_work = None
                    self._janitor = None
                    await processor.close()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shard %s: retry janitor failed; restarting", self._shard_id)
                await asyncio.sleep(JANITOR_RESTART_MS / 1000)

    async def _ready(self) -> AccountShardCore:
        # Locked: the janitor and the first batch may both arrive before the store is open.
        async with self._ready_lock:
            if self._core is None:
                from payportal.persistence import Store

                store = await Store.connect(self._database_url)
                self._core = AccountShardCore(
                    self._shard_id, store, options=self._options, clock_ms=self._now_ms
                )
        return self._core

    def _now_ms(self) -> int:
        import time

        return time.time_ns() // 1_000_000 + self._clock_offset_ms

    async def apply(self, batch: bytes) -> bytes:
        core = await self._ready()
        return await core.apply(batch)

    async def changes_since(self, epoch: str, seq: int, wait_s: float) -> bytes:
        """The balance changes committed after ``seq`` (``feed.BalanceFeed.since``)."""
        core = await self._ready()
        return await core.feed.since(epoch, seq, wait_s)

    async def advance_clock(self, ms: int) -> int:
        """Tests move the shard's clock forward (retry schedules) without sleeping."""
        self._clock_offset_ms += ms
        if self._janitor is not None:
            self._janitor.wake_at(self._now_ms())  # what the jump made due runs now
        return self._now_ms()

    async def pid(self) -> int:
        return os.getpid()

    async def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    async def stats(self) -> dict[str, int]:
        core = await self._ready()
        return {**core.stats, "accounts_in_memory": core.accounts_in_memory}

    async def flush_checkpoints(self) -> int:
        core = await self._ready()
        return await core.flush_checkpoints()

    async def metrics_snapshot(self) -> dict[str, Any]:
        """The shard's counters for ``/metrics``; never opens the store to answer."""
        if self._core is None:
            return {"shard_id": self._shard_id}
        return self._core.metrics_snapshot()


def connect_ray(address: str | None = None, **init_kwargs: Any) -> None:
    """Join the Ray at ``address`` (a cluster), or start a local one when None."""
    if ray.is_initialized():
        return
    if address is None:
        init_kwargs.setdefault("_node_ip_address", "127.0.0.1")
    ray.init(
        address=address,
        namespace=NAMESPACE,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        **init_kwargs,
    )


def advertise_local_ray(var_dir: Path) -> Path:
    """Write this process's local Ray address into ``var_dir``; the caller removes the
    file when it stops."""
    path = var_dir / LOCAL_RAY_ADDRESS_FILE
    var_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(ray.get_runtime_context().gcs_address + "\n")
    return path


def connect_ray_for_command(ray_address: str | None, var_dir: Path) -> bool:
    """Join the configured Ray; else the local one a running ``serve`` advertised; else
    start a local Ray. Returns whether an existing Ray was joined (its shards outlive
    this command, so they must not be created as this driver's own)."""
    if ray_address is not None:
        connect_ray(ray_address)
        return True
    try:
        advertised = (var_dir / LOCAL_RAY_ADDRESS_FILE).read_text().strip()
    except OSError:
        advertised = ""
    host, _, port = advertised.rpartition(":")
    if host and port.isdigit():
        try:
            # A file left by a serve that was killed names a port nobody listens on.
            socket.create_connection((host, int(port)), timeout=LOCAL_RAY_PROBE_S).close()
        except OSError:
            pass
        else:
            _token_mode_if_token_available()
            # The advertised Ray is this machine's, kept on loopback like connect_ray(None).
            connect_ray(advertised, _node_ip_address="127.0.0.1")
            return True
    connect_ray(None)
    return False


def _token_mode_if_token_available() -> None:
    """A local Ray started by ray.init() requires the token it keeps in the user's home,
    but a driver joining by address sends it only in token mode, which Ray reads into
    its cached config: switch through Ray's own helper (private; absent in Rays without
    token authentication, which need nothing)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def ensure_shards(
    count: int,
    database_url: str,
    *,
    options: ShardOptions | None = None,
    detached: bool = False,
    deployment: str = "default",
    janitor: ShardJanitor | None = None,
    **actor_options: Any,
) -> list[Any]:
    """Get or create shards ``0..count-1``; all front doors must agree on ``count``."""
    handles = []
    for shard_id in range(count):
        handle = AccountShard.options(  # type: ignore[attr-defined]
            name=shard_name(shard_id, deployment),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached" if detached else None,
            max_restarts=-1,
            max_task_retries=-1,
            # Shards wait on the database, not the CPU: don't let Ray's CPU accounting cap
            # how many fit on a node.
            num_cpus=0,
            max_concurrency=64,
            **actor_options,
        ).remote(shard_id, database_url, options or ShardOptions(), janitor)
        handles.append(handle)
    return handles


def get_shards(count: int, deployment: str = "default") -> list[Any]:
    """Find shards another process started."""
    return [ray.get_actor(shard_name(i, deployment), namespace=NAMESPACE) for i in range(count)]
