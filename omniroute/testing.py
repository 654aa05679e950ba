"""Pytest helpers for testing omniroute and its plugins against a real in-process app.

Registered as a ``pytest11`` plugin, so any project that installs omniroute
(and pytest-aiohttp) gets the ``omniroute`` fixture::

    async def test_my_provider(omniroute):
        await omniroute.add_provider({"type": "mine", "api_key": "x"})
        resp = await omniroute.client.post("/v1/chat/completions", json={...})
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from omniroute.config import Config, Settings
from omniroute.plugins import Plugins


class GatewayHarness:
    """A started gateway app with an aiohttp test client and an admin key."""

    def __init__(self, client: Any, admin_key: str) -> None:
        from omniroute import appkeys

        self.client = client
        app = client.app
        #: the app's collaborators, as handlers take them (see :mod:`omniroute.appkeys`)
        self.gateway = app[appkeys.GATEWAY]
        self.catalog = app[appkeys.CATALOG]
        self.registry = app[appkeys.REGISTRY]
        self.resilience = app[appkeys.RESILIENCE]
        self.store = app[appkeys.STORE]
        self.log = app[appkeys.REQUEST_LOG]
        self.auth_schemes = app[appkeys.AUTH_SCHEMES]
        #: the response cache (``await harness.cache.settled()`` waits for queued stores)
        self.cache = app[appkeys.CACHE]
        self.admin_key = admin_key
        self.admin_headers = {"Authorization": f"Bearer {admin_key}"}

    @property
    def base_url(self) -> str:
        """The gateway root URL (SDKs add ``/v1`` or not as they need)."""
        return str(self.client.make_url("")).rstrip("/")

    async def add_provider(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Add a connection through the management API; return its public view."""
        resp = await self.client.post("/api/providers", json=spec, headers=self.admin_headers)
        body = await resp.json()
        if resp.status != 201:
            raise AssertionError(f"adding provider failed: {resp.status} {body}")
        return body

    async def create_key(self, name: str = "test", *, admin: bool = False) -> str:
        _, secret = await self.store.create_key(name, {"admin"} if admin else set())
        for scheme in self.auth_schemes.values():
            await scheme.reload()
        return secret

    async def set_settings(self, **values: Any) -> None:
        resp = await self.client.patch("/api/settings", json=values, headers=self.admin_headers)
        if resp.status != 200:
            raise AssertionError(f"settings failed: {resp.status} {await resp.text()}")


def make_test_config(data_dir: Path, **settings: Any) -> Config:
    """A configuration for tests: a temporary data dir and pinned settings."""
    return Config(
        data_dir=data_dir,
        port=0,
        initial_password="test-password-123",
        settings_env=Settings.coerce_all(settings, source="test"),
        secret_key=b"k" * 32,
    )


async def start_harness(
    aiohttp_client: Callable[..., Awaitable[Any]],
    config: Config,
    plugins: Plugins | None = None,
) -> GatewayHarness:
    from omniroute.app import make_app

    client = await aiohttp_client(make_app(config, plugins))
    harness = GatewayHarness(client, "")
    harness.admin_key = await harness.create_key("test-admin", admin=True)
    harness.admin_headers = {"Authorization": f"Bearer {harness.admin_key}"}
    return harness


@pytest.fixture
async def omniroute(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    """A running gateway on a temporary data directory, with every installed plugin."""
    yield await start_harness(aiohttp_client, make_test_config(tmp_path / "omniroute"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the worker threads of aiosqlite connections a test left open.

    aiosqlite (0.22 on) runs each connection on a non-daemon thread, which only ``close()``
    ends: one connection left open by a failing test (its app never cleaned up) would keep
    the finished pytest process waiting at exit forever, and a red run would look like a
    hung one. They are stopped here, and counted on the terminal so that a leak is seen.
    """
    import gc
    import warnings

    import aiosqlite

    with warnings.catch_warnings():  # (isinstance on some lazy modules' objects warns)
        warnings.simplefilter("ignore")
        left = [obj for obj in gc.get_objects()
                if isinstance(obj, aiosqlite.Connection) and obj._connection is not None]
    for conn in left:
        conn.stop()  # closes the sqlite3 connection on its thread, then ends the thread
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")  # (after the progress, on a line of its own)
            reporter.write_line(f"omniroute: stopped {len(left)} aiosqlite connection(s) "
                                "a test left open", yellow=True)
