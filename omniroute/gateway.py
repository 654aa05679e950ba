"""The gateway's life cycle: what is opened at start-up and closed at shutdown.

One :class:`Gateway` per application (never a module global). It opens the
database, the one HTTP client session, the request log and the auth schemes,
connects the collaborators made with the app (:class:`~omniroute.catalog.Catalog`,
:class:`~omniroute.resilience.Resilience`, the registry), runs the background
tasks, and reloads the configuration when its
:class:`~omniroute.watch.ConfigWatcher` notices a change made here or in
another process. Handlers do not receive it: each one takes the narrow
collaborators it needs from the app (:mod:`omniroute.appkeys`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any

import aiohttp

from omniroute.auth.base import AuthScheme
from omniroute.budgets import Budgets, SqliteSpendStore
from omniroute.catalog import Catalog
from omniroute.config import Config
from omniroute.credentials import Refresher, StoredCredentials
from omniroute.providers.base import ProviderContext
from omniroute.registry import Registry
from omniroute.resilience import Resilience
from omniroute.resilience.clock import SystemClock
from omniroute.storage import Database, RequestLog, Store
from omniroute.vault import Vault
from omniroute.version import __version__
from omniroute.watch import ConfigWatcher, VersionPoll

log = logging.getLogger(__name__)


class Gateway:
    """One gateway process's resources. Create, ``await start()``, ``await close()``."""

    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.resilience = Resilience()
        self.catalog = Catalog(config, registry, self.resilience)
        self.auth_schemes: dict[str, AuthScheme] = {}
        self._config_version = -1
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        # request ids: a random per-process prefix and a counter (no syscall per request)
        self._id_prefix = secrets.token_hex(6)
        self._id_counter = itertools.count(1)

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
        self.credentials = StoredCredentials(self.store)
        self.context = ProviderContext(self.http, self.catalog.timeouts,
                                       f"omniroute/{__version__}", credentials=self.credentials)
        #: the data path's one call after a 401/403: ``await refresher.refresh(provider)``
        self.refresher = Refresher(self.credentials)
        self.catalog.open(self.store, self.context, self.log)
        try:
            self.auth_schemes = {name: cls(self.store, config)
                                 for name, cls in self.registry.auth_schemes.items()}
            await self.reload(strict=True)
            for scheme in self.auth_schemes.values():
                await scheme.start()
        except BaseException:
            await self.http.close()
            await self.db.close()
            raise
        self.log.start()
        #: per-key budgets and limits: this window's spend is loaded before the first request
        self.budgets = Budgets(SqliteSpendStore(self.db), SystemClock())
        await self.budgets.start()
        self._spawn(self.budgets.run(), "omniroute-budget-sync")
        self.watcher: ConfigWatcher = VersionPoll(self.db, reload=self.reload,
                                                  loaded=lambda: self._config_version)
        self._spawn(self.watcher.run(), "omniroute-config-watch")
        self._spawn(self.catalog.refresh_models(), "omniroute-models-refresh")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.log.close()
        await self.budgets.close()
        await self.refresher.close()
        for provider in self.catalog.providers.values():
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

    async def reload(self, *, strict: bool = False) -> None:
        """Rebuild the catalog and the auth schemes' views from the database.

        :param strict: raise :class:`~omniroute.config.ConfigError` when an active
            connection needs a provider type that no loaded plugin registers (start-up).
        """
        async with self._reload_lock:  # the watcher and an API call may overlap
            version = await self.db.config_version()
            await self.catalog.load(strict=strict)
            for scheme in self.auth_schemes.values():
                await scheme.reload()
            self._config_version = version
