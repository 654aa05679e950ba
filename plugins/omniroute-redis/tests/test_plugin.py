"""Installed, the plugin changes nothing until ``state_url`` asks for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from omniroute.appkeys import PIPELINE
from omniroute.plugins import load_plugins
from omniroute.testing import make_test_config, start_harness

from omniroute_redis import RedisCache, RedisShared


def test_loading_the_plugin_imports_no_redis_client() -> None:
    """redis-py costs ~200 ms and 10 MiB to import: only a gateway that uses it pays."""
    code = ("import sys; from omniroute.plugins import load_plugins; "
            "p = load_plugins(); assert 'redis' in p.state_backends, p.state_backends; "
            "print('redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_it_registers_a_state_backend_and_a_cache_backend() -> None:
    plugins = load_plugins()
    assert plugins.state_backends["redis"] is RedisShared
    assert plugins.cache_backends["redis"] is RedisCache
    assert set(RedisShared.schemes) == {"redis", "rediss", "unix"}


async def test_without_state_url_a_gateway_shares_nothing(aiohttp_client: Any,
                                                          tmp_path: Path) -> None:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "omniroute"))
    assert gw.gateway.shared is None and gw.gateway.budgets.shared is None
    assert gw.resilience.state.slots is None
    # nothing is prefetched per request: the pipeline makes no batch at all
    assert gw.client.app[PIPELINE].batches is None
    health = await (await gw.client.get("/api/monitoring/health")).json()
    assert "shared_state" not in health


async def test_a_redis_cluster_node_is_refused_at_start(tmp_path: Path) -> None:
    """A request's ``admit`` script touches keys of several hash slots: on a Cluster node
    the gateway does not start, and says why."""
    import asyncio
    import shutil

    import pytest
    from omniroute.config import Settings
    from omniroute.resilience import ManualClock
    from redis.exceptions import RedisError
    from redis_testkit import free_port, until

    from omniroute_redis.backend import NotSupported

    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed (the test command needs it)"
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
        # the cluster bus port given too: by default it is port + 10000, past 65535 for
        # a high free port (redis-server then exits at once)
        "no", "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
        "--cluster-config-file",
        str(tmp_path / "nodes.conf"), "--dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    shared = RedisShared(f"redis://127.0.0.1:{port}/0", clock=ManualClock(),
                         settings=Settings)
    try:
        async def up() -> bool:
            try:
                return bool(await shared.link.client.ping())
            except (OSError, RedisError):
                return False

        await until(up, timeout=10.0, step=0.02)
        with pytest.raises(NotSupported, match="Redis Cluster"):
            await shared.start()
    finally:
        await shared.close()
        process.kill()
        await process.wait()
