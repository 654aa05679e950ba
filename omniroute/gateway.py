"""The gateway: everything the handlers share, built once at start-up.

One :class:`Gateway` per application (never a module global). It owns the
database, the single HTTP client session, the provider instances of the
active connections, the router and the key index; :meth:`Gateway.reload`
rebuilds the in-memory views whenever the configuration changes, here or in
another process (the database's config version is polled).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from typing import Any

import aiohttp

from omniroute.auth.apikey import KeyIndex
from omniroute.auth.base import AuthScheme
from omniroute.config import Config, ConfigError, Settings
from omniroute.errors import GatewayError
from omniroute.formats.base import Format
from omniroute.plugins import Plugins
from omniroute.providers.base import Provider, ProviderContext, Timeouts
from omniroute.resilience import Resilience
from omniroute.routing import Router
from omniroute.storage import Combo, Connection, Database, RequestLog, Store
from omniroute.vault import Vault
from omniroute.version import __version__

log = logging.getLogger(__name__)

RELOAD_POLL_SECONDS = 1.0


class Gateway:
    """Shared state of one gateway process. Create, ``await start()``, ``await close()``."""

    def __init__(self, config: Config, plugins: Plugins) -> None:
        self.config = config
        self.plugins = plugins
        self.settings = Settings()
        self.started_at = time.time()
        self.timeouts = Timeouts.from_settings(self.settings)
        self.connections: dict[str, Connection] = {}
        self.providers: dict[str, Provider] = {}
        self.provider_errors: dict[str, str] = {}
        self.keys = KeyIndex()
        self.aliases: dict[str, str] = {}
        self.combos: list[Combo] = []
        self.router = Router({}, {}, [], {})
        self.auth_schemes: dict[str, AuthScheme] = {}
        self.formats: dict[str, Format] = {name: cls() for name, cls in plugins.formats.items()}
        self.resilience = Resilience(self.settings)
        self.models: dict[str, tuple[float, list[str]]] = {}
        self._config_version = -1
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        # request ids: a random per-process prefix and a counter (no syscall per request)
        self._id_prefix = secrets.token_hex(6)
        self._id_counter = itertools.count(1)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Open the database and the HTTP session, load the configuration, start tasks."""
        config = self.config
        self.vault = Vault.open(config.data_dir, config.secret_key)
        self.db = await Database.open(config.db_path)
        self.store = Store(self.db, self.vault)
        self.log = RequestLog(self.db)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60,
                                         ttl_dns_cache=300)
        self.http = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                          headers={"User-Agent": f"omniroute/{__version__}"})
        self.context = ProviderContext(self.http, self.timeouts, f"omniroute/{__version__}")
        try:
            self.auth_schemes = {name: cls(self) for name, cls in self.plugins.auth_schemes.items()}
            await self.reload(strict=True)
            for scheme in self.auth_schemes.values():
                await scheme.start()
        except BaseException:
            await self.http.close()
            await self.db.close()
            raise
        self.log.start()
        self._spawn(self._watch_config(), "omniroute-config-watch")
        self._spawn(self.refresh_models(), "omniroute-models-refresh")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.log.close()
        for provider in self.providers.values():
            await provider.close()
        await self.http.close()
        await self.db.close()

    def new_request_id(self) -> str:
        """A request id unique across processes and restarts (not a secret)."""
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            try:
                if await self.db.config_version() != self._config_version:
                    await self.reload()
            except Exception:
                log.exception("configuration reload failed; keeping the previous one")

    # ------------------------------------------------------------------ configuration

    async def reload(self, *, strict: bool = False) -> None:
        """Rebuild settings, providers, keys and router from the database.

        :param strict: raise :class:`ConfigError` when an active connection
            needs a provider type that no loaded plugin registers (start-up).
        """
        async with self._reload_lock:  # the watcher and an API call may overlap
            await self._reload(strict)

    async def _reload(self, strict: bool) -> None:
        version = await self.db.config_version()
        stored = await self.store.get_settings()
        self.apply_settings(stored)
        connections = await self.store.list_connections()
        providers: dict[str, Provider] = {}
        errors: dict[str, str] = {}
        for conn in connections:
            if not conn.active:
                continue
            try:
                old = self.providers.get(conn.id)
                if old is not None and old.connection == conn:
                    providers[conn.id] = old
                else:
                    providers[conn.id] = self.build_provider(conn)
            except ConfigError as exc:
                if strict:
                    raise ConfigError(
                        f"connection {conn.name!r} ({conn.id}) cannot be used: {exc}. "
                        f"Fix the plugin, or run `omniroute providers remove {conn.id}`."
                    ) from None
                errors[conn.id] = str(exc)
                log.error("connection %s unusable: %s", conn.id, exc)
        for conn_id, old in self.providers.items():
            if providers.get(conn_id) is not old:
                await old.close()
        if self.settings.require_api_key and "api-key" not in self.auth_schemes:
            message = "require_api_key is on but the api-key auth plugin is not loaded"
            if strict:
                raise ConfigError(message)
            log.error(message)
        self.connections = {c.id: c for c in connections}
        self.providers = providers
        self.resilience.retain(set(providers))
        self.provider_errors = errors
        self.keys = KeyIndex(await self.store.list_keys())
        self.aliases = await self.store.list_aliases()
        self.combos = await self.store.list_combos()
        self.rebuild_router()
        self._config_version = version

    def rebuild_router(self) -> None:
        models = {cid: names for cid, (_, names) in self.models.items()}
        self.router = Router(self.providers, self.aliases, self.combos, models)

    def apply_settings(self, stored: dict[str, Any]) -> None:
        values = Settings().as_dict()
        values.update(self.config.settings_defaults)
        for key, value in stored.items():
            if key in values:
                try:
                    values[key] = Settings.coerce(key, value)
                except ValueError as exc:
                    log.error("ignoring stored setting: %s", exc)
        values.update(self.config.settings_env)
        self.settings = Settings(**values)
        self.timeouts = Timeouts.from_settings(self.settings)
        self.context.timeouts = self.timeouts
        self.resilience.configure(self.settings)
        self.log.enabled = self.settings.request_log

    def provider_type(self, type_name: str) -> type[Provider]:
        cls = self.plugins.providers.get(type_name)
        if cls is None:
            raise ConfigError(self.plugins.failure_for("providers", type_name))
        return cls

    def build_provider(self, conn: Connection) -> Provider:
        return self.provider_type(conn.type)(conn, self.context)

    # ------------------------------------------------------------------ models

    async def models_of(self, provider: Provider, *, max_age: float | None = None) -> list[str]:
        """The models a connection offers, from the cache or (bounded) from upstream."""
        conn_id = provider.connection.id
        max_age = self.settings.models_cache_ttl if max_age is None else max_age
        cached = self.models.get(conn_id)
        if cached and time.monotonic() - cached[0] < max_age:
            return cached[1]
        try:
            async with asyncio.timeout(self.timeouts.connect + 5):
                models = await provider.list_models()
        except (GatewayError, TimeoutError) as exc:
            log.warning("listing models of %s failed: %s", provider.connection.name, exc)
            models = cached[1] if cached else provider.configured_models
        except Exception:  # a plugin's bug must not break /v1/models for every connection
            log.exception("listing models of %s raised", provider.connection.name)
            models = cached[1] if cached else provider.configured_models
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            log.error("%s listed models that are not a list of names; ignoring them",
                      provider.connection.name)
            models = provider.configured_models
        changed = cached is None or cached[1] != models
        self.models[conn_id] = (time.monotonic(), models)
        if changed:
            self.rebuild_router()  # bare model names of this connection now resolve
        return models

    async def refresh_models(self) -> None:
        """Refresh every connection's model list, then rebuild the router."""
        providers = list(self.providers.values())
        await asyncio.gather(*(self.models_of(p) for p in providers))
        self.rebuild_router()
