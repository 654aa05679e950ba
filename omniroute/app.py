"""The application factory: ``make_app(config)`` builds a ready-to-run aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from omniroute.appkeys import (
    AUTH_SCHEMES,
    BUDGETS,
    CACHE,
    CATALOG,
    CLI_TOOLS,
    GATEWAY,
    HTTP,
    IDEMPOTENCY,
    PIPELINE,
    PRICES,
    REGISTRY,
    REQUEST_LOG,
    RESILIENCE,
    STORE,
    WATCHER,
)
from omniroute.budgets.stage import BudgetStage
from omniroute.cache.service import build_cache
from omniroute.cache.stage import CacheStage
from omniroute.config import Config
from omniroute.gateway import Gateway
from omniroute.idempotency import Idempotency, IdempotencyStage
from omniroute.pipeline import Pipeline, default_stages
from omniroute.pipeline.progress import ProgressStage
from omniroute.plugins import Plugins, load_plugins
from omniroute.registry import Registry
from omniroute.web import routes
from omniroute.web.audit import setup_audit
from omniroute.web.client import setup_client_routes
from omniroute.web.dashboard import setup_dashboard
from omniroute.web.guard import setup_guard
from omniroute.web.oauth import setup_oauth_routes
from omniroute.web.public import setup_public_routes
from omniroute.web.routes import setup_admin_routes
from omniroute.web.security import setup_security
from omniroute.web.usage import setup_usage_routes


def make_app(config: Config, plugins: Plugins | None = None) -> web.Application:
    """Build the gateway application; resources open when it starts.

    :param config: the start-up configuration.
    :param plugins: already loaded plugins (default: load them per ``config``).
    """
    if plugins is None:
        plugins = load_plugins(blocked=config.disabled_plugins, allowed=config.allowed_plugins)
    # Bodies are read by our own bounded reader (a runtime setting), not aiohttp's.
    app = web.Application(client_max_size=2**40)
    setup_guard(app)  # no middleware: each route's handler gets its checks as the router freezes
    registry = Registry(plugins)
    gateway = Gateway(config, registry)
    shared = gateway.shared
    pipeline = Pipeline(gateway.catalog, gateway.resilience, gateway.new_request_id,
                        gateway.prices,
                        batches=shared.request_batch if shared is not None else None)
    app[GATEWAY], app[REGISTRY], app[PIPELINE] = gateway, registry, pipeline
    app[PRICES] = gateway.prices
    app[CATALOG], app[RESILIENCE] = gateway.catalog, gateway.resilience
    idempotency = app[IDEMPOTENCY] = Idempotency(
        lambda: gateway.catalog.settings,
        shared=gateway.shared.idempotency_keys() if gateway.shared is not None else None)

    async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        app[STORE], app[REQUEST_LOG], app[HTTP] = gateway.store, gateway.log, gateway.http
        app[AUTH_SCHEMES], app[WATCHER] = gateway.auth_schemes, gateway.watcher
        app[BUDGETS] = gateway.budgets
        budgets = BudgetStage(gateway.budgets, lambda: gateway.catalog.settings, gateway.prices)
        cache = build_cache(plugins.cache_backends, gateway.catalog.settings, config.data_dir,
                            plugins.cache_layers(app), config.state_url, registry.formats)
        cache.idempotency = partial(_idempotency_stats, idempotency)
        await cache.start()
        app[CACHE] = cache
        stages = default_stages(gateway.db, budgets, IdempotencyStage(idempotency),
                                ProgressStage(lambda: gateway.catalog.settings),
                                CacheStage(cache, lambda: gateway.catalog.settings))
        stages += plugins.stages(app, taken=[stage.name for stage in stages])
        pipeline.open(gateway.log, stages, gateway.refresher, gateway.watcher)
        try:
            yield
        finally:
            await idempotency.close()
            await cache.close()
            await gateway.close()

    app.cleanup_ctx.append(gateway_ctx)
    setup_audit(app)  # after the gateway's context: it writes through the gateway's database
    setup_security(app, config)
    setup_public_routes(app)
    setup_client_routes(app)
    # the management API: its modules are imported on their routes' first call
    setup_admin_routes(app, routes.MANAGEMENT)
    setup_admin_routes(app, routes.BUDGETS)
    setup_admin_routes(app, routes.CACHE)
    setup_admin_routes(app, routes.SYSTEM)
    setup_admin_routes(app, routes.RESILIENCE)
    setup_oauth_routes(app)
    setup_admin_routes(app, routes.PRICING)
    setup_usage_routes(app)
    setup_admin_routes(app, routes.TELEMETRY)
    app[CLI_TOOLS] = []  # made on first use (omniroute.web.clitools.cli_tools)
    setup_admin_routes(app, routes.CLI_TOOLS)
    setup_admin_routes(app, routes.DASHBOARD_API)
    setup_dashboard(app)
    plugins.pm.hook.configure_app(app=app, config=config)
    return app


def _idempotency_stats(idempotency: Idempotency) -> dict[str, int]:
    """The idempotency numbers of ``GET /api/cache/stats``, in the seed's names."""
    stats = idempotency.stats()
    return {"activeKeys": stats["active_keys"], "windowMs": stats["window_ms"]}
