"""The catalog: the live configuration every request reads.

Settings, the active connections and their provider instances, aliases,
combos, the router built from them, and the model lists. One :class:`Catalog`
per application (under :data:`omniroute.appkeys.CATALOG`); :meth:`Catalog.load`
rebuilds it from the database whenever the configuration changes, here or in
another process (the gateway's config watcher notices). Readers take its
attributes per request: a reload replaces them, it never mutates one in place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from omniroute.config import Config, ConfigError, Settings
from omniroute.credentials import sign_in_required
from omniroute.errors import GatewayError
from omniroute.formats.base import ModelInfo
from omniroute.providers.base import Provider, ProviderContext, Timeouts
from omniroute.registry import Registry
from omniroute.resilience import Resilience
from omniroute.routing import Router
from omniroute.storage import Combo, Connection, RequestLog, Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Opened:
    """What the catalog uses once the gateway has started."""

    store: Store
    context: ProviderContext
    request_log: RequestLog


class Catalog:
    """Connections, providers, aliases, combos, router, model lists and settings."""

    def __init__(self, config: Config, registry: Registry, resilience: Resilience) -> None:
        self.config = config
        self.registry = registry
        self.resilience = resilience
        self.started_at = time.time()
        self.settings = Settings()
        self.timeouts = Timeouts.from_settings(self.settings)
        self.connections: dict[str, Connection] = {}
        self.providers: dict[str, Provider] = {}
        self.provider_errors: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.combos: list[Combo] = []
        self.router = Router({}, {}, [], {})
        #: connection id -> (monotonic time listed, model names)
        self.models: dict[str, tuple[float, list[str]]] = {}
        self._open: _Opened | None = None

    def open(self, store: Store, context: ProviderContext, request_log: RequestLog) -> None:
        """Connect what exists once the gateway has started (database, HTTP session)."""
        self._open = _Opened(store, context, request_log)

    def _opened(self) -> _Opened:
        if self._open is None:
            raise RuntimeError("the catalog is used before the gateway started")
        return self._open

    async def load(self, *, strict: bool = False) -> None:
        """Rebuild settings, providers, aliases, combos and the router from the database.

        :param strict: raise :class:`ConfigError` when an active connection
            needs a provider type that no loaded plugin registers (start-up).
        """
        store = self._opened().store
        stored = await store.get_settings()
        self.apply_settings(stored)
        connections = await store.list_connections()
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
        if self.settings.require_api_key and "api-key" not in self.registry.auth_schemes:
            message = "require_api_key is on but the api-key auth plugin is not loaded"
            if strict:
                raise ConfigError(message)
            log.error(message)
        self.connections = {c.id: c for c in connections}
        self.providers = providers
        self.resilience.retain(set(providers))
        self._opened().context.quotas.retain(self.connections)  # kept while inactive too
        for conn_id, provider in providers.items():  # OAuth accounts marked "needs sign-in"
            self.resilience.sign_in_needed(conn_id,
                                           sign_in_required(provider.connection.credentials))
        self.provider_errors = errors
        self.aliases = await store.list_aliases()
        self.combos = await store.list_combos()
        self.rebuild_router()

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
        opened = self._opened()
        opened.context.timeouts = self.timeouts
        opened.context.refresh_margin = self.settings.oauth_refresh_margin
        self.resilience.configure(self.settings)
        request_log = opened.request_log
        request_log.enabled = self.settings.request_log
        request_log.retention_days = self.settings.usage_retention_days
        request_log.max_rows = self.settings.usage_max_rows

    def build_provider(self, conn: Connection) -> Provider:
        """A provider instance serving ``conn`` (``ConfigError`` when its type is missing)."""
        return self.registry.provider_type(conn.type)(conn, self._opened().context)

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

    async def model_infos(self) -> list[ModelInfo]:
        """Every model this gateway serves: combos, aliases, then each connection's models,
        each with its type (:meth:`Provider.model_type`; a combo's or an alias's is the
        type of the first model it resolves to)."""
        created = int(self.started_at)
        seen: set[str] = set()
        out: list[ModelInfo] = []

        def add(model_id: str, owner: str, kind: str) -> None:
            if model_id not in seen:
                seen.add(model_id)
                out.append(ModelInfo(model_id, owner, created, kind))

        providers = list(self.providers.values())
        lists = await asyncio.gather(*(self.models_of(p) for p in providers))
        for combo in self.combos:
            add(combo.name, "combo", self._type_of(combo.name))
        for alias in self.aliases:
            if not any(ch in alias for ch in "*?["):
                add(alias, "alias", self._type_of(alias))
        for provider, models in zip(providers, lists, strict=True):
            for model in models:
                add(f"{provider.connection.prefix}/{model}", provider.connection.prefix,
                    provider.model_type(model))
        return out

    def _type_of(self, name: str) -> str:
        """The type of the first model a combo or an alias resolves to (``"chat"`` when it
        resolves to none now)."""
        try:
            targets = self.router.resolve(name).targets
        except GatewayError:
            return "chat"
        return targets[0].provider.model_type(targets[0].model) if targets else "chat"

    async def refresh_models(self) -> None:
        """Refresh every connection's model list, then rebuild the router."""
        providers = list(self.providers.values())
        await asyncio.gather(*(self.models_of(p) for p in providers))
        self.rebuild_router()
