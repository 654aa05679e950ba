"""The hooks that add where state is kept: cache backends and layers, shared state,
databases (one ``test_hook_<name>`` each; the meta-test is in test_hooks.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web

from omniroute import (
    CacheBackend,
    CacheKey,
    CacheLayer,
    LayerHit,
    SharedState,
    hookimpl,
)
from omniroute.app import make_app
from omniroute.config import ConfigError
from omniroute.plugins import load_plugins
from omniroute.resilience import MemoryState
from omniroute.storage import Database, DatabaseBackend
from omniroute.testing import make_test_config, start_harness
from omniroute.watch import VersionPoll


class DictCache(CacheBackend):
    name = "test-dict"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def clear(self) -> None:
        self.data.clear()


class CachePlugin:
    @hookimpl
    def register_cache_backends(self, register: Callable[[type[CacheBackend]], None]) -> None:
        register(DictCache)


async def test_hook_register_cache_backends() -> None:
    plugins = load_plugins(extra=[("t-cache", CachePlugin())])
    assert plugins.cache_backends["test-dict"] is DictCache
    infos = {i.name: i for i in plugins.infos}
    assert infos["t-cache"].registered == {"cache_backends": ["test-dict"]}
    # the built-in backend is registered the same way
    assert infos["memory-cache"].registered == {"cache_backends": ["memory"]}
    backend = plugins.cache_backends["test-dict"]({"x": 1})
    await backend.set("k", b"v")
    assert await backend.get("k") == b"v"
    assert await backend.delete("k") is True
    assert await backend.get("k") is None


class ToldPoll(VersionPoll):
    """The SQLite poll, remembering what it was told to announce."""

    announced: ClassVar[list[int]] = []

    def announce(self, version: int) -> None:
        self.announced.append(version)


class MemoryShared(SharedState):
    """A shared-state backend that shares nothing: the in-memory tables, announced versions."""

    name = "test-memory"
    schemes = ("test-mem",)
    made: ClassVar[list[MemoryShared]] = []

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.state = MemoryState()
        self.events: list[str] = []
        self.made.append(self)

    def resilience_state(self) -> MemoryState:
        return self.state

    def watcher(self, db: Any, **kwargs: Any) -> ToldPoll:
        return ToldPoll(db, **kwargs)

    async def start(self) -> None:
        self.events.append("start")

    async def close(self) -> None:
        self.events.append("close")

    def health(self) -> dict[str, Any]:
        return {**super().health(), "ok": False}


class StatePlugin:
    @hookimpl
    def register_state_backends(self, register: Callable[[type[SharedState]], None]) -> None:
        register(MemoryShared)


async def test_hook_register_state_backends(aiohttp_client: Any, tmp_path: Path) -> None:
    plugins = load_plugins(extra=[("t-state", StatePlugin())])
    assert plugins.state_backends["test-memory"] is MemoryShared
    assert plugins.info("t-state").registered == {"state_backends": ["test-memory"]}
    # installed, it changes nothing until state_url names its scheme
    plain = await start_harness(aiohttp_client, make_test_config(tmp_path / "a"), plugins)
    assert plain.gateway.shared is None and MemoryShared.made == []
    config = make_test_config(tmp_path / "b").replace(state_url="test-mem://:secret@host/1")
    harness = await start_harness(aiohttp_client, config, plugins)
    shared = harness.gateway.shared
    assert isinstance(shared, MemoryShared) and shared.events == ["start"]
    assert harness.resilience.state is shared.state
    health = await (await harness.client.get("/api/monitoring/health")).json()
    assert health["status"] == "degraded"
    # the backend's kind and state; not where it is (the URL), in this public answer
    assert health["shared_state"] == {"backend": "test-memory", "ok": False}
    resp = await harness.client.post("/api/models/alias", headers=harness.admin_headers,
                                      json={"alias": "fast", "target": "x/y"})
    assert resp.status in (200, 201)
    assert ToldPoll.announced and ToldPoll.announced[-1] == await harness.store.db.config_version()
    metrics = await (await harness.client.get("/metrics")).text()
    assert "omniroute_state_degraded 1.0" in metrics
    with pytest.raises(ConfigError, match="no state backend serves 'nope'"):
        make_app(make_test_config(tmp_path / "c").replace(state_url="nope://x"), plugins)


class FileDatabase(Database):
    """SQLite under a URL scheme of its own (``test-db:///path``), standing in for a
    database server: what ``database_url`` opens is this type's, not the data dir's."""

    name = "test-file-db"
    schemes = ("test-db",)
    opened: ClassVar[list[str]] = []

    @classmethod
    async def connect(cls, url: str, *, migrations: Any = None) -> FileDatabase:
        path = url.split("://", 1)[1]
        cls.opened.append(path)
        db = await cls.open(path)
        assert isinstance(db, FileDatabase)
        return db


class DatabasePlugin:
    @hookimpl
    def register_database_backends(self, register: Callable[[type[DatabaseBackend]], None],
                                   ) -> None:
        register(FileDatabase)


async def test_hook_register_database_backends(aiohttp_client: Any, tmp_path: Path) -> None:
    plugins = load_plugins(extra=[("t-db", DatabasePlugin())])
    assert plugins.database_backends["test-file-db"] is FileDatabase
    assert plugins.info("t-db").registered == {"database_backends": ["test-file-db"]}
    # installed, it changes nothing until database_url names its scheme
    plain = await start_harness(aiohttp_client, make_test_config(tmp_path / "a"), plugins)
    assert type(plain.gateway.db) is Database and FileDatabase.opened == []
    elsewhere = tmp_path / "server" / "shared.sqlite3"
    elsewhere.parent.mkdir()
    config = make_test_config(tmp_path / "b").replace(database_url=f"test-db://{elsewhere}")
    first = await start_harness(aiohttp_client, config, plugins)
    assert isinstance(first.gateway.db, FileDatabase) and FileDatabase.opened == [str(elsewhere)]
    assert not (tmp_path / "b" / "omniroute.sqlite3").exists()  # the data dir keeps no database
    resp = await first.client.post("/api/models/alias", headers=first.admin_headers,
                                   json={"alias": "fast", "target": "x/y"})
    assert resp.status in (200, 201)
    # a second instance with the same database_url sees the same configuration
    second = await start_harness(aiohttp_client, config.replace(data_dir=tmp_path / "c"), plugins)
    assert (await second.store.list_aliases()) == {"fast": "x/y"}
    with pytest.raises(ConfigError, match="no database backend serves 'nope'"):
        make_app(make_test_config(tmp_path / "d").replace(database_url="nope://x"), plugins)


class DictLayer(CacheLayer):
    """A toy layer: answers a stored entry for any request with the same prompt text."""

    name = "t-dict-layer"

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    async def lookup(self, key: CacheKey) -> LayerHit | None:
        entry = self.entries.get(key.prompt)
        return None if entry is None else LayerHit(entry, similarity=0.97)

    async def store(self, key: CacheKey, entry: bytes, ttl: float) -> None:
        self.entries[key.prompt] = entry

    async def clear(self) -> None:
        self.entries.clear()


class LayersPlugin:
    def __init__(self, layer: Any) -> None:
        self.layer = layer

    @hookimpl
    def register_cache_layers(self, register: Callable[[Any], None],
                              app: web.Application) -> None:
        assert app is not None
        register(self.layer)


async def test_hook_register_cache_layers() -> None:
    layer = DictLayer()
    plugins = load_plugins(extra=[
        ("t-layer", LayersPlugin(layer)),
        ("t-not-a-layer", LayersPlugin(object())),  # refused, logged; the rest still load
        ("t-same-name", LayersPlugin(DictLayer())),  # the name is taken
    ])
    app = web.Application()
    assert plugins.cache_layers(app) == [layer]
    info = plugins.info("t-layer")
    assert info is not None and "register_cache_layers" in info.hooks
