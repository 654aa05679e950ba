"""``GET /metrics``: the Prometheus exposition, for whom the ``metrics_access`` setting allows.

``key`` (the default) treats it like the client API: an API key when
``require_api_key`` is on, anyone when it is off; ``admin`` needs an admin
(admin-scoped key or session); ``public`` needs nothing. The route is tagged
public so the setting, which may change while the gateway runs, decides here.
"""

from __future__ import annotations

from aiohttp import web

from omniroute.appkeys import CATALOG, GATEWAY, PRINCIPAL, REQUEST_LOG, RESILIENCE
from omniroute.metrics.collector import Metrics
from omniroute.web.guard import authenticate_admin, authenticate_client
from omniroute.web.tags import tag_resource

#: the application's metrics (set by the ``metrics`` plugin's ``configure_app``)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    catalog = app[CATALOG]
    access = catalog.settings.metrics_access
    if access == "admin":
        request[PRINCIPAL] = await authenticate_admin(request)
    elif access == "key":
        request[PRINCIPAL] = await authenticate_client(request)
    collected = app[METRICS]
    collected.refresh(app[RESILIENCE], catalog.connections.values(), app[REQUEST_LOG],
                      app[GATEWAY].shared)
    body, content_type = collected.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type,
                                            "Cache-Control": "no-store"})


def setup_metrics_route(app: web.Application) -> None:
    resource = app.router.add_get("/metrics", metrics).resource
    assert resource is not None
    tag_resource(app, resource, None, "public")
