"""The application factory: ``make_app(config)`` builds a ready-to-run aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from omniroute.appkeys import GATEWAY, PIPELINE
from omniroute.config import Config
from omniroute.gateway import Gateway
from omniroute.pipeline import Pipeline, default_stages
from omniroute.plugins import Plugins, load_plugins
from omniroute.web.client import setup_client_routes
from omniroute.web.management import setup_management_routes
from omniroute.web.middleware import gateway_middleware
from omniroute.web.public import setup_public_routes
from omniroute.web.resilience import setup_resilience_routes


def make_app(config: Config, plugins: Plugins | None = None) -> web.Application:
    """Build the gateway application; resources open when it starts.

    :param config: the start-up configuration.
    :param plugins: already loaded plugins (default: load them per ``config``).
    """
    if plugins is None:
        plugins = load_plugins(blocked=config.disabled_plugins, allowed=config.allowed_plugins)
    # Bodies are read by our own bounded reader (a runtime setting), not aiohttp's.
    app = web.Application(middlewares=[gateway_middleware], client_max_size=2**40)
    gateway = Gateway(config, plugins)
    app[GATEWAY] = gateway
    pipeline = Pipeline(gateway, gateway.resilience, gateway.new_request_id)
    app[PIPELINE] = pipeline

    async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        pipeline.open(gateway.log, default_stages(gateway.db))
        yield
        await gateway.close()

    app.cleanup_ctx.append(gateway_ctx)
    setup_public_routes(app)
    setup_client_routes(app)
    setup_management_routes(app)
    setup_resilience_routes(app)
    plugins.pm.hook.configure_app(app=app, config=config)
    return app
