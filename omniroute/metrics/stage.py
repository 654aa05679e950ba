"""The metrics stage: counts every finished request, and the streams being served."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omniroute.pipeline.context import RequestContext
from omniroute.pipeline.stages import Stage, StageRun

if TYPE_CHECKING:
    from omniroute.metrics.collector import Metrics
    from omniroute.pipeline.operation import Operation


class MetricsRun(StageRun):
    """Keeps no per-request state, so one run serves every request (nothing is allocated)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def finished(self, ctx: RequestContext) -> None:
        metrics = self.metrics
        if ctx.stream:
            if metrics.streams_counted:  # one process: a plain number until a scrape
                metrics.open_streams -= 1
            else:
                metrics.streams.dec()
        metrics.observe(ctx.record)


class MetricsStage(Stage):
    """Feeds :class:`~omniroute.metrics.collector.Metrics` from each request's record."""

    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self._run = MetricsRun(metrics)
        self._metrics = metrics

    def enter(self, ctx: RequestContext, operation: Operation) -> StageRun:
        if ctx.stream:  # in flight from here until its finished (which always runs)
            metrics = self._metrics
            if metrics.streams_counted:
                metrics.open_streams += 1
            else:
                metrics.streams.inc()
        return self._run
