"""Prometheus metrics: the built-in ``metrics`` plugin.

``configure_app`` makes the application's :class:`~omniroute.metrics.collector.Metrics`
and adds ``GET /metrics`` (:mod:`.web`); ``register_stages`` adds the stage that
counts every finished request (:mod:`.stage`). With several workers, each one
also refreshes its breaker and cooldown gauges every :data:`REFRESH_EVERY`
seconds, so a scrape answered by any worker shows them all. Block the plugin
(``OMNIROUTE_DISABLE_PLUGINS=metrics``) to run without metrics. See
docs/observability.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from omniroute.hookspecs import hookimpl

if TYPE_CHECKING:
    from omniroute.config import Config
    from omniroute.pipeline.stages import Stage

log = logging.getLogger(__name__)

#: seconds between a worker's refreshes of its state gauges (only with several workers)
REFRESH_EVERY = 2.0


@hookimpl
def configure_app(app: web.Application, config: Config) -> None:
    from omniroute.metrics.collector import Metrics
    from omniroute.metrics.web import METRICS, setup_metrics_route

    metrics = app[METRICS] = Metrics(config.metrics_dir)
    setup_metrics_route(app)
    if metrics.multiprocess:
        app.cleanup_ctx.append(_refresh_state)


@hookimpl
def register_stages(register: Callable[[Stage], None], app: web.Application) -> None:
    from omniroute.metrics.stage import MetricsStage
    from omniroute.metrics.web import METRICS

    register(MetricsStage(app[METRICS]))


async def _refresh_state(app: web.Application) -> AsyncIterator[None]:
    """With workers: keep this worker's state gauges current for scrapes other workers answer."""
    from omniroute.appkeys import CATALOG, GATEWAY, REQUEST_LOG, RESILIENCE
    from omniroute.metrics.web import METRICS

    async def loop() -> None:
        metrics, catalog = app[METRICS], app[CATALOG]
        while True:
            try:
                metrics.refresh(app[RESILIENCE], catalog.connections.values(),
                                app[REQUEST_LOG], app[GATEWAY].shared)
            except Exception:  # a bug here must not stop the next refresh; it is logged
                log.exception("refreshing the metrics' state gauges failed")
            await asyncio.sleep(REFRESH_EVERY)

    task = asyncio.create_task(loop(), name="omniroute-metrics-refresh")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
