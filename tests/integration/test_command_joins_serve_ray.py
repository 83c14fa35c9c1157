"""A command run beside ``payportal serve`` (billing run, reconcile, revenue, demo seed)
joins the local Ray that serve advertised in ``var/`` and finds serve's shards there,
instead of starting a second Ray with a second set of shards over the same accounts."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import ray

from payportal.actors.cluster import advertise_local_ray, ensure_shards
from payportal.persistence import migrate

from .shard_support import run_python

pytestmark = [pytest.mark.ray]

# The command's side, in a process of its own as a CLI command is.
COMMAND = """
import json, sys
from pathlib import Path
import ray
from payportal.actors.cluster import connect_ray_for_command, get_shards
joined = connect_ray_for_command(None, Path(sys.argv[1]))
[shard] = get_shards(1, sys.argv[2])
print(json.dumps({"joined": joined, "gcs": ray.get_runtime_context().gcs_address,
                  "shard_pid": ray.get(shard.pid.remote())}))
"""


async def test_a_command_joins_the_local_ray_serve_advertised(
    local_ray: None, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/payportal.db"
    await asyncio.to_thread(migrate, url)
    deployment = uuid.uuid4().hex
    [shard] = ensure_shards(1, url, deployment=deployment)
    shard_pid = await shard.pid.remote()
    var_dir = tmp_path / "var"
    advertised = advertise_local_ray(var_dir)
    assert advertised.read_text().strip() == ray.get_runtime_context().gcs_address

    answer = await run_python("-c", COMMAND, str(var_dir), deployment, timeout_s=120)
    assert answer["joined"] is True
    # The same Ray (not one the command started), and serve's shard is found in it.
    assert answer["gcs"] == ray.get_runtime_context().gcs_address
    assert answer["shard_pid"] == shard_pid
