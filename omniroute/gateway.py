"""The gateway's life cycle: what is opened at start-up and closed at shutdown.

One :class:`Gateway` per application (never a module global). It opens the
database, the one HTTP client session, the request log and the auth schemes,
connects the collaborators made with the app (:class:`~omniroute.catalog.Catalog`,
:class:`~omniroute.resilience.Resilience`, the registry), runs the background
tasks, and reloads the configuration when its
:class:`~omniroute.watch.ConfigWatcher` notices a change made here or in
another process. With ``state_url`` it also makes the
:class:`~omniroute.sharedstate.SharedState` backend that keeps what several
instances share (resilience state, per-key budgets, config-change notices).
Handlers do not receive it: each one takes the narrow collaborators it needs
from the app (:mod:`omniroute.appkeys`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import sys
import time
from typing import Any

import aiohttp

from omniroute.auth.base import AuthScheme
from omniroute.budgets import Budgets, SqliteSpendStore
from omniroute.catalog import Catalog
from omniroute.config import Config
from omniroute.credentials import Refresher, StoredCredentials
from omniroute.oauth.keeper import TokenKeeper
from omniroute.pricing import Override, PriceBook, PriceTable, load_table
from omniroute.pricing.table import has_table
from omniroute.providers.base import Provider, ProviderContext
from omniroute.registry import Registry
from omniroute.resilience import Resilience
from omniroute.resilience.clock import SystemClock
from omniroute.sharedstate import SharedState, state_backend
from omniroute.storage import Database, DatabaseBackend, RequestLog, Store, database_backend
from omniroute.vault import Vault
from omniroute.version import __version__
from omniroute.watch import ConfigWatcher, VersionPoll

log = logging.getLogger(__name__)

#: how often the price upkeep looks at the settings and for fetched prices (seconds)
PRICES_CHECK_EVERY = 30.0
#: looked-up prices are looked up again this often (genai-prices dates some prices)
PRICES_FRESH = 6 * 3600.0


class Gateway:
    """One gateway process's resources. Create, ``await start()``, ``await close()``."""

    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        #: what tokens cost (genai-prices, and the operator's overrides from the database)
        self.prices = PriceBook()
        self.clock = SystemClock()
        #: what this instance shares with the others (None: nothing, the embedded default)
        self.shared: SharedState | None = None
        if config.state_url:
            backend = state_backend(registry.plugins.state_backends, config.state_url)
            self.shared = backend(config.state_url, clock=self.clock,
                                  settings=lambda: self.catalog.settings)
        #: where the configuration and usage live: ``database_url``'s backend, else SQLite
        self._database: type[DatabaseBackend] | None = None
        if config.database_url:
            self._database = database_backend(registry.plugins.database_backends,
                                              config.database_url)
        self.resilience = Resilience(
            prices=self.prices, clock=self.clock,
            state=self.shared.resilience_state() if self.shared is not None else None)
        self.catalog = Catalog(config, registry, self.resilience)
        self.auth_schemes: dict[str, AuthScheme] = {}
        self._config_version = -1
        self._reload_lock = asyncio.Lock()
        self._reloaded = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # request ids: a random per-process prefix and a counter (no syscall per request)
        self._id_prefix = secrets.token_hex(6)
        self._id_counter = itertools.count(1)

    async def start(self) -> None:
        """Open the database and the HTTP session, load the configuration, start tasks."""
        config = self.config
        # genai-prices' prices, from the data directory (built and written there first
        # when missing: a few seconds, in a thread; ``serve`` does it in a child process)
        if has_table(config.data_dir):
            self.prices.use(load_table(config.data_dir))
        else:
            self.prices.use(await asyncio.to_thread(load_table, config.data_dir))
        self.vault = Vault.open(config.data_dir, config.secret_key)
        self.db: DatabaseBackend
        if self._database is not None and config.database_url is not None:
            self.db = await self._database.connect(config.database_url)
        else:
            self.db = await Database.open(config.db_path)
        self.store = Store(self.db, self.vault)
        self.log = RequestLog(self.db)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60,
                                         ttl_dns_cache=300)
        # no cookie jar: one upstream's cookies (a CDN's bot-management ones) are not carried
        # to the next call, which may be another account's; and the providers' lean POSTs
        # (providers/upstream.py) run only while the jar holds none
        self.http = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                          cookie_jar=aiohttp.DummyCookieJar(),
                                          headers={"User-Agent": f"omniroute/{__version__}"})
        self.credentials = StoredCredentials(self.store)
        #: the data path's one call after a 401/403: ``await refresher.refresh(provider)``;
        #: an account refused for good leaves routing at once (``sign_in_needed``)
        self.refresher = Refresher(
            self.credentials, on_sign_in=self._signed_out,
            lock=self.shared.renewal_lock() if self.shared is not None else None)
        self.context = ProviderContext(self.http, self.catalog.timeouts,
                                       f"omniroute/{__version__}", credentials=self.credentials,
                                       refresher=self.refresher)
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
        await self.log.prepare()
        self.log.start()
        #: per-key budgets and limits: this window's spend is loaded before the first request
        self.budgets = Budgets(SqliteSpendStore(self.db), self.clock)
        await self.budgets.start()
        self._spawn(self.budgets.run(), "omniroute-budget-sync")
        watcher: ConfigWatcher | None = None
        if self.shared is not None:
            self.budgets.shared = self.shared.ledger(self.budgets)
            watcher = self.shared.watcher(self.db, reload=self.reload,
                                          loaded=lambda: self._config_version)
            await self.shared.start()
        self.watcher: ConfigWatcher = watcher or VersionPoll(
            self.db, reload=self.reload, loaded=lambda: self._config_version)
        self._spawn(self.watcher.run(), "omniroute-config-watch")
        self._spawn(self.catalog.refresh_models(), "omniroute-models-refresh")
        self._spawn(self._price_upkeep(), "omniroute-prices")
        #: renews idle subscription accounts' tokens before they lapse
        self.token_keeper = TokenKeeper(lambda: self.catalog.providers.values(), self.refresher,
                                        lambda: self.catalog.settings)
        self._spawn(self.token_keeper.run(), "omniroute-oauth-keeper")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.log.close()
        await self.budgets.close()
        if self.shared is not None:
            await self.shared.close()
        await self.refresher.close()
        for provider in self.catalog.providers.values():
            await provider.close()
        await self.http.close()
        await self.db.close()

    def _signed_out(self, provider: Provider, why: str) -> None:
        """A renewal was refused for good: routing leaves the account out from now on."""
        self.resilience.sign_in_needed(provider.connection.id, why)

    def new_request_id(self) -> str:
        """A request id unique across processes and restarts (not a secret)."""
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _price_upkeep(self) -> None:
        """Keep looked-up prices fresh: look them up again every few hours (genai-prices
        dates some prices). While the ``price_updates`` setting is on, run genai-prices'
        updater (only then is genai-prices imported) and read each database it fetches
        into the price book's table."""
        updater: Any = None  # genai_prices.UpdatePrices
        snapshot: Any = None  # the genai-prices snapshot the table was last read from
        looked_up = time.monotonic()
        try:
            while True:
                settings = self.catalog.settings
                wanted = (settings.price_update_url, settings.price_update_interval)
                if updater is not None and (not settings.price_updates
                                            or (updater.url, updater.update_interval) != wanted):
                    updater.stop()  # never waits
                    updater = None
                if updater is None and settings.price_updates:
                    from genai_prices import UpdatePrices

                    log.info("fetching model prices from %s every %.0f s", *wanted)
                    updater = UpdatePrices(update_interval=wanted[1], url=wanted[0])
                    updater.start()
                now = time.monotonic()
                data_snapshot = sys.modules.get("genai_prices.data_snapshot")
                if data_snapshot is not None:  # updates were turned on (now or before)
                    # the first call parses the bundled database (about 1 s): not on the loop
                    current = await asyncio.to_thread(data_snapshot.get_snapshot)
                    if snapshot is None and not current.from_auto_update:
                        snapshot = current  # the bundled database: the table has it already
                    elif current is not snapshot:  # fetched (or dropped: the bundled again)
                        snapshot, looked_up = current, now
                        self.prices.use(await asyncio.to_thread(PriceTable.from_snapshot,
                                                                current))
                if now - looked_up > PRICES_FRESH:
                    looked_up = now
                    self.prices.forget()
                self._reloaded.clear()
                # a reload may have changed the settings (asyncio.timeout, not wait_for: on
                # 3.11 wait_for can swallow a cancellation that meets the event being set)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PRICES_CHECK_EVERY):
                        await self._reloaded.wait()
        finally:
            if updater is not None:
                updater.stop()

    async def reload(self, *, strict: bool = False) -> None:
        """Rebuild the catalog and the auth schemes' views from the database.

        :param strict: raise :class:`~omniroute.config.ConfigError` when an active
            connection needs a provider type that no loaded plugin registers (start-up).
        """
        async with self._reload_lock:  # the watcher and an API call may overlap
            version = await self.db.config_version()
            await self.catalog.load(strict=strict)
            self.prices.replace(Override(**row) for row in await self.store.list_price_overrides())
            for scheme in self.auth_schemes.values():
                await scheme.reload()
            changed = version != self._config_version
            self._config_version = version
            self._reloaded.set()
        watcher = getattr(self, "watcher", None)  # None during start-up's first load
        if changed and watcher is not None:
            watcher.announce(version)
